"""The pointwise imaging functional f_j of eq. 7–8 (generation step of BIGR-lite).

Our reconstruction, *inspired by* Luo et al. (arXiv 2401.02141); the official code is not public (spec §9.2).

Eq. 8 asks ``f_j(Z) ∘ φ⁻¹ = f_j(Z ∘ φ⁻¹)`` for every diffeomorphism φ. A map that acts on each voxel's anatomy
vector alone ("pointwise") satisfies this for any φ: both sides evaluate f_j on the same anatomy vector at the same
point. With interpolation it stays *exact* when f_j is affine in z and the interpolation weights sum to one
(bilinear, border padding), and for any pointwise f_j with nearest-neighbour sampling. The functionals here are
affine in z; their parameters are fitted in closed form by :mod:`xreg_edu.vae.elbo`. They give the *mean image*
of p(u | z, v) (counterfactual reconstructions); the likelihood itself is never evaluated at a decoded mean:

- categorical z: ``û_j(y) = Σ_k z_jk(y) μ_jk`` (μ_jk the class means of f_jk);
- Gaussian z (P features): ``û_j(y) = a_j · z_j(y) + b_j``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def class_means(anatomy: Tensor, images: Tensor, eps: float = 1e-6) -> Tensor:
    """Class-mean intensities ``μ_jk = Σ_y z_jk u_j / Σ_y z_jk``: ``[N, K, *S]`` maps, ``[N, 1, *S]`` -> ``[N, K]``."""
    z, u = anatomy.flatten(2), images.flatten(2)
    return (z * u).sum(2) / (z.sum(2) + eps)


def categorical_functional(anatomy: Tensor, mu: Tensor) -> Tensor:
    """``û_j = Σ_k z_jk μ_jk`` (pointwise, linear in z).

    Args:
        anatomy: ``[N, K, *S]`` (or ``[1, K, *S]`` broadcast over the N rows of ``mu``).
        mu: ``[N, K]`` class intensities.

    Returns:
        ``[N, 1, *S]``.
    """
    shape = (mu.shape[0], mu.shape[1]) + (1,) * (anatomy.dim() - 2)
    return (anatomy * mu.view(shape)).sum(1, keepdim=True)


def linear_functional(features: Tensor, coefficients: Tensor) -> Tensor:
    """``û_j = w_j · z_j + b_j`` (pointwise, affine in z).

    Args:
        features: ``[N, C, *S]`` (or ``[1, C, *S]``).
        coefficients: ``[N, C + 1]``.

    Returns:
        ``[N, 1, *S]``.
    """
    c = features.shape[1]
    shape = (coefficients.shape[0], c) + (1,) * (features.dim() - 2)
    w = coefficients[:, :c].reshape(shape)
    b = coefficients[:, c].reshape((coefficients.shape[0], 1) + (1,) * (features.dim() - 2))
    return (features * w).sum(1, keepdim=True) + b
