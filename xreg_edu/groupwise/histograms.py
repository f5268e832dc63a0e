"""Batched cubic B-spline Parzen histograms for a whole group at once (the registration hot path).

Same estimator as :mod:`xreg_edu.density` (bin range from the sampled intensities, detached; 4-tap cubic B-spline
window; ``L + 4`` bins including the padding ``r = 2`` on each side), but every function works on all N images in one
call, so the registration loop has no Python loop over images. ``tests/test_groupwise.py`` checks that these agree
with the single-image functions of :mod:`xreg_edu.density`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..density import PADDING, bin_lookup, bspline_taps, entropy
from ..density import class_histogram as density_class_histogram

def sample_range(values: Tensor, bounds: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Detached per-image ``(lo [N], hi [N])`` of the sample ``values [N, M]``: its min / max, clipped to
    ``bounds`` when given (so values beyond robust bounds fall into the edge bins)."""
    v = values.detach()
    lo, hi = v.amin(dim=1), v.amax(dim=1)
    if bounds is not None:
        lo, hi = torch.maximum(lo, bounds[0]), torch.minimum(hi, bounds[1])
        hi = torch.maximum(hi, lo)
    return lo, hi


def bin_geometry(values: Tensor, bins: int, bounds: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Per-image bin origin and width from the sampled intensities (detached) or from fixed ``bounds``.

    Args:
        values: ``[N, M]`` intensities of the M sampled voxels of each image.
        bins: number of histogram bins L (the histograms have L + 4 entries).
        bounds: optional ``(lo [N], hi [N])`` limits of the range (:func:`sample_range`).

    Returns:
        ``lo [N]`` (minimum) and ``width [N]`` (``(max - min) / L``, at least 1e-6 so a constant image is safe).
    """
    lo, hi = sample_range(values, bounds)
    width = ((hi - lo) / bins).clamp_min(1e-6)
    return lo, width


def bin_position(values: Tensor, lo: Tensor, width: Tensor) -> Tensor:
    """Continuous bin coordinate ``s = (u - lo) / width + 2`` (bin centres are the integers 0..L+3).

    Args:
        values: ``[N, M]``; lo, width: ``[N]``. Returns ``[N, M]`` (differentiable in ``values``).
    """
    return (values - lo[:, None]) / width[:, None] + PADDING


def spline_weights(values: Tensor, lo: Tensor, width: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Sparse 4-tap cubic B-spline memberships of every sample.

    Args:
        values: ``[N, M]`` intensities; lo, width: ``[N]`` bin geometry; bins: L.

    Returns:
        ``first [N, M] long``: index of the first of the 4 consecutive bins touched (in ``1..L``), and
        ``weight [N, M, 4]``: the B-spline weights ``beta(s - b)`` of those bins (rows sum to 1; differentiable).
    """
    s = bin_position(values, lo, width).clamp(PADDING, bins + PADDING)   # outside a fixed range: edge bins
    i0 = s.detach().floor().clamp(PADDING, bins + PADDING - 1)
    return i0.long() - 1, bspline_taps(s - i0)


def nearest_bin(values: Tensor, lo: Tensor, width: Tensor, bins: int) -> Tensor:
    """Hard nearest-bin index (:func:`xreg_edu.density.bin_lookup`) with this module's per-image geometry; values
    outside ``[lo, lo + L width]`` go to the edge bins, as in the histograms.

    Args:
        values: ``[N, P]``; lo, width: ``[N]``. Returns ``[N, P] long``.
    """
    return bin_lookup(values.detach(), lo[:, None], width[:, None], bins).clamp_(PADDING, bins + PADDING)


def class_histogram(values: Tensor, posterior: Tensor, bins: int,
                    bounds: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Posterior-weighted class histograms ``h[j, k, b] = sum_x gamma[k, x] beta(s_j(x) - b)`` for all images.

    :func:`xreg_edu.density.class_histogram` (same data-driven, detached bin range as :func:`bin_geometry`),
    differentiable w.r.t. ``values`` only: the posterior is a fixed weight (spec §3.2). Cost O(4 N K M).

    Args:
        values: ``[N, M]`` intensities of the sampled voxels.
        posterior: ``[K, M]`` class weights of the same voxels (treated as constant).
        bins: L.
        bounds: optional ``(lo [N], hi [N])`` limits of the range (:func:`sample_range`; values outside fall into the edge bins).

    Returns:
        ``[N, K, L + 4]`` unnormalised histograms.
    """
    if bounds is None:
        return density_class_histogram(values, posterior.detach().t(), bins)
    lo, hi = sample_range(values, bounds)
    return density_class_histogram(values, posterior.detach().t(), bins, lo=lo[:, None], hi=hi[:, None])


def hard_class_histogram(index: Tensor, posterior: Tensor, bins: int) -> Tensor:
    """Posterior-weighted histograms with hard bins (the exact M-step of a categorical class model).

    Args:
        index: ``[N, M] long`` bin of every sample (:func:`nearest_bin`); posterior: ``[K, M]``; bins: L.

    Returns:
        ``[N, K, L + 4]``.
    """
    n, m = index.shape
    k = posterior.shape[0]
    out = posterior.new_zeros(n, k, bins + 2 * PADDING)
    return out.scatter_add_(2, index[:, None, :].expand(n, k, m), posterior[None].expand(n, k, m))


def dense_weights(first: Tensor, weight: Tensor, bins: int) -> Tensor:
    """Dense sample-by-bin membership matrices ``W [N, M, L + 4]`` (for the O(L^2) joint histograms of APE/CTE)."""
    n, m = first.shape
    nb = bins + 2 * PADDING
    taps = torch.arange(4, device=first.device)
    out = torch.zeros(n, m, nb, device=weight.device, dtype=weight.dtype)
    return out.scatter(2, first[:, :, None] + taps, weight)


def mutual_information_from_joint(joint: Tensor) -> Tensor:
    """MI of joint histograms ``[..., B, B]`` -> ``[...]`` (nats)."""
    return entropy(joint.sum(-1), dim=-1) + entropy(joint.sum(-2), dim=-1) - entropy(joint, dim=(-2, -1))
