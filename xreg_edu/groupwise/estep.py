"""The E-step of X-CoReg (Algorithm 1), in the log domain, plus the appearance models it uses.

``gamma[k, x] = softmax_k( sum_j log f_jk(u_j(phi_j(x))) + log pi_k(x) )``: the product of N likelihoods is never
formed, so nothing underflows even for N = 500 (spec §10 item 3). Layout is class-major, ``[K, P]`` (P voxels), so
the reductions over the few classes are long contiguous vector operations. All functions are pure tensor functions.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import density as D
from ..density import EPS


def random_posterior(num_voxels: int, num_classes: int, generator: torch.Generator | None = None, *,
                     device=None, dtype=torch.float32) -> Tensor:
    """Seeded random soft labelling ``Gamma^0 = softmax_k(eps)``, ``eps ~ N(0, 1)`` i.i.d. (breaks class symmetry).

    Returns:
        ``[K, P]`` posterior, columns sum to 1.
    """
    eps = torch.randn(num_classes, num_voxels, generator=generator, device=device, dtype=dtype)
    return torch.softmax(eps, dim=0)


def _as_column(log_prior: Tensor) -> Tensor:
    return log_prior[:, None] if log_prior.dim() == 1 else log_prior


def log_posterior(log_likelihood: Tensor, log_prior: Tensor) -> Tensor:
    """Log-domain E-step: ``log gamma = log_softmax_k(sum_j log f_jk + log pi_k)``.

    Args:
        log_likelihood: ``[N, K, P]`` per-image class log-likelihoods ``log f_jk(x)`` (or already summed, ``[K, P]``).
        log_prior: ``[K]`` (global) or ``[K, P]`` (spatially varying) log prior.

    Returns:
        ``[K, P]`` log posterior (finite for any N: max-subtracted log-sum-exp over the classes).
    """
    total = log_likelihood.sum(0) if log_likelihood.dim() == 3 else log_likelihood
    total = total + _as_column(log_prior)
    top = total.amax(dim=0, keepdim=True)
    shifted = total - top
    return shifted - shifted.exp().sum(dim=0, keepdim=True).log()


def e_step(log_likelihood: Tensor, log_prior: Tensor, min_prob: float = 1e-3) -> Tensor:
    """Posterior ``gamma [K, P]`` from per-image log-likelihoods, clamped to ``>= min_prob`` and renormalised.

    Args:
        log_likelihood: ``[N, K, P]`` or summed ``[K, P]``.
        log_prior: ``[K]`` or ``[K, P]``.
        min_prob: floor of every class probability (0 disables the clamp); after the clamp the columns are
            renormalised (the official code does not renormalise, spec §10 item 4).

    X-CoReg's default (hard-lookup) E-step computes the same posterior without forming the ``[N, K, P]``
    log-likelihoods: ``xreg_edu.groupwise.estep.posterior_from_pmfs``.
    """
    gamma = log_posterior(log_likelihood, log_prior).exp()
    if min_prob > 0:
        gamma = gamma.clamp_min(min_prob)
        gamma = gamma / gamma.sum(dim=0, keepdim=True)
    return gamma


def global_prior(posterior: Tensor, mask_index: Tensor | None = None) -> Tensor:
    """Class proportions ``pi_k = mean_{x in M} gamma[k, x]`` (Algorithm 1, step 4). Returns ``[K]``."""
    g = posterior if mask_index is None else posterior.index_select(1, mask_index)
    return g.mean(dim=1)


def class_pmfs(sample_values: Tensor, sample_posterior: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """M-step of the non-parametric appearance model: ``p_j(b | k)`` from posterior-weighted histograms.

    Args:
        sample_values: ``[N, M]`` intensities of the sampled voxels; sample_posterior: ``[K, M]``; bins: L.

    Returns:
        (``pmf [N, K, L + 4]``, ``lo [N, 1]``, ``width [N, 1]``) - the bin geometry for the lookup.
    """
    lo, width = D.bin_geometry(sample_values, bins)
    hist = D.class_histogram(sample_values, sample_posterior.t(), bins)
    return hist / hist.sum(dim=2, keepdim=True).clamp_min(EPS), lo, width


def lookup_log_likelihood(pmf: Tensor, values: Tensor, lo: Tensor, width: Tensor, bins: int, *,
                          lookup: str = "hard") -> Tensor:
    """``log f_jk(x)`` of every voxel from class pmfs ``[N, K, L + 4]`` -> ``[N, K, P]`` (floored at 1e-8).

    ``lookup="hard"``: the nearest bin (official SVCD, no gradient); ``"spline"``: the 4-tap B-spline
    interpolation of the pmf at the voxel's continuous bin position. ``lo``, ``width``: ``[N, 1]``
    (:func:`xreg_edu.density.bin_geometry`); values outside the range use the edge bins.
    """
    n, p = values.shape
    k = pmf.shape[1]
    if lookup == "hard":
        idx = D.bin_lookup(values, lo, width, bins, edge=True)
        return torch.gather(pmf.clamp_min(EPS).log(), 2, idx[:, None, :].expand(n, k, p))
    if lookup == "spline":
        s = ((values.detach() - lo) / width + D.PADDING).clamp(D.PADDING, D.PADDING + bins)
        f = s.floor().clamp(D.PADDING, D.PADDING + bins - 1)
        first, w = f.long() - 1, D.bspline_taps(s - f)
        out = None
        for tap in range(4):
            term = torch.gather(pmf, 2, (first + tap)[:, None, :].expand(n, k, p)) * w[:, None, :, tap]
            out = term if out is None else out + term
        return out.clamp_min(EPS).log()
    raise ValueError(f"lookup must be 'hard' or 'spline', got {lookup!r}")


@torch.no_grad()
def posterior_from_pmfs(pmf: Tensor, values: Tensor, lo: Tensor, width: Tensor, bins: int, log_prior: Tensor,
                        min_prob: float = 1e-3, block: int = 2 ** 14) -> Tensor:
    """The E-step with the hard lookup, fused: ``e_step(lookup_log_likelihood(pmf, values, ...), log_prior,
    min_prob)`` without the ``[N, K, P]`` log-likelihoods.

    Block by block of voxels, one ``embedding_bag`` sums the N images' ``log p_j(bin_j(x) | k)`` (a table of
    ``N (L + 4)`` rows of K log-masses), then softmax over the classes, clamp and renormalisation.

    Args:
        pmf: ``[N, K, L + 4]``; values: ``[N, P]``; lo, width: ``[N, 1]``; log_prior: ``[K]`` or ``[K, P]``.

    Returns:
        ``gamma [K, P]``.
    """
    n, k, nb = pmf.shape
    p = values.shape[1]
    table = pmf.clamp_min(EPS).log().transpose(1, 2).reshape(n * nb, k)     # row j*nb + b = log p_j(b | .)
    offs = (torch.arange(n, device=values.device) * nb).unsqueeze(1)
    gamma = values.new_empty(k, p)
    for a in range(0, p, block):
        c = slice(a, min(a + block, p))
        bags = (D.bin_lookup(values[:, c], lo, width, bins, edge=True) + offs).t()            # [C, N]
        total = torch.nn.functional.embedding_bag(bags, table, mode="sum").t().contiguous()   # [K, C]
        total += log_prior.unsqueeze(1) if log_prior.dim() == 1 else log_prior[:, c]
        g = total.sub_(total.amax(dim=0, keepdim=True)).exp_()                               # softmax over k
        g /= g.sum(dim=0, keepdim=True)
        if min_prob > 0:
            g = g.clamp_min_(min_prob)
            g /= g.sum(dim=0, keepdim=True)
        gamma[:, c] = g
    return gamma


def histogram_log_likelihood(values: Tensor, sample_values: Tensor, sample_posterior: Tensor, bins: int, *,
                             lookup: str = "hard") -> Tensor:
    """Non-parametric class-conditional log-likelihoods ``log f_jk(x)`` for every voxel of every image.

    Cost O(4 N K M) for the histograms + O(N K P) for the lookup.

    Args:
        values: ``[N, P]`` intensities of all voxels (where the posterior is evaluated).
        sample_values: ``[N, M]`` intensities of the sampled mask voxels (define bins and histograms).
        sample_posterior: ``[K, M]`` current posterior at those voxels.
        bins: L.

    Returns:
        ``[N, K, P]``.
    """
    pmf, lo, width = class_pmfs(sample_values, sample_posterior, bins)
    return lookup_log_likelihood(pmf, values, lo, width, bins, lookup=lookup)


def gaussian_log_likelihood(values: Tensor, sample_values: Tensor, sample_posterior: Tensor,
                            min_var: float = 1e-4) -> Tensor:
    """Parametric class-conditional log-likelihoods ``log N(u_j(x); mu_jk, sigma_jk^2)``.

    M-step: ``mu_jk = sum_x gamma_kx u_j(x) / sum_x gamma_kx``, ``sigma_jk^2`` the weighted variance (spec §3.3).
    Cost O(N K M + N K P).

    Args:
        values: ``[N, P]``; sample_values: ``[N, M]``; sample_posterior: ``[K, M]``.
        min_var: variance floor relative to the image variance.

    Returns:
        ``[N, K, P]``.
    """
    weight = sample_posterior / sample_posterior.sum(1, keepdim=True).clamp_min(EPS)   # [K, M]
    mu = sample_values @ weight.t()                                                      # [N, K]
    ex2 = (sample_values * sample_values) @ weight.t()
    var = (ex2 - mu * mu).clamp_min(0.0)
    floor = min_var * sample_values.var(dim=1, keepdim=True).clamp_min(1e-12)
    var = torch.maximum(var, floor)
    diff = values[:, None, :] - mu[:, :, None]
    return -0.5 * (diff * diff / var[:, :, None] + var.log()[:, :, None] + math.log(2 * math.pi))


def log_likelihood_of_data(log_likelihood: Tensor, log_prior: Tensor) -> Tensor:
    """Mixture log-likelihood ``sum_x log sum_k pi_k prod_j f_jk(x)`` (log-sum-exp), the quantity EM increases.

    Args:
        log_likelihood: ``[N, K, P]`` or ``[K, P]``; log_prior: ``[K]`` or ``[K, P]``. Returns a 0-dim tensor.
    """
    total = log_likelihood.sum(0) if log_likelihood.dim() == 3 else log_likelihood
    return torch.logsumexp(total + _as_column(log_prior), dim=0).sum()
