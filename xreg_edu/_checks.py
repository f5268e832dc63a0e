"""Input validation shared by every public function: clear, specific errors instead of wrong numbers."""
from __future__ import annotations

import torch
from torch import Tensor


def check_finite(x: Tensor, name: str) -> None:
    """Raise ValueError if ``x`` holds NaN or Inf."""
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")


def check_image(x: Tensor, name: str = "image") -> None:
    """A single image ``[1, 1, *S]`` (2-D or 3-D), floating point and finite."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (4, 5) or x.shape[0] != 1 or x.shape[1] != 1:
        raise ValueError(f"{name} must have shape [1, 1, H, W] or [1, 1, D, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    check_finite(x, name)


def check_group(images: Tensor, name: str = "images", min_n: int = 2) -> None:
    """A group ``[N, 1, *S]`` with N >= ``min_n``, floating point and finite."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() not in (4, 5) or images.shape[1] != 1:
        raise ValueError(f"{name} must have shape [N, 1, H, W] or [N, 1, D, H, W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {images.dtype}")
    if images.shape[0] < min_n:
        raise ValueError(f"{name} must hold a group of N >= {min_n} images, got N = {images.shape[0]}")
    check_finite(images, name)


def check_same_shape(a: Tensor, b: Tensor, names: tuple[str, str] = ("x", "y")) -> None:
    """Raise ValueError unless ``a`` and ``b`` have identical shapes."""
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} must have the same shape")


def check_mask(mask: Tensor | None, shape: tuple[int, ...], name: str = "mask") -> Tensor | None:
    """Validate an optional mask broadcastable to spatial ``shape``; returns it as a bool tensor of that shape."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask)
    spatial = tuple(mask.shape[-len(shape):]) if mask.dim() >= len(shape) else tuple(mask.shape)
    if spatial != tuple(shape) or mask.numel() != torch.Size(shape).numel():
        raise ValueError(f"{name} of shape {tuple(mask.shape)} does not match the spatial shape {tuple(shape)}")
    mask = mask.reshape(shape).bool()
    if not mask.any():
        raise ValueError(f"{name} is empty: it selects no voxel")
    return mask


def check_bins(bins: int) -> None:
    """The number of histogram bins must be an integer >= 2."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")


def check_classes(num_classes: int) -> None:
    """The number of classes K must be an integer >= 2."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer K >= 2, got {num_classes!r}")
