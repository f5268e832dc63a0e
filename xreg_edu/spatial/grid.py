"""Identity grids in centred physical (mm) coordinates and the field-of-view masks.

Convention: voxel index ``i`` along axis ``k`` (size ``n_k``) has coordinate ``(i - (n_k - 1)/2) * spacing[k]`` mm;
vector channel ``k`` <-> tensor axis ``k`` (not grid_sample's reversed xyz order).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._validate import as_spacing, check_vector_field


def identity_grid(shape: Sequence[int], spacing: Sequence[float] | float, *, device=None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """Centred physical coordinates of every voxel.

    Args:
        shape: spatial size ``S`` (2 or 3 ints).
        spacing: mm per axis, same order as ``shape``.

    Returns:
        ``[1, d, *S]`` points in mm.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must hold 2 or 3 positive sizes, got {shape}")
    spacing = as_spacing(spacing, len(shape))
    axes = [(torch.arange(n, device=device, dtype=dtype) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def axis_coordinates(grid: Tensor) -> list[Tensor]:
    """The 1-D coordinates along each axis of an axis-aligned grid ``[1|N, d, *S]`` -> d tensors ``[n_k]``."""
    d = grid.dim() - 2
    out = []
    for k in range(d):
        index = [0] * d
        index[k] = slice(None)
        out.append(grid[(0, k, *index)])
    return out


def grid_spacing(grid: Tensor) -> tuple[float, ...]:
    """Voxel spacing (mm) of an axis-aligned identity grid ``[1, d, *S]`` (1.0 along axes of size 1)."""
    out = []
    for c in axis_coordinates(grid):
        n = c.numel()
        out.append(float((c[-1] - c[0]) / (n - 1)) if n > 1 else 1.0)
    return tuple(out)


def points_to_voxels(points: Tensor, shape: Sequence[int], spacing: Sequence[float]) -> Tensor:
    """mm points ``[N, d, *S']`` -> continuous voxel indices ``[N, d, *S']`` of a grid of ``shape``."""
    d = points.shape[1]
    view = (1, d) + (1,) * (points.dim() - 2)
    s = torch.tensor(spacing, device=points.device, dtype=points.dtype).view(view)
    c = torch.tensor([(n - 1) / 2 for n in shape], device=points.device, dtype=points.dtype).view(view)
    return points / s + c


def points_to_normalized(points: Tensor, shape: Sequence[int], spacing: Sequence[float]) -> Tensor:
    """mm points ``[N, d, *S']`` -> grid_sample grid ``[N, *S', d]`` (align_corners=True, xyz = reversed axes)."""
    d = points.shape[1]
    half = [max((n - 1) / 2 * s, 1e-12) for n, s in zip(shape, spacing)]
    view = (1, d) + (1,) * (points.dim() - 2)
    scale = torch.tensor(half, device=points.device, dtype=points.dtype).view(view)
    g = points / scale
    return g.flip(1).movedim(1, -1)


def inside_fov(points: Tensor, shape: Sequence[int], spacing: Sequence[float] | float, tol: float = 1e-4) -> Tensor:
    """Which points fall inside the image grid: ``0 <= index <= n - 1`` on every axis (± ``tol`` voxel).

    Args:
        points: ``[N, d, *S']`` mm in the centred frame of a grid of spatial ``shape`` and ``spacing``.

    Returns:
        ``[N, 1, *S']`` bool.
    """
    d = check_vector_field(points, "points")
    shape = tuple(int(n) for n in shape)
    if len(shape) != d:
        raise ValueError(f"shape {shape} does not match {d}-D points")
    spacing = as_spacing(spacing, d)
    y = points_to_voxels(points, shape, spacing)
    view = (1, d) + (1,) * d
    upper = torch.tensor([n - 1 for n in shape], device=y.device, dtype=y.dtype).view(view)
    return ((y >= -tol) & (y <= upper + tol)).all(dim=1, keepdim=True)


def overlap_mask(points: Tensor, shape: Sequence[int], spacing: Sequence[float] | float, tol: float = 1e-4) -> Tensor:
    """Common-space voxels whose sampling location is inside every image's FOV: ``[N, d, *S']`` -> ``[1, 1, *S']`` bool."""
    return inside_fov(points, shape, spacing, tol).all(dim=0, keepdim=True)
