"""The evidence lower bound of eq. 9, every term evaluated exactly and named (spec §9.2, revised).

Our reconstruction, *inspired by* Luo et al. (arXiv 2401.02141); the official code is not public.

    L(θ, ψ | u) = E_q(z,v|u)[ log p(u | z, v) ]                   ("reconstruction")
                  − E_q(v|u)[ KL( q(z | u, v) || p(z) ) ]          ("kl_anatomy")
                  − KL( q(v | u) || p(v) )                         ("kl_geometry")

Categorical anatomy (C variants), z(x) ∈ {1..K} independent over the common-space voxels x, prior p(z(x) = k) = π_k:

    reconstruction = Σ_j Σ_x w_j(x) Σ_k q_k(x) log f_jk(u_j(φ_j(x)))     (exact expectation, no decoded mean)
                     + Σ_j Σ_y m_j(y) log Σ_k π_k f_jk(u_j(y))             (image voxels outside the common space)
    kl_anatomy     = Σ_x Σ_k q_k(x) (log q_k(x) − log π_k)

with f_jk the intensity density of class k in image j, fitted in closed form (weighted maximum likelihood, treated as
a constant of the step = an M-step): a per-class Gaussian N(μ_jk, σ²_jk), or the cubic B-spline Parzen density of
X-CoReg, ``f_jk(u) = Σ_b p_jk(b) β(s(u) − b) / Δ`` with ``p_jk`` the posterior-weighted class histogram (a proper
density: it integrates to one). w_j(x) = |det Dφ_j(x)| where φ_j(x) lies inside image j's field of view, else 0
(change of variables). m_j(y) = 1 for the image voxels y that no common-space voxel reaches (φ_j⁻¹(y) outside the
common grid): the anatomy there is not shared with any other image, z is drawn from the prior and marginalised
exactly. Without that term the objective forgets those voxels, and sliding images out of the common field of view
becomes a way to raise it (measured: the P variants' collapse, chapter 9).

Gaussian anatomy (P variants), z(x) ∈ R^C, prior N(0, I), q(z(x)) = N(m(x), diag s²(x)), pointwise linear-Gaussian
appearance u_j = a_j·z + b_j + N(0, σ²_j): the expectation is exact in closed form,
``E_q[(u − a·z − b)²] = (u − a·m − b)² + Σ_c a_c² s_c²``, and (a_j, b_j, σ²_j) are fitted in closed form; an
image voxel outside the common space has the marginal ``N(b_j, ‖a_j‖² + σ²_j)``.

Geometry: q(v|u) is a point mass (deterministic heads), so the objective is a **MAP-ELBO**: kl_geometry is
``−log p(v̂)`` of the Gaussian smoothness prior ``λ/2 Σ ‖∇v‖²`` up to constants (the point mass's entropy and the
prior's normaliser do not depend on the parameters).

All terms are sums in nats (never means), so a hand computation checks them; :meth:`ELBOTerms.loss` divides by the
number of image voxels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..density import EPS, bin_coordinates, bspline_taps, class_histogram

LOG_2PI = math.log(2 * math.pi)


# ------------------------------------------------------------------------------------------- class appearance
def gaussian_class_fit(values: Tensor, q: Tensor, weights: Tensor | None = None,
                       min_var: float = 1e-4) -> tuple[Tensor, Tensor]:
    """Weighted MLE of a Gaussian per image and class (class-specific variances), detached.

    Args:
        values: ``[N, M]`` intensities u_j(φ_j(x)).
        q: ``[M, K]`` posterior.
        weights: optional ``[N, M]`` voxel weights w_j.
        min_var: floor of σ².

    Returns:
        ``(mu [N, K], var [N, K])``.
    """
    v, g = values.detach(), q.detach()
    r = g.unsqueeze(0) if weights is None else g.unsqueeze(0) * weights.detach().unsqueeze(-1)  # [N, M, K]
    mass = r.sum(1).clamp_min(EPS)
    mu = (r * v.unsqueeze(-1)).sum(1) / mass
    var = (r * (v.unsqueeze(-1) - mu.unsqueeze(1)).pow(2)).sum(1) / mass
    return mu, var.clamp_min(min_var)


def gaussian_class_log_density(values: Tensor, mu: Tensor, var: Tensor) -> Tensor:
    """``log N(u_j(x); μ_jk, σ²_jk)``: ``[N, M]`` values, ``[N, K]`` parameters -> ``[N, K, M]``."""
    d = values.unsqueeze(1) - mu.unsqueeze(-1)
    return -0.5 * (d.pow(2) / var.unsqueeze(-1) + torch.log(var).unsqueeze(-1) + LOG_2PI)


def parzen_class_fit(values: Tensor, q: Tensor, bins: int, weights: Tensor | None = None
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Posterior-weighted B-spline class histograms of every image (X-CoReg's f_jk, spec §3.3), detached.

    Args:
        values: ``[N, M]``; q: ``[M, K]``; bins: L; weights: optional ``[N, M]``.

    Returns:
        ``(pmf [N, K, L + 4], lo [N, 1], width [N, 1])``: pmf sums to one over the bins.
    """
    v, g = values.detach(), q.detach()
    _, lo, width = bin_coordinates(v, bins)
    if weights is None:
        h = class_histogram(v, g, bins)
    else:  # a per-image weight -> one histogram call per image
        h = torch.stack([class_histogram(v[j], g * weights[j].detach().unsqueeze(-1), bins) for j in range(len(v))])
    return h / h.sum(-1, keepdim=True).clamp_min(EPS), lo, width


def parzen_class_log_density(values: Tensor, pmf: Tensor, lo: Tensor, width: Tensor, bins: int) -> Tensor:
    """``log f_jk(u) = log(Σ_b p_jk(b) β(s(u) − b) / Δ_j)`` (differentiable in u): -> ``[N, K, M]``."""
    n, k, nb = pmf.shape
    s = (values - lo) / width + 2
    f = s.detach().floor().clamp(-4, nb + 4)                            # exact for any u: far taps fall off the table
    taps = bspline_taps(s - f)                                          # [N, M, 4]
    idx = (f.long() - 1).unsqueeze(-1) + torch.arange(4, device=values.device)  # [N, M, 4]
    taps = taps * ((idx >= 0) & (idx < nb))
    idx = idx.clamp(0, nb - 1).flatten(1)
    gathered = torch.gather(pmf, 2, idx.unsqueeze(1).expand(n, k, idx.shape[1])).view(n, k, -1, 4)
    dens = (gathered * taps.unsqueeze(1)).sum(-1)
    return torch.log(dens.clamp_min(EPS)) - torch.log(width).unsqueeze(1)


def fit_class_density(values: Tensor, q: Tensor, appearance: str = "parzen", bins: int = 32,
                      weights: Tensor | None = None):
    """Fit f_jk in closed form to (values, q); returns ``log f_jk`` as a function ``[N, M'] -> [N, K, M']``.

    Args:
        appearance: ``"parzen"`` (nonparametric, X-CoReg's) or ``"gaussian"`` (class-specific variances).
    """
    if appearance == "gaussian":
        mu, var = gaussian_class_fit(values, q, weights)
        return lambda u: gaussian_class_log_density(u, mu, var)
    if appearance == "parzen":
        pmf, lo, width = parzen_class_fit(values, q, bins, weights)
        return lambda u: parzen_class_log_density(u, pmf, lo, width, bins)
    raise ValueError(f"appearance must be 'parzen' or 'gaussian', got {appearance!r}")


def class_log_density(values: Tensor, q: Tensor, appearance: str = "parzen", bins: int = 32,
                      weights: Tensor | None = None) -> Tensor:
    """Fit f_jk in closed form to (values, q) and evaluate ``log f_jk(values)``: ``[N, K, M]``."""
    return fit_class_density(values, q, appearance, bins, weights)(values)


def marginal_log_likelihood(log_f: Tensor, log_pi: Tensor, mask: Tensor) -> Tensor:
    """``Σ_j Σ_y m_j(y) log Σ_k π_k f_jk(u_j(y))``: image voxels whose anatomy no common-space voxel carries
    (z drawn from the prior there, marginalised exactly). ``[N, K, M]``, ``[K]``, ``[N, M]`` -> 0-dim."""
    return (torch.logsumexp(log_f + log_pi.view(1, -1, 1), 1) * mask).sum()


def expected_log_likelihood(log_f: Tensor, q: Tensor, weights: Tensor | None = None) -> Tensor:
    """``Σ_j Σ_x w_j(x) Σ_k q_k(x) log f_jk(x)``: ``[N, K, M]``, ``[M, K]``, ``[N, M]`` -> 0-dim."""
    per = (log_f * q.t().unsqueeze(0)).sum(1)  # [N, M]
    return (per if weights is None else per * weights).sum()


# ------------------------------------------------------------------------------------------- anatomy prior / KL
def class_proportions(q: Tensor) -> Tensor:
    """Closed-form prior update ``π_k = mean_x q_k(x)`` (X-CoReg step 4), detached: ``[M, K]`` -> ``[K]``."""
    return q.detach().mean(0).clamp_min(EPS)


def kl_categorical(q: Tensor, log_pi: Tensor) -> Tensor:
    """``Σ_x Σ_k q (log q − log π)`` (≥ 0): ``[M, K]``, ``[K]`` -> 0-dim."""
    return (q * (torch.log(q.clamp_min(1e-30)) - log_pi)).sum()


def kl_gaussian_standard(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) || N(0, 1)) summed over all elements: ``½ Σ (μ² + σ² − 1 − log σ²)``."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum()


# ------------------------------------------------------------------------------------------- P: linear-Gaussian
def linear_gaussian_fit(mean: Tensor, var: Tensor, values: Tensor, weights: Tensor | None = None,
                        ridge: float = 1e-6, min_var: float = 1e-4) -> tuple[Tensor, Tensor]:
    """Closed-form (a_j, b_j, σ²_j) maximising ``E_q[log N(u_j; a_j·z + b_j, σ²_j)]``, detached.

    Args:
        mean, var: ``[M, C]`` q(z(x)) = N(m, diag s²); values: ``[N, M]``; weights: optional ``[N, M]``.

    Returns:
        ``(coef [N, C + 1] = (a, b), noise var [N])``.
    """
    m, s2, u = mean.detach(), var.detach(), values.detach()
    n, (M, c) = u.shape[0], m.shape
    x = torch.cat([m, m.new_ones(M, 1)], 1)                       # [M, C+1]
    w = u.new_ones(n, M) if weights is None else weights.detach()
    wx = w.unsqueeze(-1) * x                                      # [N, M, C+1]
    gram = wx.transpose(1, 2) @ x                                 # E[x xᵀ] = x xᵀ + diag(s², 0)
    gram[:, :c, :c] += torch.diag_embed(w @ s2)
    gram = gram + ridge * torch.eye(c + 1, dtype=u.dtype, device=u.device) * w.sum(1).view(-1, 1, 1)
    rhs = (wx * u.unsqueeze(-1)).sum(1, keepdim=True).transpose(1, 2)
    coef = torch.linalg.solve(gram, rhs).squeeze(-1)              # [N, C+1]
    resid = _expected_sq_residual(m, s2, u, coef)
    noise = (w * resid).sum(1) / w.sum(1).clamp_min(EPS)
    return coef, noise.clamp_min(min_var)


def _expected_sq_residual(mean: Tensor, var: Tensor, values: Tensor, coef: Tensor) -> Tensor:
    a, b = coef[:, :-1], coef[:, -1:]
    return (values - a @ mean.t() - b).pow(2) + a.pow(2) @ var.t()  # [N, M]


def linear_gaussian_expected_log_likelihood(mean: Tensor, var: Tensor, values: Tensor, coef: Tensor,
                                            noise: Tensor, weights: Tensor | None = None) -> Tensor:
    """``Σ_j Σ_x w E_q[log N(u_j(x); a_j·z + b_j, σ²_j)]`` exactly (Gaussian q): 0-dim."""
    per = -0.5 * (_expected_sq_residual(mean, var, values, coef) / noise.unsqueeze(-1)
                  + torch.log(noise).unsqueeze(-1) + LOG_2PI)
    return (per if weights is None else per * weights).sum()


def linear_gaussian_marginal_log_likelihood(values: Tensor, coef: Tensor, noise: Tensor, mask: Tensor) -> Tensor:
    """``Σ_j Σ_y m_j(y) log N(u_j(y); b_j, ‖a_j‖² + σ²_j)``: the P counterpart of :func:`marginal_log_likelihood`
    (z ~ N(0, I) marginalised): ``[N, M]``, ``[N, C + 1]``, ``[N]``, ``[N, M]`` -> 0-dim."""
    var = coef[:, :-1].pow(2).sum(1, keepdim=True) + noise.unsqueeze(-1)
    per = -0.5 * ((values - coef[:, -1:]).pow(2) / var + torch.log(var) + LOG_2PI)
    return (per * mask).sum()


# ------------------------------------------------------------------------------------------- geometry prior
def smoothness_energy(field: Tensor, spacing: tuple[float, ...]) -> Tensor:
    """``Σ_j Σ_x Σ_c Σ_a ((f[x + e_a] − f[x]) / spacing_a)²`` with forward differences.

    Args:
        field: ``[N, d, *S]`` velocity or displacement (mm).
        spacing: d floats (mm per axis).
    """
    total = field.new_zeros(())
    for a, h in enumerate(spacing):
        total = total + (torch.diff(field, dim=2 + a) / h).pow(2).sum()
    return total


def kl_geometry_delta(field: Tensor, spacing: tuple[float, ...], lam: float) -> Tensor:
    """KL(q(v|u) || p(v)) for a point-mass q (MAP) and the Gaussian smoothness prior, constants dropped:
    ``λ/2 · smoothness_energy(field)``."""
    return 0.5 * lam * smoothness_energy(field, spacing)


@dataclass
class ELBOTerms:
    """The named terms of eq. 9 (0-dim tensors, nats).

    Attributes:
        reconstruction: E_q[log p(u | z, v)].
        kl_anatomy: KL(q(z|u,v) || p(z)) at the point estimate v̂.
        kl_geometry: −log p(v̂) + const (MAP).
        elbo: reconstruction − kl_anatomy − kl_geometry.
        num_voxels: N · |Ω|, to report per-voxel values.
    """

    reconstruction: Tensor
    kl_anatomy: Tensor
    kl_geometry: Tensor
    elbo: Tensor
    num_voxels: int

    def loss(self) -> Tensor:
        """Negative ELBO per voxel (what the optimiser minimises)."""
        return -self.elbo / self.num_voxels

    def as_dict(self) -> dict[str, float]:
        """Plain floats for logging (per voxel)."""
        n = self.num_voxels
        return {"elbo": float(self.elbo.detach()) / n, "reconstruction": float(self.reconstruction.detach()) / n,
                "kl_anatomy": float(self.kl_anatomy.detach()) / n, "kl_geometry": float(self.kl_geometry.detach()) / n}


def elbo_terms(reconstruction: Tensor, kl_anatomy: Tensor, kl_geometry: Tensor, num_voxels: int) -> ELBOTerms:
    """Assemble eq. 9 from its three terms."""
    return ELBOTerms(reconstruction, kl_anatomy, kl_geometry, reconstruction - kl_anatomy - kl_geometry,
                     int(num_voxels))
