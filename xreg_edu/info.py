"""Information measures on images: entropy, MI / NMI (eq. 1), total correlation (eq. 2), I(U; Z) (eq. 3-4),
the X-metric (eq. 5) and the X-CoReg objective (eq. 6).

All functions take images ``[1, 1, *S]`` or groups ``[N, 1, *S]`` (2-D or 3-D), an optional mask ``[*S]`` (or
``[1, 1, *S]``) and return differentiable 0-dim tensors in **nats** (the gradient flows from the B-spline Parzen
weights to the intensities, so through ``grid_sample`` to any transformation). The density estimators live in
:mod:`xreg_edu.density`.

Sampling: ``sample_rate < 1`` draws a fixed-size random subset of the masked voxels (seed it with ``generator``);
all images of a call share the same sample, and the posterior is sampled at the same voxels.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from . import density as D
from ._checks import check_bins, check_classes, check_finite, check_group, check_image, check_mask

__all__ = [
    "entropy", "mutual_information", "normalized_mutual_information", "conditional_entropy", "total_correlation",
    "gaussian_total_correlation", "posterior_information", "x_metric_terms", "x_metric", "x_objective",
    "labels_to_posterior",
]

_POSTERIOR_ATOL = 1e-2   # tolerance on Σ_k γ_xk = 1 (the official clamp without renormalisation is within 3e-3)


# --------------------------------------------------------------------------------------------- helpers
def _upcast(x: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32: their 3-4 significant digits cannot hold histogram sums (NaN entropies)."""
    return x.float() if isinstance(x, Tensor) and x.dtype in (torch.float16, torch.bfloat16) else x


def _sample_group(images: Tensor, mask, sample_rate: float, generator) -> tuple[Tensor, Tensor | None]:
    """``images [N, 1, *S]`` -> (values ``[N, M]``, flat voxel indices ``[M]`` or None for 'all voxels')."""
    images = _upcast(images)
    if not (0.0 < float(sample_rate) <= 1.0):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    N = images.shape[0]
    spatial = tuple(images.shape[2:])
    flat = images.reshape(N, -1)
    m = check_mask(mask, spatial)
    if m is not None:
        m = m.to(images.device)
    if m is None and sample_rate >= 1.0:
        return flat, None
    idx = D.sample_indices(m, sample_rate, generator, numel=flat.shape[1], device=images.device)
    return flat.index_select(1, idx), idx


def _pair(x: Tensor, y: Tensor, mask, sample_rate, generator, validate: bool) -> Tensor:
    """Validate two images and return their shared sample ``[2, M]``."""
    if validate:
        check_image(x, "x")
        check_image(y, "y")
        if x.shape != y.shape:
            raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape")
    x, y = _upcast(x), _upcast(y)
    values, _ = _sample_group(torch.cat((x, y.to(x.dtype)), 0), mask, sample_rate, generator)
    return values


def _pair_entropies(x, y, bins, mask, sample_rate, generator, validate=True):
    check_bins(bins)
    v = _pair(x, y, mask, sample_rate, generator, validate)
    h = D.joint_histogram(v[0], v[1], bins)
    p = h / h.sum()
    hx = D.entropy(p.sum(1))
    hy = D.entropy(p.sum(0))
    hxy = D.entropy(p)
    return hx, hy, hxy


def _posterior_samples(posterior: Tensor, images: Tensor, idx: Tensor | None, validate: bool) -> Tensor:
    """Posterior ``[K, *S]`` or ``[1, K, *S]`` -> sampled ``[M, K]`` (validated: K>=2, finite, >=0, sums to 1)."""
    if not isinstance(posterior, Tensor):
        raise TypeError(f"posterior must be a torch.Tensor, got {type(posterior).__name__}")
    spatial = tuple(images.shape[2:])
    d = len(spatial)
    if posterior.dim() == d + 2 and posterior.shape[0] == 1:
        posterior = posterior[0]
    if posterior.dim() != d + 1 or tuple(posterior.shape[1:]) != spatial:
        raise ValueError(f"posterior must have shape [K, *S] or [1, K, *S] with S = {spatial}, "
                         f"got {tuple(posterior.shape)}")
    if not posterior.is_floating_point():
        raise TypeError(f"posterior must be a floating-point tensor, got {posterior.dtype}")
    K = posterior.shape[0]
    check_classes(K)
    flat = posterior.reshape(K, -1).to(device=images.device, dtype=images.dtype)
    if idx is not None:
        flat = flat.index_select(1, idx)
    post = flat.transpose(0, 1)                                          # [M, K]
    if validate:
        check_finite(post, "posterior")
        if bool((post < -1e-6).any()):
            raise ValueError("posterior has negative probabilities")
        err = (post.sum(1) - 1.0).abs().max()
        if bool(err > _POSTERIOR_ATOL):
            raise ValueError(f"posterior must sum to 1 over the K = {K} classes (axis 0) at every voxel; "
                             f"max |Σ_k γ - 1| = {float(err):.3g}")
    return post


def _group_and_posterior(images, posterior, bins, mask, sample_rate, generator, validate):
    images = _upcast(images)
    if validate:
        check_group(images, "images", min_n=1)
    check_bins(bins)
    values, idx = _sample_group(images, mask, sample_rate, generator)
    post = _posterior_samples(posterior, images, idx, validate)
    return values, post


# --------------------------------------------------------------------------------------------- eq. 1
def entropy(x: Tensor, bins: int = 32, mask=None, sample_rate: float = 1.0,
            generator: torch.Generator | None = None) -> Tensor:
    """Shannon entropy H(X) (nats) of an image's B-spline Parzen histogram (L + 4 bins).

    Args:
        x: ``[1, 1, *S]`` float image.
        bins: L >= 2.
        mask: optional ``[*S]`` bool (non-empty).
        sample_rate, generator: optional seeded voxel sub-sampling.
    Returns:
        0-dim tensor.
    """
    check_image(x, "x")
    check_bins(bins)
    v, _ = _sample_group(x, mask, sample_rate, generator)
    return D.entropy(D.histogram(v[0], bins))


def mutual_information(x: Tensor, y: Tensor, bins: int = 32, mask=None, sample_rate: float = 1.0,
                       generator: torch.Generator | None = None, *, validate: bool = True) -> Tensor:
    """Mutual information I(X, Y) = H(X) + H(Y) - H(X, Y) (eq. 1), B-spline Parzen joint histogram.

    Each image gets its own detached, data-driven bin range (min / max of the sample); the joint histogram is
    filled sparsely in O(M·16). Note: the Parzen smoothing makes MI(x, x) = H(x) - κ with κ ≈ 1.216 nats (the
    entropy of the degree-7 B-spline at the integers), not H(x).

    Args:
        x, y: ``[1, 1, *S]`` float images of identical shape.
        bins: L >= 2 (joint histogram ``[L+4, L+4]``).
        mask: optional ``[*S]`` bool (non-empty).
        sample_rate: fraction of the masked voxels used (same sample for both images).
        generator: optional ``torch.Generator`` for reproducible sampling.
        validate: set False in hot loops to skip the input checks (they sync with the device).
    Returns:
        0-dim tensor, nats.
    """
    hx, hy, hxy = _pair_entropies(x, y, bins, mask, sample_rate, generator, validate)
    return hx + hy - hxy


def normalized_mutual_information(x: Tensor, y: Tensor, bins: int = 32, mask=None, sample_rate: float = 1.0,
                                  generator: torch.Generator | None = None) -> Tensor:
    """Normalised MI (H(X) + H(Y)) / H(X, Y) (Studholme; in [1, 2]), same estimator as :func:`mutual_information`.

    Args: as :func:`mutual_information`.
    Returns:
        0-dim tensor (dimensionless).
    """
    hx, hy, hxy = _pair_entropies(x, y, bins, mask, sample_rate, generator)
    return (hx + hy) / hxy.clamp_min(D.EPS)


def conditional_entropy(x: Tensor, y: Tensor, bins: int = 32, mask=None, sample_rate: float = 1.0,
                        generator: torch.Generator | None = None) -> Tensor:
    """Conditional entropy H(X | Y) = H(X, Y) - H(Y) (nats).

    Args: as :func:`mutual_information`.
    Returns:
        0-dim tensor.
    """
    _, hy, hxy = _pair_entropies(x, y, bins, mask, sample_rate, generator)
    return hxy - hy


# --------------------------------------------------------------------------------------------- eq. 2
def gaussian_total_correlation(images: Tensor, mask=None) -> Tensor:
    """Gaussian closed-form total correlation C_G = -½ log det R (R: correlation matrix of the N images).

    Captures linear dependence only. Computed in float64 from the eigenvalues of R (clamped at 1e-12, so
    identical images give a large finite value instead of +inf).

    Args:
        images: ``[N, 1, *S]`` float, N >= 2.
        mask: optional ``[*S]`` bool.
    Returns:
        0-dim tensor (dtype of ``images``), nats.
    """
    check_group(images, "images", min_n=2)
    v, _ = _sample_group(images, mask, 1.0, None)
    if v.shape[1] < 2:
        raise ValueError(f"gaussian_total_correlation needs at least 2 voxels (in the mask), got {v.shape[1]}")
    z = v.double()
    z = z - z.mean(1, keepdim=True)
    cov = z @ z.transpose(0, 1) / z.shape[1]
    flat = cov.diagonal() <= 1e-12 * v.double().abs().amax(1).clamp_min(1e-300) ** 2
    if bool(flat.any()):
        raise ValueError(f"gaussian_total_correlation: image(s) {flat.nonzero().flatten().tolist()} are constant "
                         f"(zero variance{' in the mask' if mask is not None else ''}), so their correlation with "
                         f"the others is undefined; drop them or use method='histogram'")
    sd = cov.diagonal().sqrt()
    R = cov / (sd.unsqueeze(0) * sd.unsqueeze(1))
    R = 0.5 * (R + R.transpose(0, 1))
    logdet = torch.linalg.eigvalsh(R).clamp_min(1e-12).log().sum()
    return (-0.5 * logdet).to(images.dtype)


def total_correlation(images: Tensor, method: str = "histogram", bins: int = 16, mask=None,
                      num_samples: int = 1500, generator: torch.Generator | None = None,
                      bandwidth: float | None = None) -> Tensor:
    """Total correlation C(U) = Σ_j H(U_j) - H(U_1, ..., U_N) (eq. 2), in nats.

    Args:
        images: ``[N, 1, *S]`` float, N >= 2.
        method: ``"histogram"`` (N-D B-spline Parzen histogram, ``(L+4)^N`` cells, N <= 4 only),
            ``"kde"`` (leave-one-out Gaussian KDE on ``num_samples`` random voxels, any N, O(M²N), noisy) or
            ``"gaussian"`` (closed form -½ log det R, linear dependence only).
        bins: L for the histogram method (keep it small: 8-32).
        mask: optional ``[*S]`` bool.
        num_samples: KDE sample size (seed with ``generator``).
        bandwidth: KDE bandwidth on standardised intensities; default Silverman's rule for N dimensions, used for
            the marginal and the joint entropies alike (so that the kernel bias cancels as far as possible).
    Returns:
        0-dim tensor.
    """
    images = _upcast(images)
    check_group(images, "images", min_n=2)
    N = images.shape[0]
    if method == "gaussian":
        return gaussian_total_correlation(images, mask)
    if method == "histogram":
        check_bins(bins)
        if N > 4:
            raise ValueError(f"total_correlation(method='histogram') supports N <= 4 images (the joint histogram "
                             f"has (L+4)^N cells: the curse of dimensionality); got N = {N}. "
                             f"Use method='kde' or method='gaussian'.")
        v, _ = _sample_group(images, mask, 1.0, None)
        h = D.nd_histogram(v, bins)
        p = h / h.sum()
        dims = tuple(range(N))
        marg = sum(D.entropy(p.sum(dim=tuple(d for d in dims if d != j))) for j in range(N))
        return marg - D.entropy(p)
    if method == "kde":
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {num_samples}")
        spatial = tuple(images.shape[2:])
        m = check_mask(mask, spatial)
        count = images[0, 0].numel()
        n_avail = int(m.sum()) if m is not None else count
        rate = min(1.0, num_samples / n_avail)
        idx = D.sample_indices(None if m is None else m.to(images.device), rate, generator,
                               numel=count, device=images.device)
        v = images.reshape(N, -1).index_select(1, idx)
        z = (v - v.mean(1, keepdim=True)) / v.std(1, keepdim=True).clamp_min(D.EPS)
        x = z.transpose(0, 1)                                            # [M, N], unit variance per image
        h = D.silverman_bandwidth(x.shape[0], N) if bandwidth is None else float(bandwidth)
        marg = sum(D.kde_entropy(x[:, j], h) for j in range(N))
        return marg - D.kde_entropy(x, h)
    raise ValueError(f"method must be 'histogram', 'kde' or 'gaussian', got {method!r}")


# --------------------------------------------------------------------------------------------- eq. 3-5
def posterior_information(images: Tensor, posterior: Tensor, bins: int = 16, mask=None) -> Tensor:
    """I(U; Z) = H(U) - Σ_j H(U_j | Z) (eq. 3-4, conditional independence given Z), nats.

    H(U) comes from the N-D Parzen histogram (small N only, as :func:`total_correlation`); H(U_j | Z) =
    H(U_j, Z) - H(Z) from the γ-weighted class histograms. With the same ``bins`` and ``mask``,
    ``total_correlation(images, "histogram") + posterior_information(images, γ) == x_metric(images, γ)`` (eq. 5),
    up to float rounding: H(U) cancels exactly.

    Args:
        images: ``[N, 1, *S]`` float, 2 <= N <= 4.
        posterior: ``[K, *S]`` or ``[1, K, *S]``, γ_xk >= 0 summing to 1 over K.
        bins: L >= 2.
        mask: optional ``[*S]`` bool.
    Returns:
        0-dim tensor.
    """
    check_group(images, "images", min_n=2)
    if images.shape[0] > 4:
        raise ValueError(f"posterior_information needs the joint entropy H(U) (N-D histogram), N <= 4; "
                         f"got N = {images.shape[0]}. Use x_metric (which does not need H(U)).")
    values, post = _group_and_posterior(images, posterior, bins, mask, 1.0, None, True)
    h = D.nd_histogram(values, bins)
    _, hz, huz = D.class_entropies(D.class_histogram(values, post, bins))
    return D.entropy(h) - (huz - hz).sum()


def x_metric_terms(images: Tensor, posterior: Tensor, bins: int = 32, mask=None, sample_rate: float = 1.0,
                   generator: torch.Generator | None = None, *, validate: bool = True) -> Tensor:
    """Per-image terms I(U_j; Z) = H(U_j) + H(Z) - H(U_j, Z) of the X-metric (eq. 5), from γ-weighted histograms.

    ``h_j(k, b) = Σ_x γ_xk β(s_j(x) - b)`` for all N images in one ``index_add`` (O(N·M·4·K)). The posterior is
    used as given: pass ``posterior.detach()`` (or a tensor without grad) to treat it as fixed weights, as
    X-CoReg does. Each term is <= H(Z) <= log K.

    Args:
        images: ``[N, 1, *S]`` float (N >= 1; usually the warped group).
        posterior: ``[K, *S]`` or ``[1, K, *S]`` γ (K >= 2, >= 0, sums to 1 over K at every voxel).
        bins: L >= 2.
        mask: optional ``[*S]`` bool (e.g. the overlap mask).
        sample_rate, generator: seeded voxel sub-sampling (same voxels for images and posterior).
        validate: False skips the checks (no device syncs) in hot loops.
    Returns:
        ``[N]`` tensor, nats.
    """
    values, post = _group_and_posterior(images, posterior, bins, mask, sample_rate, generator, validate)
    hu, hz, huz = D.class_entropies(D.class_histogram(values, post, bins))
    return hu + hz - huz


def x_metric(images: Tensor, posterior: Tensor, bins: int = 32, mask=None, sample_rate: float = 1.0,
             generator: torch.Generator | None = None, *, validate: bool = True) -> Tensor:
    """The X-metric X(U, Z) = Σ_j I(U_j; Z) (eq. 5), nats, 0 <= X <= N log K. See :func:`x_metric_terms`.

    Returns:
        0-dim tensor.
    """
    return x_metric_terms(images, posterior, bins, mask, sample_rate, generator, validate=validate).sum()


# --------------------------------------------------------------------------------------------- eq. 6
def _prior_samples(prior, post: Tensor, images: Tensor, idx) -> Tensor:
    """prior None | [K] | [K, *S] | [1, K, *S] -> [M, K] or [1, K]."""
    K = post.shape[1]
    if prior is None:
        return post.mean(0, keepdim=True)                                # M-step: π_k = mean γ_xk
    prior = torch.as_tensor(prior, dtype=images.dtype, device=images.device)
    if prior.dim() == 1:
        if prior.shape[0] != K:
            raise ValueError(f"prior has {prior.shape[0]} classes, posterior has K = {K}")
        return prior.unsqueeze(0)
    return _posterior_samples(prior, images, idx, True)


def x_objective(images: Tensor, posterior: Tensor, prior=None, *, appearance: str | None = "hist",
                bins: int = 32, mask=None, sample_rate: float = 1.0, generator: torch.Generator | None = None,
                details: bool = False, validate: bool = True):
    """X-CoReg objective for a given class model (eq. 6): X-metric plus expected complete-data log-likelihood.

    Eq. 6 reads φ̂ = argmax_φ max_α X(U[φ], Z), α = (π, f_jk). Algorithm 1 alternates an EM step on α (the
    E-step posterior γ and π) with a gradient step on φ. This function evaluates, on the same voxels,

    * ``x_metric``: X = Σ_j I(U_j; Z) with γ as weights (what the φ-step maximises, eq. 5), and
    * ``expected_log_likelihood``: Q = mean_x Σ_k γ_xk [log π_k + Σ_j log f_jk(u_j(x))], the EM auxiliary
      function per voxel (what the α-step maximises), with ``f_jk`` the class model given by ``appearance``:
      ``"hist"``: the γ-weighted Parzen pmf p_j(b | k) read with the soft B-spline weights (differentiable
      version of the SVCD look-up; pmf mass per bin), ``"gauss"``: a Gaussian per class and image with the
      γ-weighted mean / variance (M-step; density per intensity unit, so not on the same scale as "hist"), or
      ``None``: Q is omitted.

    and returns ``X + Q`` (a single scalar that increases under both steps). With ``details=True`` it also
    returns a dict with ``x_metric``, ``terms`` [N], ``expected_log_likelihood``, ``posterior_entropy``
    (mean_x -Σ_k γ log γ; Q + it is the evidence lower bound per voxel) and ``prior`` used.

    Args:
        images: ``[N, 1, *S]`` float.
        posterior: ``[K, *S]`` or ``[1, K, *S]`` γ (detach it for the φ-step).
        prior: π as ``[K]`` (global), ``[K, *S]`` / ``[1, K, *S]`` (spatially variant) or None (π = mean γ).
        appearance: ``"hist"``, ``"gauss"`` or None.
        bins, mask, sample_rate, generator, validate: as :func:`x_metric_terms`.
        details: also return the dict of parts.
    Returns:
        0-dim tensor (nats per voxel), or ``(tensor, dict)`` if ``details``.
    """
    images = _upcast(images)
    if validate:
        check_group(images, "images", min_n=1)
    check_bins(bins)
    values, idx = _sample_group(images, mask, sample_rate, generator)
    post = _posterior_samples(posterior, images, idx, validate)
    N, M = values.shape
    K = post.shape[1]
    h = D.class_histogram(values, post, bins)                            # [N, K, B]
    hu, hz, huz = D.class_entropies(h)
    terms = hu + hz - huz
    xm = terms.sum()
    pi = _prior_samples(prior, post, images, idx)
    log_pi = pi.clamp_min(D.EPS).log()                                   # [M|1, K]
    if appearance is None:
        q = None
        total = xm
    else:
        if appearance == "hist":
            cond = h / h.sum(-1, keepdim=True).clamp_min(D.EPS)          # p_j(b | k)  [N, K, B]
            index, w = D.parzen_weights(values, bins)                     # [N, M, 4]
            g = torch.gather(cond, 2, index.reshape(N, 1, M * 4).expand(N, K, M * 4)).reshape(N, K, M, 4)
            logf = (g * w.unsqueeze(1)).sum(-1).clamp_min(D.EPS).log()  # [N, K, M]
        elif appearance == "gauss":
            wsum = post.sum(0).clamp_min(D.EPS)                           # [K]
            mu = values @ post / wsum                                     # [N, K]
            diff = values.unsqueeze(1) - mu.unsqueeze(2)                  # [N, K, M]
            var = (diff.pow(2) * post.transpose(0, 1).unsqueeze(0)).sum(-1) / wsum
            var = var.clamp_min(1e-6 * values.var(1, keepdim=True).detach().clamp_min(D.EPS))
            logf = -0.5 * (diff.pow(2) / var.unsqueeze(2) + torch.log(2 * math.pi * var).unsqueeze(2))
        else:
            raise ValueError(f"appearance must be 'hist', 'gauss' or None, got {appearance!r}")
        q = (post * (log_pi + logf.sum(0).transpose(0, 1))).sum(1).mean()
        total = xm + q
    if not details:
        return total
    parts = {"x_metric": xm, "terms": terms, "expected_log_likelihood": q,
             "posterior_entropy": -(post * post.clamp_min(D.EPS).log()).sum(1).mean(),
             "prior": pi.mean(0) if pi.shape[0] > 1 else pi[0]}
    return total, parts


# --------------------------------------------------------------------------------------------- labels
def labels_to_posterior(labels: Tensor, num_classes: int | None = None, values: Sequence[int] | None = None,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot posterior from a label map (the "true label map as posterior" checks).

    Args:
        labels: ``[*S]`` or ``[1, 1, *S]`` integer label map.
        num_classes: K; labels must lie in ``0..K-1``.
        values: alternatively the label values of the K classes, e.g. ``(0, 200, 500, 600)``; class k <-> values[k].
            With neither, the sorted unique labels are used.
        dtype: float dtype of the result.
    Returns:
        ``[K, *S]`` one-hot float.
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point():
        if not bool((labels == labels.round()).all()):
            raise TypeError("labels must be an integer label map")
        labels = labels.long()
    if labels.dim() in (4, 5) and labels.shape[0] == 1 and labels.shape[1] == 1:
        labels = labels[0, 0]
    labels = labels.long()
    if values is not None:
        vals = torch.as_tensor(list(values), dtype=torch.long, device=labels.device)
        match = labels.unsqueeze(-1) == vals
        if not bool(match.any(-1).all()):
            raise ValueError(f"labels contain values not in {list(values)}")
        cls = match.long().argmax(-1)
        K = vals.numel()
    elif num_classes is not None:
        cls = labels
        K = int(num_classes)
        if bool((labels < 0).any()) or bool((labels >= K).any()):
            raise ValueError(f"labels must lie in 0..{K - 1} for num_classes = {K}")
    else:
        vals, cls = torch.unique(labels, return_inverse=True)
        K = vals.numel()
    check_classes(K)
    return torch.nn.functional.one_hot(cls, K).movedim(-1, 0).to(dtype)
