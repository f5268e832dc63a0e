"""Resampling for multi-resolution: resize keeping the physical extent, Gaussian downsampling, pyramids.

Every level covers the same physical extent ``(n - 1) * spacing`` (align_corners=True frame), so centred mm
points, rigid/affine parameters and FFD control grids carry over between levels unchanged.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validate import as_spacing, check_field
from .grid import identity_grid
from .warp import warp


def resized_spacing(shape: Sequence[int], spacing: Sequence[float], new_shape: Sequence[int]) -> tuple[float, ...]:
    """Spacing of a grid of ``new_shape`` spanning the same extent: ``s * (n - 1) / (n' - 1)``."""
    return tuple(s * (n - 1) / (m - 1) if m > 1 else s * max(n - 1, 1)
                 for n, s, m in zip(shape, spacing, new_shape))


def resize(images: Tensor, shape: Sequence[int], spacing: Sequence[float] | float | None = None, *,
           mode: str = "bilinear") -> Tensor:
    """Resample ``[N, C, *S]`` to ``[N, C, *shape]`` over the same physical extent (no smoothing).

    ``mode``: ``"bilinear"`` or ``"nearest"`` (labels: cast to float and back). Use :func:`resized_spacing`
    for the new voxel size.
    """
    d = check_field(images, "images")
    shape = tuple(int(n) for n in shape)
    if len(shape) != d or min(shape) < 1:
        raise ValueError(f"shape {shape} must hold {d} positive sizes")
    spacing = (1.0,) * d if spacing is None else as_spacing(spacing, d)
    new_spacing = resized_spacing(images.shape[2:], spacing, shape)
    grid = identity_grid(shape, new_spacing, device=images.device, dtype=images.dtype)
    return warp(images, grid, spacing, mode=mode, padding="border")


def gaussian_smooth(images: Tensor, sigma: Sequence[float] | float) -> Tensor:
    """Separable Gaussian blur with ``sigma`` in voxels per axis (replicate padding): ``[N, C, *S]`` -> same."""
    d = check_field(images, "images")
    sigma = (float(sigma),) * d if isinstance(sigma, (int, float)) else tuple(float(s) for s in sigma)
    n, c = images.shape[:2]
    out = images.reshape(n * c, 1, *images.shape[2:])
    for k, sg in enumerate(sigma):
        if sg <= 0:
            continue
        r = max(1, int(math.ceil(3 * sg)))
        x = torch.arange(-r, r + 1, device=images.device, dtype=images.dtype)
        kernel = torch.exp(-0.5 * (x / sg) ** 2)
        kernel = kernel / kernel.sum()
        view = [1, 1] + [1] * d
        view[2 + k] = -1
        pad = [0, 0] * d
        pad[2 * (d - 1 - k)] = pad[2 * (d - 1 - k) + 1] = r
        out = F.pad(out, pad, mode="replicate")
        conv = F.conv2d if d == 2 else F.conv3d
        out = conv(out, kernel.view(view))
    return out.reshape(images.shape)


def downsample(images: Tensor, spacing: Sequence[float] | float, factor: int = 2, *,
               smooth: bool = True) -> tuple[Tensor, tuple[float, ...]]:
    """One pyramid step: Gaussian blur (sigma = factor/2 voxels) then resample to ``(n - 1) // factor + 1``.

    For odd ``n`` and ``factor`` 2 the resampling is an exact stride-2 subsampling.

    Args:
        images: ``[N, C, *S]``; spacing: mm per axis.

    Returns:
        (``[N, C, *S']``, new spacing) with the same physical extent.
    """
    d = check_field(images, "images")
    spacing = as_spacing(spacing, d)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    shape = tuple(max((n - 1) // factor + 1, 2) for n in images.shape[2:])
    if smooth and factor > 1:
        images = gaussian_smooth(images, factor / 2)
    return resize(images, shape, spacing), resized_spacing(images.shape[2:], spacing, shape)


def pyramid(images: Tensor, spacing: Sequence[float] | float, levels: int = 3,
            factor: int = 2) -> list[tuple[Tensor, tuple[float, ...]]]:
    """Gaussian pyramid, finest first: ``[(images, spacing), (coarser, spacing'), ...]`` (``levels`` entries)."""
    d = check_field(images, "images")
    spacing = as_spacing(spacing, d)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    out = [(images, spacing)]
    for _ in range(levels - 1):
        out.append(downsample(*out[-1], factor=factor))
    return out
