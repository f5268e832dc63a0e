"""The unsupervised teacher of BIGR-lite's warm start: X-CoReg's EM posterior of aligned training groups.

Declared deviation (spec §9.2, "unsupervised warm start"): the official "deep combined computing" lineage (§8.4(c))
trains its networks with the X-CoReg E-step of the group; here the encoder is first distilled towards the EM posterior
γ of each *natively aligned* training slice (no labels, no simulated field), then the registration heads are trained
on the ELBO alone. EM's class order is arbitrary per group, so it is made consistent: every group's EM starts from
global intensity-profile centroids (k-means over all training voxels' standardised (bSSFP, LGE, T2) vectors) and its
classes are then matched to those centroids by the Hungarian algorithm on their profiles.

Classes that only one sequence separates cannot be predicted by a per-image encoder from the other sequences, and
they are what makes the experts disagree across sequences. :func:`sequence_confusion` measures, on the training
groups, how often each sequence's intensity alone reads teacher class k as class l; :func:`merge_plan` merges
greedily the pair of classes that N − 1 sequences confuse most, down to the student's K (our choice; issue 9's
lever "teacher classes each sequence can predict").
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..density import bin_coordinates, bin_lookup, class_histogram, class_log_likelihood
from ..groupwise.estep import e_step, global_prior
from .networks import normalize_intensity


def profiles(images: Tensor) -> Tensor:
    """Per-voxel standardised intensity vectors: ``[N, 1, *S]`` -> ``[M, N]``."""
    return normalize_intensity(images).flatten(1).t()


def kmeans(points: Tensor, k: int, iterations: int = 30, seed: int = 0) -> Tensor:
    """Seeded k-means++ centroids ``[k, P]`` of ``points [M, P]``, sorted by their first coordinate."""
    g = torch.Generator().manual_seed(int(seed))
    cent = points[torch.randint(len(points), (1,), generator=g)]
    for _ in range(1, k):
        d = torch.cdist(points, cent).min(1).values.pow(2)
        cent = torch.cat([cent, points[torch.multinomial(d / d.sum(), 1, generator=g)]])
    for _ in range(iterations):
        lab = torch.cdist(points, cent).argmin(1)
        cent = torch.stack([points[lab == c].mean(0) if (lab == c).any() else cent[c] for c in range(k)])
    return cent[cent[:, 0].argsort()]


def em_posterior(images: Tensor, centroids: Tensor, bins: int = 32, iterations: int = 20,
                 min_prob: float = 1e-3) -> Tensor:
    """X-CoReg's EM (nonparametric f_jk, global prior π) on an aligned group, started from ``centroids``.

    Args:
        images: ``[N, 1, *S]`` aligned group (N = the number of profile coordinates of ``centroids``).
        centroids: ``[K, N]`` intensity-profile centroids (class order of the result).
        bins: Parzen bins; iterations: EM iterations; min_prob: E-step floor.

    Returns:
        ``[K, *S]`` posterior γ, class k matched to centroid k (Hungarian on the class profiles).
    """
    from scipy.optimize import linear_sum_assignment

    x = profiles(images)                                                    # [M, N]
    values = images.flatten(1)                                              # [N, M]
    gamma = torch.softmax(-0.5 * torch.cdist(x, centroids).pow(2), 1).t()   # [K, M]
    for _ in range(iterations):
        pi = global_prior(gamma)
        loglik = class_log_likelihood(values, values, gamma.t(), bins)      # [N, K, M]
        gamma = e_step(loglik, pi.clamp_min(1e-8).log(), min_prob)
    prof = (gamma @ x) / gamma.sum(1, keepdim=True).clamp_min(1e-8)          # [K, N]
    rows, cols = linear_sum_assignment(torch.cdist(centroids, prof).numpy())
    order = torch.as_tensor(cols)[torch.as_tensor(rows).argsort()]
    return gamma[order].reshape(centroids.shape[0], *images.shape[2:])


def teacher_posteriors(slices, k: int = 5, bins: int = 32, iterations: int = 20, seed: int = 0,
                       classes: int | None = None) -> tuple[list[Tensor], Tensor, list[list[int]]]:
    """EM posteriors of every aligned slice with a consistent class order, merged down to the student's classes.

    Args:
        slices: aligned :class:`~xreg_edu.group.ImageGroup` s (same modalities in the same order).
        k: EM classes K.
        classes: the student's K' <= K (default K: no merge); the merge is :func:`merge_plan` of these slices'
            :func:`sequence_confusion`.

    Returns:
        ``(list of [K', *S] posteriors, centroids [K, N], plan)``.
    """
    pts = torch.cat([profiles(s.images) for s in slices])
    cent = kmeans(pts, k, seed=seed)
    gammas = [em_posterior(s.images, cent, bins, iterations) for s in slices]
    plan = [[c] for c in range(k)]
    if classes is not None and classes != k:
        plan = merge_plan(sequence_confusion(slices, gammas, bins), classes)
        gammas = [merge_classes(g, plan) for g in gammas]
    return gammas, cent, plan


def distillation_loss(logits: Tensor, gamma: Tensor) -> Tensor:
    """Mean cross-entropy ``−Σ_k γ_k log softmax(logits)_k`` of every expert against its group's posterior.

    Args:
        logits: ``[N, K, *S]``; gamma: ``[K, *S]`` (shared by the N aligned images).
    """
    return -(gamma.unsqueeze(0) * torch.log_softmax(logits, 1)).sum(1).mean()


def sequence_confusion(slices, gammas, bins: int = 32) -> Tensor:
    """How often each sequence's intensity alone reads teacher class k as class l, pooled over aligned groups.

    Per sequence j, the Bayes classifier ``p_j(l | u) ∝ h_j(l, bin(u))`` of the γ-weighted class histograms of the
    standardised intensities of all groups; ``C[j, k, l] = Σ_x γ_k(x) p_j(l | u_j(x))``.

    Args:
        slices: aligned groups (same sequences in the same order); gammas: their ``[K, *S]`` posteriors.

    Returns:
        ``[N, K, K]`` (row k sums to the mass of class k).
    """
    values = torch.cat([normalize_intensity(s.images).flatten(1) for s in slices], 1)   # [N, M]
    gamma = torch.cat([g.flatten(1) for g in gammas], 1).t()                           # [M, K]
    _, lo, width = bin_coordinates(values, bins)
    hist = class_histogram(values, gamma, bins)                                         # [N, K, B]
    read = hist / hist.sum(1, keepdim=True).clamp_min(1e-12)                            # p_j(l | bin)
    b = bin_lookup(values, lo, width, bins)                                             # [N, M]
    return torch.stack([gamma.t() @ read[j][:, b[j]].t() for j in range(len(values))])


def pair_confusion(confusion: Tensor) -> Tensor:
    """Confusion rate of every class pair within that pair, per sequence: ``[N, K, K]`` -> ``[N, K, K]``
    (0 = always told apart, 0.5 = indistinguishable for equal masses; diagonal 0)."""
    c = confusion
    d = torch.diagonal(c, dim1=1, dim2=2)
    within = d.unsqueeze(2) + d.unsqueeze(1) + c + c.transpose(1, 2)
    out = (c + c.transpose(1, 2)) / within.clamp_min(1e-12)
    return out * (1 - torch.eye(c.shape[1], dtype=c.dtype))


def merge_plan(confusion: Tensor, classes: int) -> list[list[int]]:
    """Greedy merge of teacher classes down to ``classes``: each time, the pair with the largest confusion reached
    by N − 1 of the N sequences (the pair at most one sequence separates).

    Args:
        confusion: ``[N, K, K]`` from :func:`sequence_confusion`; classes: target number K' <= K.

    Returns:
        K' lists of teacher classes (sorted), in order of their smallest member.
    """
    n, k = confusion.shape[:2]
    if not 1 <= classes <= k:
        raise ValueError(f"classes must be in 1..{k} (the teacher's K), got {classes}")
    plan = [[c] for c in range(k)]
    while len(plan) > classes:
        idx = torch.zeros(k, len(plan))
        for g, members in enumerate(plan):
            idx[members, g] = 1
        merged = idx.t() @ confusion @ idx                                          # [N, K', K']
        score = pair_confusion(merged).sort(0, descending=True).values[max(0, n - 2)]  # (N-1)-th largest
        a, b = divmod(int(score.argmax()), len(plan))
        plan[min(a, b)] = sorted(plan[a] + plan[b])
        del plan[max(a, b)]
    return plan


def merge_classes(gamma: Tensor, plan: list[list[int]]) -> Tensor:
    """Posterior of the merged classes: ``[K, *S]`` -> ``[K', *S]`` (sums over each group of ``plan``)."""
    return torch.stack([gamma[members].sum(0) for members in plan])


def refine_with_student(model, slices, gammas, bins: int = 32, iterations: int = 10,
                        min_prob: float = 1e-3) -> list[Tensor]:
    """One teacher round of the alternating scheme: X-CoReg's EM on each aligned slice with the student's product
    of experts as a spatial prior (tempered: the mean of the N experts' log-probabilities), started from the current
    teacher. Distilling the result again closes the loop (issue 9's lever "alternating teacher/student").

    Args:
        model: a BIGR-lite model whose :meth:`~xreg_edu.vae.model.BIGRLite.logits` give K classes.
        slices: aligned groups; gammas: their current ``[K, *S]`` teacher posteriors.

    Returns:
        the refined ``[K, *S]`` posteriors.
    """
    out = []
    with torch.no_grad():
        for s, g in zip(slices, gammas):
            log_prior = torch.log_softmax(torch.log_softmax(model.logits(s.images), 1).mean(0).flatten(1), 0)
            values, gamma = s.images.flatten(1), g.flatten(1)
            for _ in range(iterations):
                gamma = e_step(class_log_likelihood(values, values, gamma.t(), bins), log_prior, min_prob)
            out.append(gamma.reshape(g.shape))
    return out
