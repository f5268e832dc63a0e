"""Sampling images, label maps and vector fields at mm points (the only place grid_sample is called)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validate import as_spacing, check_field, check_vector_field
from .grid import points_to_normalized

_PADDING = ("zeros", "border")


def _batch(images: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
    n, m = images.shape[0], points.shape[0]
    if n == m:
        return images, points
    if m == 1:
        return images, points.expand(n, *points.shape[1:])
    if n == 1:
        return images.expand(m, *images.shape[1:]), points
    raise ValueError(f"images (N={n}) and points (N={m}) must have the same batch size (or one of them 1)")


def warp(images: Tensor, points: Tensor, spacing: Sequence[float] | float, *, mode: str = "bilinear",
         padding: str = "zeros") -> Tensor:
    """Pull-back warp: output voxel x of image j is ``images[j]`` interpolated at ``points[j, :, x]``.

    Args:
        images: ``[N, C, *S]`` float on a grid with ``spacing`` (mm per axis).
        points: ``[N|1, d, *S']`` mm in the centred frame of the image grid (channel k <-> axis k).
        mode: ``"bilinear"`` (trilinear in 3-D), ``"nearest"`` or ``"bicubic"`` (2-D only).
        padding: ``"zeros"`` or ``"border"`` (wrap-around is deliberately not offered).

    Returns:
        ``[N, C, *S']``.
    """
    d = check_field(images, "images")
    if check_vector_field(points, "points") != d:
        raise ValueError(f"{d}-D images need {d}-D points, got points {tuple(points.shape)}")
    if padding not in _PADDING:
        raise ValueError(f"padding must be one of {_PADDING}, got {padding!r}")
    if mode not in ("bilinear", "nearest", "bicubic"):
        raise ValueError(f"mode must be 'bilinear', 'nearest' or 'bicubic', got {mode!r}")
    spacing = as_spacing(spacing, d)
    images, points = _batch(images, points)
    grid = points_to_normalized(points.to(images.dtype), images.shape[2:], spacing)
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding, align_corners=True)


def warp_labels(labels: Tensor, points: Tensor, spacing: Sequence[float] | float, *, mode: str = "nearest") -> Tensor:
    """Warp integer label maps: nearest neighbour, or ``"linear"`` = bilinear one-hot then argmax.

    Args:
        labels: ``[N, 1, *S]`` integer label map.
        points: ``[N|1, d, *S']`` mm.

    Returns:
        ``[N, 1, *S']`` int64 (outside the FOV: nearest gives 0, linear the smallest label value).
    """
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dim() not in (4, 5) \
            or labels.shape[1] != 1:
        raise TypeError(f"labels must be an integer tensor [N, 1, *S], got "
                        f"{getattr(labels, 'dtype', type(labels))} {tuple(getattr(labels, 'shape', ()))}")
    dtype = points.dtype if points.is_floating_point() else torch.float32
    if mode == "nearest":
        out = warp(labels.to(dtype), points, spacing, mode="nearest", padding="zeros")
        return out.round().long()
    if mode == "linear":
        values = torch.unique(labels)
        onehot = (labels == values.view(1, -1, *([1] * (labels.dim() - 2)))).to(dtype)
        prob = warp(onehot, points, spacing, mode="bilinear", padding="zeros")
        return values[prob.argmax(dim=1, keepdim=True)].long()
    raise ValueError(f"mode must be 'nearest' or 'linear', got {mode!r}")


def sample_field(field: Tensor, points: Tensor, spacing: Sequence[float] | float) -> Tensor:
    """Interpolate a field at mm points, bilinear with border padding (used for composition).

    Args:
        field: ``[N, C, *S]`` (e.g. a displacement, C = d).
        points: ``[N|1, d, *S']`` mm.

    Returns:
        ``[N, C, *S']``.
    """
    return warp(field, points, spacing, mode="bilinear", padding="border")
