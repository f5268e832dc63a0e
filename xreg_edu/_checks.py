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


def check_field(x: Tensor, name: str = "field", channels: int | None = None, min_n: int = 1) -> int:
    """A batch ``[N, C, *S]`` with 2 or 3 spatial axes (``C == channels`` if given, N >= ``min_n``), floating
    point and finite; returns the number d of spatial axes."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    c = "C" if channels is None else channels
    if x.dim() not in (4, 5) or (channels is not None and x.shape[1] != channels):
        raise ValueError(f"{name} must have shape [N, {c}, H, W] or [N, {c}, D, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[0] < min_n:
        raise ValueError(f"{name} must hold a group of N >= {min_n} images, got N = {x.shape[0]}")
    check_finite(x, name)
    return x.dim() - 2


def check_group(images: Tensor, name: str = "images", min_n: int = 2) -> int:
    """A group ``[N, 1, *S]`` with N >= ``min_n``, floating point and finite; returns d."""
    return check_field(images, name, channels=1, min_n=min_n)


def check_same_shape(a: Tensor, b: Tensor, names: tuple[str, str] = ("x", "y")) -> None:
    """Raise ValueError unless ``a`` and ``b`` have identical shapes."""
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} must have the same shape")


def check_mask(mask: Tensor | None, shape: tuple[int, ...], name: str = "mask") -> Tensor | None:
    """Validate an optional mask broadcastable to spatial ``shape``; returns it as a bool tensor of that shape."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask)
    if mask.is_floating_point() and not torch.isfinite(mask).all():
        raise ValueError(f"{name} contains non-finite values (NaN or Inf): give a boolean mask or 0/1 values")
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


def check_seed(seed) -> None:
    """A random seed must be an integer in [0, 2**63)."""
    import numbers
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")


def check_class_maps(maps: Tensor, name: str, num_classes: int, shape: tuple[int, ...] | None = None) -> None:
    """Class probability maps ``[K, *S]`` (2 or 3 spatial axes, ``S == shape`` if given): finite, >= 0, and a
    positive total at every voxel (they are renormalised over K)."""
    if not isinstance(maps, Tensor) or not maps.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor [K, *S], got "
                        f"{maps.dtype if isinstance(maps, Tensor) else type(maps).__name__}")
    if maps.dim() not in (3, 4) or maps.shape[0] != num_classes:
        raise ValueError(f"{name} must have shape [K = {num_classes}, *S] (one map per class, 2 or 3 spatial axes), "
                         f"got {tuple(maps.shape)}")
    if shape is not None and tuple(maps.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} of shape {tuple(maps.shape)} is not on the images' grid {tuple(shape)}: resample "
                         f"it first (e.g. xr.spatial.resize) to [{num_classes}, {', '.join(map(str, shape))}]")
    check_finite(maps, name)
    if (maps < 0).any():
        raise ValueError(f"{name} holds negative values (min {float(maps.min()):.3g}): class probabilities must be "
                         ">= 0")
    empty = int((maps.sum(0) <= 0).sum())
    if empty:
        raise ValueError(f"{name} sums to 0 over the classes at {empty} voxel(s): give every voxel a positive "
                         "probability for some class")
