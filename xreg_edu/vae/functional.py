"""The pointwise imaging functional f_j of eq. 7–8 (generation step of BIGR-lite).

Our reconstruction, *inspired by* Luo et al. (arXiv 2401.02141); the official code is not public (spec §9.2).

Eq. 8 asks ``f_j(Z) ∘ φ⁻¹ = f_j(Z ∘ φ⁻¹)`` for every diffeomorphism φ. A map that acts on each voxel's anatomy
vector alone ("pointwise") satisfies this for any φ: both sides evaluate f_j on the same anatomy vector at the same
point. With interpolation it stays *exact* when f_j is affine in z and the interpolation weights sum to one
(bilinear, border padding), and for any pointwise f_j with nearest-neighbour sampling. The functionals here are
affine in z and have no learned parameters — they are solved in closed form per image (appearance variation):

- categorical z: ``û_j(y) = Σ_k z_jk(y) μ_jk`` with ``μ_jk = Σ_y z_jk u_j / Σ_y z_jk`` (class-mean intensities);
- Gaussian z (C features): ``û_j(y) = w_j · z_j(y) + b_j`` with (w_j, b_j) from ridge least squares.
"""
from __future__ import annotations

import torch
from torch import Tensor


def class_means(anatomy: Tensor, images: Tensor, eps: float = 1e-6) -> Tensor:
    """Closed-form class intensities of every image.

    Args:
        anatomy: ``[N, K, *S]`` soft class maps z_j in image space (sum to 1 over K).
        images: ``[N, 1, *S]`` intensities u_j.

    Returns:
        ``[N, K]`` μ_jk = Σ_y z_jk u_j / Σ_y z_jk.
    """
    z = anatomy.flatten(2)
    u = images.flatten(2)
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


def linear_coefficients(features: Tensor, images: Tensor, ridge: float = 1e-3) -> Tensor:
    """Ridge least-squares fit of u_j on [z_j, 1].

    Args:
        features: ``[N, C, *S]`` continuous anatomy features in image space.
        images: ``[N, 1, *S]``.
        ridge: Tikhonov weight (relative to the number of voxels).

    Returns:
        ``[N, C + 1]`` coefficients (weights, then bias).
    """
    n, c = features.shape[:2]
    x = torch.cat([features.flatten(2), features.new_ones(n, 1, features[0, 0].numel())], 1)  # [N, C+1, M]
    u = images.flatten(2)  # [N, 1, M]
    gram = x @ x.transpose(1, 2)
    eye = torch.eye(c + 1, device=x.device, dtype=x.dtype) * ridge * x.shape[2]
    rhs = x @ u.transpose(1, 2)
    return torch.linalg.solve(gram + eye, rhs).squeeze(-1)


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
