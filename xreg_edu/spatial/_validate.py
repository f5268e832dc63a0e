"""Private argument checks for the spatial package (shape/spacing of fields and points)."""
from __future__ import annotations

import numbers
from typing import Sequence

from torch import Tensor

from .._checks import check_finite


def as_spacing(spacing: Sequence[float] | float, dim: int) -> tuple[float, ...]:
    """``spacing`` as a tuple of ``dim`` positive floats (a scalar is broadcast)."""
    if isinstance(spacing, numbers.Real):
        spacing = (float(spacing),) * dim
    if isinstance(spacing, Tensor):
        spacing = spacing.tolist()
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != dim:
        raise ValueError(f"spacing {spacing} must hold {dim} values (one per spatial axis)")
    if not all(s > 0 and s < float("inf") for s in spacing):
        raise ValueError(f"spacing {spacing} must be positive and finite (mm per axis)")
    return spacing


def check_field(field: Tensor, name: str = "field", channels: int | None = None) -> int:
    """A batched field ``[N, C, *S]`` with 2 or 3 spatial axes, float, finite; returns d."""
    if not isinstance(field, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(field).__name__}")
    if field.dim() not in (4, 5):
        raise ValueError(f"{name} must have shape [N, C, H, W] or [N, C, D, H, W], got {tuple(field.shape)}")
    if not field.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {field.dtype}")
    d = field.dim() - 2
    if channels is not None and field.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got shape {tuple(field.shape)}")
    check_finite(field, name)
    return d


def check_vector_field(field: Tensor, name: str = "points") -> int:
    """Points or displacements ``[N, d, *S]`` with d == number of spatial axes; returns d."""
    d = check_field(field, name)
    if field.shape[1] != d:
        raise ValueError(f"{name} must have shape [N, {d}, *S] (one channel per spatial axis), "
                         f"got {tuple(field.shape)}")
    return d
