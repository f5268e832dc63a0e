"""The evidence lower bound of eq. 9, each term written out and named.

Our reconstruction, *inspired by* Luo et al. (arXiv 2401.02141); the official code is not public (spec §9.2).

    L(θ, ψ | u) = E_q(z,v|u)[ log p(u | z, v) ]                                  ("reconstruction")
                  − E_q(v|u)[ KL( q(z | u, v) || p(z) ) ]                         ("kl_anatomy")
                  − KL( q(v | u) || p(v) )                                        ("kl_geometry")

The split of the KL term follows from q(z, v | u) = q(v | u) q(z | u, v) and p(z, v) = p(z) p(v) (chain rule of KL).

Choices made here (all in nats, sums over voxels, never means, so a hand computation checks them):

- reconstruction: Gaussian, ``log p(u_j | ·) = −½ Σ_y (u_j − û_j)² / σ_j² − |Ω|/2 · log(2π σ_j²)``; σ_j² is the
  closed-form maximiser (mean squared residual), detached, floored at ``min_var``.
- kl_anatomy, categorical with a uniform prior over K classes: ``Σ_x [Σ_k q log q + log K]``.
  Gaussian with a standard normal prior: ``½ Σ (μ² + σ² − 1 − log σ²)``.
- kl_geometry: q(v|u) is a point mass (deterministic registration head), so the KL reduces — up to the constant
  entropy of the point mass, which is dropped — to ``−log p(v)`` of a Gaussian smoothness prior,
  ``λ/2 Σ_j Σ_x Σ_c Σ_a ((v[x + e_a] − v[x]) / spacing_a)²`` (forward differences, mm⁻¹·mm = unitless). With a point
  mass the expectation E_q(v)[·] in the anatomy term is the term evaluated at the estimate v̂.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def gaussian_log_likelihood(images: Tensor, recon: Tensor, var: Tensor | None = None,
                            min_var: float = 1e-4) -> Tensor:
    """Σ_j log p(u_j | z, v_j) with an isotropic Gaussian per image.

    Args:
        images: ``[N, 1, *S]`` observed images u_j.
        recon: ``[N, 1, *S]`` generated images û_j = f_j(z) ∘ φ_j⁻¹.
        var: optional ``[N]`` noise variances σ_j²; ``None`` = closed form (mean squared residual, detached).
        min_var: floor on σ_j².

    Returns:
        0-dim tensor (nats).
    """
    if images.shape != recon.shape:
        raise ValueError(f"images {tuple(images.shape)} and recon {tuple(recon.shape)} must have the same shape")
    sq = (images - recon).pow(2).flatten(1)
    n_vox = sq.shape[1]
    if var is None:
        var = sq.detach().mean(1)
    var = var.clamp_min(min_var)
    return (-0.5 * sq.sum(1) / var - 0.5 * n_vox * torch.log(2 * math.pi * var)).sum()


def kl_categorical_uniform(q: Tensor, eps: float = 1e-12) -> Tensor:
    """KL(q(z) || uniform over K), summed over voxels.

    Args:
        q: ``[1, K, *S]`` (or ``[B, K, *S]``) probabilities, summing to 1 over dim 1.

    Returns:
        0-dim tensor ``Σ_x [Σ_k q log q + log K]`` (nats, ≥ 0).
    """
    k = q.shape[1]
    n_vox = q.numel() // k
    return (q * torch.log(q.clamp_min(eps))).sum() + n_vox * math.log(k)


def kl_gaussian_standard(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) || N(0, 1)) summed over all elements: ``½ Σ (μ² + σ² − 1 − log σ²)``."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum()


def smoothness_energy(field: Tensor, spacing: tuple[float, ...]) -> Tensor:
    """``Σ_j Σ_x Σ_c Σ_a ((f[x + e_a] − f[x]) / spacing_a)²`` with forward differences.

    Args:
        field: ``[N, d, *S]`` velocity or displacement (mm).
        spacing: d floats (mm per axis).
    """
    total = field.new_zeros(())
    for a, h in enumerate(spacing):
        diff = torch.diff(field, dim=2 + a) / h
        total = total + diff.pow(2).sum()
    return total


def kl_geometry_delta(field: Tensor, spacing: tuple[float, ...], lam: float) -> Tensor:
    """KL(q(v|u) || p(v)) for a point-mass q and the Gaussian smoothness prior (constants dropped).

    Args:
        field: ``[N, d, *S]`` the estimated v (velocity for D, displacement for N).
        spacing: d floats.
        lam: prior precision λ.

    Returns:
        0-dim tensor ``λ/2 · smoothness_energy(field)``.
    """
    return 0.5 * lam * smoothness_energy(field, spacing)


@dataclass
class ELBOTerms:
    """The named terms of eq. 9 (0-dim tensors, nats).

    Attributes:
        reconstruction: E_q[log p(u | z, v)].
        kl_anatomy: E_q(v|u)[KL(q(z|u,v) || p(z))].
        kl_geometry: KL(q(v|u) || p(v)).
        elbo: reconstruction − beta_z · kl_anatomy − kl_geometry (beta_z = 1 is the true ELBO).
        num_voxels: N · |Ω|, to report the per-voxel value.
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


def elbo_terms(images: Tensor, recon: Tensor, kl_anatomy: Tensor, kl_geometry: Tensor,
               beta_z: float = 1.0, var: Tensor | None = None) -> ELBOTerms:
    """Assemble eq. 9 from its pieces.

    Args:
        images: ``[N, 1, *S]`` observed group.
        recon: ``[N, 1, *S]`` its reconstruction.
        kl_anatomy: 0-dim, from :func:`kl_categorical_uniform` or :func:`kl_gaussian_standard`.
        kl_geometry: 0-dim, from :func:`kl_geometry_delta`.
        beta_z: weight of the anatomy KL (1 = ELBO; <1 is the usual β-VAE relaxation).
        var: optional ``[N]`` noise variances for the likelihood.
    """
    rec = gaussian_log_likelihood(images, recon, var)
    elbo = rec - beta_z * kl_anatomy - kl_geometry
    return ELBOTerms(rec, kl_anatomy, kl_geometry, elbo, int(images.numel()))
