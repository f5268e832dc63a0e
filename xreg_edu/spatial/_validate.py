"""Private argument checks for the spatial package (shape/spacing of fields and points)."""
from __future__ import annotations

import numbers
from typing import Sequence

from torch import Tensor

from .._checks import check_field

__all__ = ["as_spacing", "check_field", "check_vector_field"]


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


def check_vector_field(field: Tensor, name: str = "points") -> int:
    """Points or displacements ``[N, d, *S]`` with d == number of spatial axes; returns d."""
    d = check_field(field, name)
    if field.shape[1] != d:
        raise ValueError(f"{name} must have shape [N, {d}, *S] (one channel per spatial axis), "
                         f"got {tuple(field.shape)}")
    return d
