"""Jacobian determinant of ``x -> x + u(x)`` (correct in 2-D and 3-D) and the folding fraction."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._validate import as_spacing, check_vector_field


def spatial_gradient(field: Tensor, spacing: Sequence[float] | float) -> Tensor:
    """``d field_c / d x_k`` in physical units: ``[N, C, *S]`` -> ``[N, C, d, *S]``.

    Central differences inside, one-sided differences on the border voxels (``torch.gradient``).
    """
    d = field.dim() - 2
    if min(field.shape[2:]) < 2:
        raise ValueError(f"field {tuple(field.shape)} needs >= 2 voxels per spatial axis")
    spacing = as_spacing(spacing, d)
    grads = torch.gradient(field, spacing=list(spacing), dim=list(range(2, 2 + d)))
    return torch.stack(grads, dim=2)


def jacobian_matrix(displacement: Tensor, spacing: Sequence[float] | float) -> Tensor:
    """``J = I + grad u``: ``[N, d, *S]`` (mm) -> ``[N, *S, d, d]`` with ``J[..., a, b] = d y_a / d x_b``."""
    d = check_vector_field(displacement, "displacement")
    g = spatial_gradient(displacement, spacing)  # [N, a, b, *S]
    g = g.movedim(1, -1).movedim(1, -1)  # [N, *S, a, b]
    return g + torch.eye(d, device=g.device, dtype=g.dtype)


def jacobian_determinant(displacement: Tensor, spacing: Sequence[float] | float) -> Tensor:
    """``det(I + grad u)`` at every voxel: ``[N, d, *S]`` (mm) -> ``[N, 1, *S]``.

    3-D uses the full cofactor expansion (the official code adds two terms that must be subtracted).
    """
    j = jacobian_matrix(displacement, spacing)
    if j.shape[-1] == 2:
        det = j[..., 0, 0] * j[..., 1, 1] - j[..., 0, 1] * j[..., 1, 0]
    else:
        det = (j[..., 0, 0] * (j[..., 1, 1] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 1])
               - j[..., 0, 1] * (j[..., 1, 0] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 0])
               + j[..., 0, 2] * (j[..., 1, 0] * j[..., 2, 1] - j[..., 1, 1] * j[..., 2, 0]))
    return det.unsqueeze(1)


def folding_fraction(displacement: Tensor, spacing: Sequence[float] | float) -> Tensor:
    """Fraction of voxels with ``det J <= 0`` per image: ``[N, d, *S]`` -> ``[N]`` in [0, 1]."""
    det = jacobian_determinant(displacement, spacing)
    return (det <= 0).flatten(1).to(displacement.dtype).mean(1)
