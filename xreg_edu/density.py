"""Differentiable densities: cubic B-spline Parzen histograms, KDE entropy and voxel sampling.

Everything here works on *flattened samples* (``values: [..., M]``), so it is agnostic to 2-D / 3-D images; the
``xreg_edu.info`` module does the image -> sample step (mask, sub-sampling) and the information measures.

Estimator (METHODS.md §1, official ``MI.py``): for each variable the bin range ``[lo, hi]`` is taken from the data
and **detached**; the bin width is ``Δ = max((hi - lo) / L, eps)``; ``r = 2`` padding bins on each side give
``L + 4`` bins; the continuous bin coordinate ``s = (u - lo) / Δ + r`` lies in ``[r, r + L]``; a sample spreads
over the 4 bins ``⌊s⌋-1 .. ⌊s⌋+2`` (``⌊s⌋`` clamped to ``[r, r+L-1]``) with cubic B-spline weights
``β(s - b)``, which sum to 1 (partition of unity). The gradient flows ``u -> s -> β -> histogram``.

Histograms are filled sparsely: ``index_add`` of the 4 (or 4x4) tap weights per sample into a [bins, taps]
buffer, then 4 (or 16) shifted adds. Cost O(M·4²) for a joint histogram, against O(M·L²) for the dense
weight-matrix product ``Wxᵀ Wy`` (kept as :func:`dense_joint_histogram` for reference and benchmarks). The class
histograms of the registration hot path (:func:`class_histogram`, batched over the group) are one fused kernel
that works block by block of samples (no temporary of the sample's size) and scatters into replicated
histograms; its backward gathers 3 polynomial tables per sample instead of 4 taps.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._checks import check_bins

__all__ = [
    "EPS", "PADDING", "bspline_kernel", "bspline_taps", "bspline_tap_derivatives", "bin_coordinates",
    "parzen_weights", "dense_weights", "histogram", "joint_histogram", "class_histogram", "nd_histogram",
    "dense_joint_histogram", "bin_range", "bin_geometry", "entropy", "joint_mutual_information", "class_entropies", "kde_entropy", "silverman_bandwidth", "sample_indices", "bin_lookup", "hard_class_histogram",
    "class_log_likelihood", "robust_range",
]

EPS = 1e-8        #: clamp inside log and on the bin width (official value)
PADDING = 2       #: padding bins per side, r = ceil(2σ) with σ = 1  ->  L + 4 bins
MAX_ND_CELLS = 2 ** 26  #: refuse N-D histograms with more cells than this (curse of dimensionality)
REPLICAS = 8           #: histogram copies the fused scatter spreads neighbouring samples over (see below)
BLOCK = 2 ** 13         #: samples per block of the fused class-histogram kernels (temporaries stay in cache)


# --------------------------------------------------------------------------------------------- kernel, weights
def bspline_kernel(d: Tensor) -> Tensor:
    """Cubic B-spline β(d): (4 - 6d² + 3|d|³)/6 for |d|<1, (2-|d|)³/6 for 1<=|d|<2, else 0.

    Args:
        d: any shape, float.
    Returns:
        same shape as ``d``.
    """
    a = d.abs()
    inner = (4.0 - 6.0 * a * a + 3.0 * a * a * a) / 6.0
    outer = (2.0 - a).clamp_min(0.0) ** 3 / 6.0
    return torch.where(a < 1.0, inner, outer)


def _range(values: Tensor, lo, hi) -> tuple[Tensor, Tensor]:
    """Detached per-row [lo, hi] of ``values [..., M]`` -> two [..., 1] tensors (given bounds are broadcast)."""
    v = values.detach()
    if v.shape[-1] == 0:
        raise ValueError("cannot build a histogram from an empty sample (M = 0): check the mask / sample_rate")
    shape = v.shape[:-1] + (1,)
    if lo is None or hi is None:
        lo_d, hi_d = v.amin(dim=-1, keepdim=True), v.amax(dim=-1, keepdim=True)   # (aminmax is ~20x slower on CPU)
    lo_t = lo_d if lo is None else torch.as_tensor(lo, dtype=v.dtype, device=v.device).detach().expand(shape)
    hi_t = hi_d if hi is None else torch.as_tensor(hi, dtype=v.dtype, device=v.device).detach().expand(shape)
    return lo_t, hi_t


def bin_coordinates(values: Tensor, bins: int, *, lo=None, hi=None, padding: int = PADDING
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Continuous bin coordinates ``s = (u - lo)/Δ + padding`` with a detached, data-driven range.

    Args:
        values: ``[..., M]`` float samples (one row per variable).
        bins: number of (interior) bins L >= 2.
        lo, hi: optional fixed range (float or tensor broadcastable to ``[..., 1]``); default min / max of each row
            (detached, METHODS §1 step 3).
        padding: padding bins per side (r, >= 2).
    Returns:
        ``(s [..., M], lo [..., 1], width [..., 1])``; ``width = max((hi-lo)/L, EPS)``. With a user-given range
        ``s`` is clamped to ``[padding, padding + L]`` (values outside go to the edge bins, zero gradient).
    """
    check_bins(bins)
    if padding < 2:
        raise ValueError(f"padding must be >= 2 for the 4-tap cubic B-spline window, got {padding}")
    lo_t, hi_t = _range(values, lo, hi)
    width = ((hi_t - lo_t) / bins).clamp_min(EPS)
    s = (values - lo_t) / width + padding
    if lo is not None or hi is not None:          # a data-driven range needs no clamp (keeps the extremes' grad)
        s = s.clamp(padding, padding + bins)
    return s, lo_t, width


def bin_range(values: Tensor, bounds: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Detached per-row ``(lo, hi)``, each ``[..., 1]``: the min / max of ``values [..., M]``, clipped to
    ``bounds = (lo [...], hi [...])`` when given (e.g. robust quantiles: values beyond them fall into the edge bins
    of a histogram built with this range)."""
    lo, hi = _range(values, None, None)
    if bounds is not None:
        lo = torch.maximum(lo, bounds[0].reshape(lo.shape).to(lo.dtype))
        hi = torch.maximum(torch.minimum(hi, bounds[1].reshape(hi.shape).to(hi.dtype)), lo)
    return lo, hi


def bin_geometry(values: Tensor, bins: int, bounds: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """``(lo, width)``, each ``[..., 1]``, of the histograms of ``values [..., M]`` with the range
    :func:`bin_range` (``width = max((hi - lo)/L, EPS)``): what :func:`bin_lookup` and the ``lo``/``width`` of the
    batched functions take."""
    check_bins(bins)
    lo, hi = bin_range(values, bounds)
    return lo, ((hi - lo) / bins).clamp_min(EPS)


def _tap_weights(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The 4 cubic B-spline tap weights of :func:`bspline_taps` as separate tensors (no stack)."""
    t2 = t * t
    t3 = t2 * t
    omt = 1.0 - t
    return ((omt * omt * omt) / 6.0,                       # β(t + 1)
            (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,             # β(t)
            (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,  # β(t - 1)
            t3 / 6.0)                                      # β(t - 2)


def bspline_taps(t: Tensor) -> Tensor:
    """Cubic B-spline tap weights for fractional offsets ``t`` in [0, 1]: ``[..., 4]`` (bins f-1, f, f+1, f+2)."""
    return torch.stack(_tap_weights(t), dim=-1)


def bspline_tap_derivatives(t: Tensor) -> Tensor:
    """d/dt of :func:`bspline_taps` (``t = s - floor(s)``, so also d/ds): ``[..., 4]``."""
    t2 = t * t
    omt = 1.0 - t
    return torch.stack((-0.5 * omt * omt, 1.5 * t2 - 2.0 * t, -1.5 * t2 + t + 0.5, 0.5 * t2), dim=-1)


def _split(s: Tensor, bins: int, padding: int = PADDING) -> tuple[Tensor, Tensor]:
    """``s`` -> (first tap index ``⌊s⌋-1`` long, fractional offset ``t = s - ⌊s⌋``), ``⌊s⌋`` clamped to [r, r+L-1]."""
    f = s.detach().floor().clamp(padding, padding + bins - 1)
    return f.long() - 1, s - f


def _taps(s: Tensor, bins: int, padding: int = PADDING) -> tuple[Tensor, Tensor]:
    """4-tap cubic B-spline weights for coordinates ``s [..., M]`` -> (first tap index [..., M] long, w [..., M, 4]).

    Differentiable through autograd (dt/ds = 1, the floor is piecewise constant)."""
    first, t = _split(s, bins, padding)
    return first, bspline_taps(t)


def parzen_weights(values: Tensor, bins: int, *, lo=None, hi=None, padding: int = PADDING
                   ) -> tuple[Tensor, Tensor]:
    """Sparse 4-tap cubic B-spline Parzen weights.

    Args:
        values: ``[..., M]`` float samples.
        bins: L >= 2; the histogram has ``L + 2·padding`` bins.
        lo, hi, padding: see :func:`bin_coordinates`.
    Returns:
        ``(index [..., M, 4] long, weight [..., M, 4])``: the 4 bins ``⌊s⌋-1 .. ⌊s⌋+2`` and their weights
        (each row sums to 1; differentiable w.r.t. ``values``).
    """
    s, _, _ = bin_coordinates(values, bins, lo=lo, hi=hi, padding=padding)
    first, w = _taps(s, bins, padding)
    index = first.unsqueeze(-1) + torch.arange(4, device=values.device)
    return index, w


def dense_weights(values: Tensor, bins: int, *, lo=None, hi=None, padding: int = PADDING) -> Tensor:
    """Dense Parzen weight matrix ``W[..., m, b] = β(s_m - b)`` (O(M·L) memory: the dense joint histograms of
    APE / CTE and the reference estimator), filled from the 4 taps of :func:`parzen_weights`.

    Args:
        values: ``[..., M]`` float samples.
    Returns:
        ``[..., M, L + 2·padding]`` (differentiable w.r.t. ``values``).
    """
    index, w = parzen_weights(values, bins, lo=lo, hi=hi, padding=padding)
    out = w.new_zeros(w.shape[:-1] + (bins + 2 * padding,))
    return out.scatter(-1, index, w)


# --------------------------------------------------------------------------------------------- histograms
def _flat(values: Tensor, name: str) -> tuple[Tensor, tuple]:
    if not isinstance(values, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    if not values.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {values.dtype}")
    if values.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension [..., M]")
    if values.shape[-1] == 0:
        raise ValueError(f"{name} is an empty sample (M = 0): check the mask / sample_rate")
    lead = tuple(values.shape[:-1])
    return values.reshape(-1, values.shape[-1]), lead


def _shift_add(G: Tensor, dims: int) -> Tensor:
    """Turn ``G[B, .., B, (extra), 4, .., 4]`` (per first-tap index) into the histogram ``[B, .., B, (extra)]``.

    ``G`` has a leading batch dim: ``[P, B(×dims), *extra, 4(×dims)]``; output ``[P, B(×dims), *extra]``.
    """
    nb = G.shape[1]
    out = G.new_zeros(G.shape[:-dims])
    if dims == 1:
        for t in range(4):
            out[:, t:] += G[:, :nb - t, ..., t]
    elif dims == 2:
        for a in range(4):
            for b in range(4):
                out[:, a:, b:] += G[:, :nb - a, :nb - b, ..., a, b]
    else:  # pragma: no cover - internal
        raise ValueError(dims)
    return out


def _chunks(m: int):
    """Slices of ``BLOCK`` samples: the fused kernels below keep every temporary of a block in cache and never
    allocate a tensor of the sample's size (on CPU each large temporary costs page faults worth more than its
    arithmetic)."""
    return (slice(a, min(a + BLOCK, m)) for a in range(0, m, BLOCK))


def _block_taps(values: Tensor, lo: Tensor, width: Tensor, bins: int, clamp: bool
                ) -> tuple[Tensor, Tensor, Tensor | None]:
    """One block's ``(first tap index [N, C] long, offset t [N, C], inside-range mask or None)`` (no grad)."""
    s = (values - lo) / width + PADDING
    inside = None
    if clamp:
        inside = (s >= PADDING) & (s <= PADDING + bins)
        s = s.clamp_(PADDING, PADDING + bins)
    f = s.floor().clamp_(PADDING, PADDING + bins - 1)
    return f.long() - 1, s.sub_(f), inside


class _ClassHistogram(torch.autograd.Function):
    """h[n, k, b] = Σ_m γ[k, m] β(s[n, m] - b), ``s = (u - lo)/Δ + r`` (clamped to the range if ``clamp``).

    Fused from the intensities: bin coordinates, taps, the 4 scatter passes (forward) and the 4-tap gathers of the
    backward (one ``embedding_bag`` weighted by the tap derivatives) run block by block (:func:`_chunks`); only the
    [N, K, L + 4] histogram and the [N, M] gradient are allocated at full size. The registration hot path
    (X-CoReg) runs through here."""

    @staticmethod
    def forward(ctx, values, lo, width, post, bins, clamp):
        N, M = values.shape
        K = post.shape[0]
        nb = bins + 2 * PADDING
        size = N * K * nb
        # REPLICAS copies of the histogram, sample c adding into copy c % REPLICAS: neighbouring voxels (often the
        # same bin, e.g. background) then never add into the same cell back to back, which would serialise the adds
        out = values.new_zeros(REPLICAS * size)
        rows = ((torch.arange(N, device=values.device) * K).unsqueeze(1)
                + torch.arange(K, device=values.device)).unsqueeze(-1) * nb                      # [N, K, 1]
        spread = (torch.arange(BLOCK, device=values.device) % REPLICAS) * size                   # [BLOCK]
        for c in _chunks(M):
            first, t, _ = _block_taps(values[:, c], lo, width, bins, clamp)                      # [N, C]
            idx = (rows + (first + spread[:first.shape[1]]).unsqueeze(1)).reshape(-1)            # [N*K*C]
            g = post[:, c].unsqueeze(0)                                                           # [1, K, C]
            for tap, w in enumerate(_tap_weights(t)):                                            # bin f - 1 + tap
                out[tap:].scatter_add_(0, idx, (w.unsqueeze(1) * g).reshape(-1))
        ctx.save_for_backward(values, lo, width, post)
        ctx.bins, ctx.clamp = bins, clamp
        copies = out.view(REPLICAS, N, K, nb).unbind(0)
        h = copies[0].clone()
        for more in copies[1:]:        # elementwise, in a fixed order: classes with equal weights stay bitwise equal
            h += more                  # (a uniform posterior is an exact fixed point of EM; .sum(0) breaks that)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):
        values, lo, width, post = ctx.saved_tensors
        bins, clamp = ctx.bins, ctx.clamp
        N, M = values.shape
        K = post.shape[0]
        nb = bins + 2 * PADDING
        dev = values.device
        offs = (torch.arange(N, device=dev) * nb).unsqueeze(1)                # [N, 1]
        want_v, want_p = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        grad_v = values.new_empty(N, M) if want_v else None
        grad_p = post.new_empty(K, M) if want_p else None
        if want_v:
            # dL/ds = Σ_t β'_t(τ) Σ_k γ_k G[n, k, f + t] with β'_t(τ) = Σ_p D[p, t] τ^p (quadratics): the tap sum
            # becomes 3 tables U_p[k, n, f] = Σ_t D[p, t] G[n, k, f + t], so each sample needs 3 K gathers at one
            # index and no per-tap weights
            G = torch.nn.functional.pad(grad_h, (0, 3))                          # [N, K, nb + 3]
            win = torch.stack([G[..., t:t + nb] for t in range(4)], -1)          # [N, K, nb, 4]: G[n, k, f + t]
            U = (win @ _TAP_DERIVATIVE_POLY.to(win).t()).permute(3, 1, 0, 2).reshape(3, K, N * nb)
        if want_p:
            table = grad_h.transpose(1, 2).reshape(N * nb, K)
            taps = torch.arange(4, device=dev)
        for c in _chunks(M):
            first, t, inside = _block_taps(values[:, c], lo, width, bins, clamp)
            row = first + offs                                                 # [N, C] table row n*nb + f - 1
            if want_v:
                gk = post[:, c]
                acc = [sum(U[p, k].take(row) * gk[k] for k in range(K)) for p in range(3)]
                g = (acc[2] * t + acc[1]) * t + acc[0]
                g /= width
                if inside is not None:
                    g.masked_fill_(~inside, 0.0)
                grad_v[:, c] = g
            if want_p:
                C = t.shape[1]
                bags = (row.unsqueeze(-1) + taps).reshape(N * C, 4)
                q = torch.nn.functional.embedding_bag(bags, table, mode="sum",
                                                      per_sample_weights=bspline_taps(t).reshape(N * C, 4))
                grad_p[:, c] = q.view(N, C, K).sum(0).t()
        return grad_v, None, None, grad_p, None, None


#: β'_t(τ) = Σ_p D[p, t] τ^p, the tap derivatives of :func:`bspline_tap_derivatives` as polynomial coefficients
_TAP_DERIVATIVE_POLY = torch.tensor([[-0.5, 0.0, 0.5, 0.0], [1.0, -2.0, 1.0, 0.0], [-0.5, 1.5, -1.5, 0.5]],
                                    dtype=torch.float64)


class _JointHistogram(torch.autograd.Function):
    """h[p, a, b] = Σ_m w[p, m] β(sx[p, m] - a) β(sy[p, m] - b): fused forward and analytic backward."""

    @staticmethod
    def forward(ctx, sx, sy, wm, bins):
        P, M = sx.shape
        nb = bins + 2 * PADDING
        fx, tx = _split(sx, bins)
        fy, ty = _split(sy, bins)
        w = bspline_taps(tx).unsqueeze(-1) * bspline_taps(ty).unsqueeze(-2)                # [P, M, 4, 4]
        if wm is not None:
            w = w * wm.unsqueeze(-1).unsqueeze(-1)
        rows = (fx * nb + fy + (torch.arange(P, device=sx.device) * (nb * nb)).unsqueeze(1)).reshape(-1)
        G = sx.new_zeros(P * nb * nb, 4, 4).index_add_(0, rows, w.reshape(P * M, 4, 4))
        ctx.save_for_backward(rows, tx, ty, wm)
        ctx.nb = nb
        return _shift_add(G.reshape(P, nb, nb, 4, 4), 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):
        rows, tx, ty, wm = ctx.saved_tensors
        P, M = tx.shape
        nb = ctx.nb
        g = torch.nn.functional.pad(grad_h, (0, 3, 0, 3))                   # [P, nb+3, nb+3]
        win = g.unfold(1, 4, 1).unfold(2, 4, 1).reshape(P * nb * nb, 16)      # win[p,i,j,a,b] = g[p, i+a, j+b]
        gr = win.index_select(0, rows).reshape(P, M, 4, 4)
        wx, wy = bspline_taps(tx), bspline_taps(ty)
        grad_sx = grad_sy = grad_wm = None
        if ctx.needs_input_grad[2] and wm is not None:
            grad_wm = (gr * (wx.unsqueeze(-1) * wy.unsqueeze(-2))).sum((-1, -2))
        if wm is not None:
            gr = gr * wm.unsqueeze(-1).unsqueeze(-1)
        if ctx.needs_input_grad[0]:
            grad_sx = ((gr * wy.unsqueeze(-2)).sum(-1) * bspline_tap_derivatives(tx)).sum(-1)
        if ctx.needs_input_grad[1]:
            grad_sy = ((gr * wx.unsqueeze(-1)).sum(-2) * bspline_tap_derivatives(ty)).sum(-1)
        return grad_sx, grad_sy, grad_wm, None


def histogram(values: Tensor, bins: int, weights: Tensor | None = None, *, lo=None, hi=None) -> Tensor:
    """Weighted 1-D B-spline Parzen histogram (counts, not normalised).

    Args:
        values: ``[..., M]`` float; leading dims are independent variables (batched).
        bins: L >= 2.
        weights: optional ``[M]`` or ``[..., M]`` non-negative sample weights.
        lo, hi: optional fixed range (default: detached min / max of each row).
    Returns:
        ``[..., L + 4]``. Cost O(M·4).
    """
    v, lead = _flat(values, "values")
    P, M = v.shape
    nb = bins + 2 * PADDING
    s, _, _ = bin_coordinates(v, bins, lo=lo, hi=hi)
    first, w = _taps(s, bins)                                            # [P, M], [P, M, 4]
    if weights is not None:
        w = w * weights.reshape(-1, M).unsqueeze(-1)
    offs = (torch.arange(P, device=v.device) * nb).unsqueeze(1)
    G = v.new_zeros(P * nb, 4).index_add_(0, (first + offs).reshape(-1), w.reshape(P * M, 4))
    return _shift_add(G.reshape(P, nb, 4), 1).reshape(lead + (nb,))


def joint_histogram(x: Tensor, y: Tensor, bins: int, weights: Tensor | None = None) -> Tensor:
    """Weighted joint B-spline Parzen histogram of two variables, filled sparsely in O(M·4²).

    Args:
        x, y: ``[..., M]`` float (same shape; leading dims = independent pairs, batched). Each row gets its own
            detached data-driven bin range.
        bins: L >= 2.
        weights: optional ``[M]`` or ``[..., M]`` sample weights.
    Returns:
        ``[..., L + 4, L + 4]`` counts; ``h[a, b] = Σ_m w_m β(s^x_m - a) β(s^y_m - b)``. Its marginals equal the
        1-D histograms (partition of unity).
    """
    if x.shape != y.shape:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape")
    xv, lead = _flat(x, "x")
    yv, _ = _flat(y, "y")
    P, M = xv.shape
    nb = bins + 2 * PADDING
    sx = bin_coordinates(xv, bins)[0]
    sy = bin_coordinates(yv, bins)[0]
    wm = None if weights is None else weights.to(xv.dtype).reshape(-1, M).expand(P, M)
    h = _JointHistogram.apply(sx, sy, wm, bins)
    return h.reshape(lead + (nb, nb))


def class_histogram(values: Tensor, posterior: Tensor, bins: int, *, lo=None, hi=None,
                    geometry: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Class-weighted (posterior-weighted) Parzen histograms ``h[k, b] = Σ_m γ_mk β(s_m - b)`` (X-metric, SVCD).

    Batched over the group, fused and blocked (no [N, M, K]-sized temporary). Cost O(N·M·4·K).

    Args:
        values: ``[M]`` or ``[N, M]`` float (each row its own detached bin range).
        posterior: ``[M, K]`` class weights γ shared by all rows (gradient flows if it requires grad); a
            class-major ``[K, M]`` layout is used as is when given as the transpose view ``gamma.t()``.
        bins: L >= 2.
        lo, hi: optional fixed range (values outside go to the edge bins).
        geometry: optional precomputed ``(lo, width)`` (:func:`bin_geometry`) of a *clamped* range: values
            outside ``[lo, lo + L·width]`` go to the edge bins (instead of ``lo``/``hi``).
    Returns:
        ``[K, L + 4]`` for 1-D ``values``, else ``[N, K, L + 4]``.
    """
    if posterior.dim() != 2:
        raise ValueError(f"posterior must have shape [M, K], got {tuple(posterior.shape)}")
    v, lead = _flat(values, "values")
    N, M = v.shape
    if posterior.shape[0] != M:
        raise ValueError(f"posterior has {posterior.shape[0]} samples but values have M = {M}")
    K = posterior.shape[1]
    nb = bins + 2 * PADDING
    if geometry is not None:
        lo_t, width = (g.reshape(N, 1).to(v.dtype) for g in geometry)
        clamp = True
    else:
        check_bins(bins)
        lo_t, hi_t = _range(v, lo, hi)
        width = ((hi_t - lo_t) / bins).clamp_min(EPS)
        clamp = lo is not None or hi is not None
    post = posterior.t().to(v.dtype)
    h = _ClassHistogram.apply(v, lo_t.detach(), width.detach(), post if post.is_contiguous() else post.contiguous(),
                              bins, clamp)
    return h.reshape(lead + (K, nb))


def nd_histogram(values: Tensor, bins: int, weights: Tensor | None = None) -> Tensor:
    """N-dimensional B-spline Parzen histogram for a small group (4^N taps per sample, flat ``index_add``).

    Args:
        values: ``[N, M]`` float (N variables, M samples), each row its own detached bin range.
        bins: L >= 2; the histogram has ``(L + 4)^N`` cells (refused above 2**26: use KDE / Gaussian instead).
        weights: optional ``[M]`` sample weights.
    Returns:
        ``[L + 4] * N`` counts.
    """
    v, _ = _flat(values, "values")
    if values.dim() != 2:
        raise ValueError(f"values must have shape [N, M], got {tuple(values.shape)}")
    N, M = v.shape
    nb = bins + 2 * PADDING
    if nb ** N > MAX_ND_CELLS:
        raise ValueError(f"an N-D histogram with N = {N} and L = {bins} needs {nb ** N:.3g} cells "
                         f"(> {MAX_ND_CELLS}); the curse of dimensionality: use fewer bins or a KDE / Gaussian estimate")
    first, w = _taps(bin_coordinates(v, bins)[0], bins)                 # [N, M], [N, M, 4]
    ar = torch.arange(4, device=v.device)
    idx = first[0].unsqueeze(1) + ar                                     # [M, 4^j]
    ww = w[0]
    for j in range(1, N):
        idx = (idx.unsqueeze(2) * nb + (first[j].unsqueeze(1) + ar).unsqueeze(1)).reshape(M, -1)
        ww = (ww.unsqueeze(2) * w[j].unsqueeze(1)).reshape(M, -1)
    if weights is not None:
        ww = ww * weights.reshape(M, 1)
    h = v.new_zeros(nb ** N).index_add_(0, idx.reshape(-1), ww.reshape(-1))
    return h.reshape((nb,) * N)


def dense_joint_histogram(x: Tensor, y: Tensor, bins: int) -> Tensor:
    """Reference joint histogram ``Wxᵀ Wy`` with dense ``[M, L+4]`` weight matrices (O(M·L²), official style).

    Args:
        x, y: ``[M]`` float.
    Returns:
        ``[L + 4, L + 4]``; equals :func:`joint_histogram` to float precision.
    """
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must both have shape [M]")
    return dense_weights(x, bins).transpose(0, 1) @ dense_weights(y, bins)


# --------------------------------------------------------------------------------------------- entropies
def entropy(p: Tensor, dim=None) -> Tensor:
    """Shannon entropy (nats) of a histogram / pmf, normalised first; ``-Σ p log clamp(p, EPS)``.

    Args:
        p: non-negative counts of any shape.
        dim: int or tuple of dims that index the distribution (default: all dims); the other dims are batched.
    Returns:
        entropy with ``dim`` reduced (0-dim tensor for ``dim=None``).
    """
    if dim is None:
        dim = tuple(range(p.dim()))
    total = p.sum(dim=dim, keepdim=True)
    q = p / total.clamp_min(torch.finfo(p.dtype).tiny)
    return -(q * q.clamp_min(EPS).log()).sum(dim=dim)


def joint_mutual_information(joint: Tensor) -> Tensor:
    """MI (nats) of joint histograms ``[..., B, B]`` -> ``[...]``: ``H(X) + H(Y) - H(X, Y)``."""
    return entropy(joint.sum(-1), dim=-1) + entropy(joint.sum(-2), dim=-1) - entropy(joint, dim=(-2, -1))


def class_entropies(hist: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(H(U_j), H(Z), H(U_j, Z))``, each ``[N]`` (nats), from γ-weighted class histograms ``hist [N, K, B]``.

    ``I(U_j; Z) = H(U_j) + H(Z) - H(U_j, Z)`` is one X-metric term (eq. 5)."""
    p = hist / hist.sum((1, 2), keepdim=True).clamp_min(torch.finfo(hist.dtype).tiny)
    return entropy(p.sum(1), dim=1), entropy(p.sum(2), dim=1), entropy(p, dim=(1, 2))


def silverman_bandwidth(num_samples: int, dim: int) -> float:
    """Silverman's rule factor ``(4 / (d + 2))^(1/(d+4)) · M^(-1/(d+4))`` (multiply by the data std)."""
    return (4.0 / (dim + 2)) ** (1.0 / (dim + 4)) * num_samples ** (-1.0 / (dim + 4))


def kde_entropy(samples: Tensor, bandwidth: float | Tensor | None = None) -> Tensor:
    """Leave-one-out Gaussian KDE entropy (nats), differentiable, any dimension; O(M²·d).

    ``Ĥ = -(1/M) Σ_m log[ (1/(M-1)) Σ_{m'≠m} G_h(u_m - u_m') ]`` with an isotropic Gaussian G_h (computed with
    logsumexp).

    Args:
        samples: ``[M]`` or ``[M, d]`` float, M >= 2.
        bandwidth: h (same units as the samples); default Silverman's rule times the mean per-dimension std
            (detached).
    Returns:
        0-dim tensor.
    """
    x = samples.unsqueeze(1) if samples.dim() == 1 else samples
    if x.dim() != 2:
        raise ValueError(f"samples must have shape [M] or [M, d], got {tuple(samples.shape)}")
    M, d = x.shape
    if M < 2:
        raise ValueError(f"kde_entropy needs at least 2 samples, got M = {M}")
    if bandwidth is None:
        sd = x.detach().std(dim=0).mean().clamp_min(EPS)
        h = sd * silverman_bandwidth(M, d)
    else:
        h = torch.as_tensor(bandwidth, dtype=x.dtype, device=x.device)
        if not bool(h > 0):
            raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    d2 = (x.unsqueeze(1) - x.unsqueeze(0)).pow(2).sum(-1)               # [M, M]; cdist has an unstable grad at 0
    logk = -0.5 * d2 / (h * h)
    logk = logk.masked_fill(torch.eye(M, dtype=torch.bool, device=x.device), float("-inf"))
    log_density = torch.logsumexp(logk, dim=1) - math.log(M - 1) - 0.5 * d * torch.log(2 * math.pi * h * h)
    return -log_density.mean()


@torch.no_grad()
def robust_range(values: Tensor, q: float = 1e-3, max_samples: int = 2 ** 20) -> tuple[Tensor, Tensor]:
    """Per-row ``q`` and ``1 - q`` quantiles of ``values [..., M]`` -> ``(lo, hi)``, each ``[..., 1]`` (detached).

    A histogram range that a few outliers cannot take: with ``lo``/``hi`` given, :func:`bin_coordinates` clamps the
    values outside into the edge bins. Rows longer than ``max_samples`` are subsampled with a fixed stride.
    """
    v = values.detach()
    if v.shape[-1] > max_samples:
        v = v[..., ::-(-v.shape[-1] // max_samples)]
    qs = torch.tensor([q, 1.0 - q], dtype=v.dtype, device=v.device)
    lo, hi = torch.quantile(v, qs, dim=-1, keepdim=True).unbind(0)
    return lo, torch.maximum(hi, lo + EPS)


# --------------------------------------------------------------------------------------------- sampling, lookup
def sample_indices(mask: Tensor | None, rate: float = 1.0, generator: torch.Generator | None = None, *,
                   numel: int | None = None, device=None) -> Tensor:
    """Seeded voxel sub-sampling: flat indices of a random subset of the masked voxels.

    A fixed-size subset of ``max(1, round(rate · count))`` voxels is drawn without replacement (sorted for memory
    locality), instead of the official Bernoulli(ρ) draw: same expectation, fixed M.

    Args:
        mask: ``[*S]`` bool (non-empty) or None (all ``numel`` voxels).
        rate: sampling rate ρ in (0, 1].
        generator: optional ``torch.Generator`` (its device is used for the draw) for reproducible sampling.
        numel: number of voxels when ``mask`` is None.
        device: device of the result when ``mask`` is None (default: CPU).
    Returns:
        ``[M]`` long flat indices into the flattened spatial grid.
    """
    if not (0.0 < float(rate) <= 1.0):
        raise ValueError(f"sample rate must be in (0, 1], got {rate}")
    if mask is None:
        if numel is None:
            raise ValueError("sample_indices needs numel when mask is None")
        idx = None
        count = int(numel)
        device = torch.device("cpu") if device is None else torch.device(device)
    else:
        idx = mask.reshape(-1).nonzero().squeeze(1)
        count = idx.numel()
        device = idx.device
        if count == 0:
            raise ValueError("mask is empty: it selects no voxel")
    if rate >= 1.0:
        return idx if idx is not None else torch.arange(count, device=device)
    m = max(1, int(round(rate * count)))
    gdev = generator.device if generator is not None else device
    pick = torch.randperm(count, generator=generator, device=gdev)[:m].to(device).sort().values
    return pick if idx is None else idx[pick]


@torch.no_grad()
def bin_lookup(values: Tensor, lo: Tensor | float, width: Tensor | float, bins: int,
               padding: int = PADDING, *, edge: bool = False) -> Tensor:
    """Hard nearest-bin index ``clamp(round((u - lo)/Δ) + r, 0, L + 2r - 1)`` (E-step only: no gradient).

    The bin whose B-spline weight is largest, i.e. where the Parzen histogram puts most of the sample's mass.
    (The official code floors, METHODS §3.3, which is off by one bin whenever the fractional part exceeds 1/2.)

    Args:
        values: ``[..., V]`` float.
        lo, width: as returned by :func:`bin_coordinates` / :func:`bin_geometry` (``[..., 1]`` or scalars).
        edge: clamp to the edge bins ``[r, r + L]`` of the range instead (values outside a clamped range, as in
            the histograms built with a fixed range).
    Returns:
        ``[..., V]`` long.
    """
    b = torch.round((values - lo) / width).long() + padding
    return b.clamp_(padding, bins + padding) if edge else b.clamp_(0, bins + 2 * padding - 1)


@torch.no_grad()
def hard_class_histogram(index: Tensor, posterior: Tensor, bins: int) -> Tensor:
    """Posterior-weighted histograms with hard bins (the exact M-step of a categorical class model).

    Args:
        index: ``[N, M] long`` bin of every sample (:func:`bin_lookup`); posterior: ``[K, M]`` (class-major); bins: L.
    Returns:
        ``[N, K, L + 4]``.
    """
    n, m = index.shape
    k = posterior.shape[0]
    out = posterior.new_zeros(n, k, bins + 2 * PADDING)
    return out.scatter_add_(2, index[:, None, :].expand(n, k, m), posterior[None].expand(n, k, m))


@torch.no_grad()
def class_log_likelihood(values: Tensor, sample: Tensor, posterior: Tensor, bins: int) -> Tensor:
    """Non-parametric (SVCD) class-conditional log-likelihoods ``log f_jk(u_j(x))`` for the E-step (no grad).

    Builds ``p_j(b | k)`` from a (sub-)sample weighted by the posterior (:func:`class_histogram`), then looks up
    every voxel's hard bin (:func:`bin_lookup`, same bin geometry as the sample) — METHODS §3.3.

    Args:
        values: ``[N, V]`` all voxels of each image (e.g. the masked voxels).
        sample: ``[N, M]`` the sample used for the histogram (may be ``values`` itself).
        posterior: ``[M, K]`` weights of the sample.
        bins: L >= 2.
    Returns:
        ``[N, K, V]`` ``log clamp(p_j(bin_j(x) | k), EPS)`` (pmf mass per bin).
    """
    if values.dim() != 2 or sample.dim() != 2 or values.shape[0] != sample.shape[0]:
        raise ValueError(f"values [N, V] and sample [N, M] must share N, got {tuple(values.shape)}, "
                         f"{tuple(sample.shape)}")
    _, lo, width = bin_coordinates(sample, bins)
    h = class_histogram(sample, posterior, bins)                         # [N, K, B]
    logp = (h / h.sum(-1, keepdim=True).clamp_min(EPS)).clamp_min(EPS).log()
    b = bin_lookup(values, lo, width, bins)                              # [N, V]
    K = h.shape[1]
    return torch.gather(logp, 2, b.unsqueeze(1).expand(-1, K, -1))
