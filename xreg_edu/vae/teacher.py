"""The unsupervised teacher of BIGR-lite's warm start: X-CoReg's EM posterior of aligned training groups.

Declared deviation (spec §9.2, "unsupervised warm start"): the official "deep combined computing" lineage (§8.4(c))
trains its networks with the X-CoReg E-step of the group; here the encoder is first distilled towards the EM posterior
γ of each *natively aligned* training slice (no labels, no simulated field), then the registration heads are trained
on the ELBO alone. EM's class order is arbitrary per group, so it is made consistent: every group's EM starts from
global intensity-profile centroids (k-means over all training voxels' standardised (bSSFP, LGE, T2) vectors) and its
classes are then matched to those centroids by the Hungarian algorithm on their profiles.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..density import class_log_likelihood
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


def teacher_posteriors(slices, k: int = 5, bins: int = 32, iterations: int = 20, seed: int = 0
                       ) -> tuple[list[Tensor], Tensor]:
    """EM posteriors of every aligned slice with a consistent class order.

    Args:
        slices: aligned :class:`~xreg_edu.group.ImageGroup` s (same modalities in the same order).
        k: classes K.

    Returns:
        ``(list of [K, *S] posteriors, centroids [K, N])``.
    """
    pts = torch.cat([profiles(s.images) for s in slices])
    cent = kmeans(pts, k, seed=seed)
    return [em_posterior(s.images, cent, bins, iterations) for s in slices], cent


def distillation_loss(logits: Tensor, gamma: Tensor) -> Tensor:
    """Mean cross-entropy ``−Σ_k γ_k log softmax(logits)_k`` of every expert against its group's posterior.

    Args:
        logits: ``[N, K, *S]``; gamma: ``[K, *S]`` (shared by the N aligned images).
    """
    return -(gamma.unsqueeze(0) * torch.log_softmax(logits, 1)).sum(1).mean()
