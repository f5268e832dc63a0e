"""Spatiotemporal mode: groupwise motion correction of a time series (cine / perfusion) and its read-outs.

Every frame is one member of the group, so all frames are registered at once into their mean space (no reference
frame is privileged). The read-outs the book plots:

- :func:`region_curve`: the mean intensity of a region in every frame (a perfusion-style time-intensity curve); with
  motion the region samples different tissue from frame to frame and the curve is jagged, after correction it is
  smooth.
- :func:`frame_dice`: the overlap of each frame's label map with the group's consensus (majority vote) map.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..group import ImageGroup
from .api import register_group
from .result import RegistrationResult


def region_curve(images: Tensor, region: Tensor) -> Tensor:
    """Mean intensity of ``region`` in every frame.

    Args:
        images: ``[T, 1, *S]`` frames (e.g. before or after registration).
        region: ``[*S]`` bool mask or non-negative weights (e.g. a label map ``== k``), or ``[T, 1, *S]`` per frame.

    Returns:
        ``[T]`` (same dtype as ``images``).
    """
    if images.dim() not in (4, 5) or images.shape[1] != 1:
        raise ValueError(f"images must be [T, 1, *S], got {tuple(images.shape)}")
    w = region.to(images.dtype)
    if w.shape == images.shape[2:]:
        w = w.expand(images.shape[0], 1, *images.shape[2:])
    elif w.shape != images.shape:
        raise ValueError(f"region {tuple(region.shape)} must be [*S] or [T, 1, *S] for images {tuple(images.shape)}")
    total = w.flatten(1).sum(1)
    if bool((total <= 0).any()):
        raise ValueError("region is empty in at least one frame")
    return (images * w).flatten(1).sum(1) / total


def consensus_labels(labels: Tensor) -> Tensor:
    """Per-voxel majority vote over the frames: ``[T, 1, *S]`` int -> ``[*S]`` int64."""
    values = torch.unique(labels)
    counts = torch.stack([(labels == v).sum(0)[0] for v in values])
    return values[counts.argmax(0)]


def frame_dice(labels: Tensor, reference: Tensor | None = None, classes: Sequence[int] | None = None) -> Tensor:
    """Dice of every frame's label map with a reference map, averaged over the foreground classes.

    Args:
        labels: ``[T, 1, *S]`` integer label maps in one space (e.g. warped into the common space).
        reference: ``[*S]`` reference labels (default: :func:`consensus_labels` of ``labels``).
        classes: foreground labels to average over (default: every non-zero label present).

    Returns:
        ``[T]`` Dice per frame (a class absent from both maps is skipped).
    """
    if labels.is_floating_point() or labels.dim() not in (4, 5) or labels.shape[1] != 1:
        raise ValueError(f"labels must be an integer tensor [T, 1, *S], got {labels.dtype} {tuple(labels.shape)}")
    ref = consensus_labels(labels) if reference is None else reference.to(labels.device)
    if classes is None:
        classes = [int(c) for c in torch.unique(torch.cat([labels.flatten(), ref.flatten()])) if c != 0]
    if not classes:
        raise ValueError("no foreground class to compare")
    out = []
    for t in range(labels.shape[0]):
        lab = labels[t, 0]
        scores = []
        for c in classes:
            a, b = lab == c, ref == c
            denom = int(a.sum()) + int(b.sum())
            if denom:
                scores.append(2.0 * int((a & b).sum()) / denom)
        out.append(sum(scores) / len(scores) if scores else float("nan"))
    return torch.tensor(out, dtype=torch.float32)


def motion_correct(frames: Tensor | ImageGroup, *, method: str = "xcoreg", transform="rigid", num_classes: int = 4,
                   **kw) -> RegistrationResult:
    """Groupwise motion correction: register all frames of a time series at once (see :func:`register_group`).

    Args:
        frames: ``[T, 1, *S]`` frames or an :class:`ImageGroup` whose members are the frames.
        method, transform, num_classes, **kw: passed to :func:`register_group` (default rigid X-CoReg, K = 4).

    Returns:
        :class:`RegistrationResult` (``warped`` = the motion-corrected frames).
    """
    return register_group(frames, method=method, transform=transform, num_classes=num_classes, **kw)


def motion_report(frames: Tensor, result: RegistrationResult, region: Tensor, labels: Tensor | None = None,
                  classes: Sequence[int] | None = None) -> dict:
    """Before/after read-outs of a motion correction.

    Args:
        frames: ``[T, 1, *S]`` the input frames; result: :func:`motion_correct` of them.
        region: ``[*S]`` region of interest in the common space (for the intensity curves).
        labels: optional ``[T, 1, *S]`` per-frame label maps in the input frames' spaces.
        classes: foreground classes for the overlap.

    Returns:
        dict with ``curve_before``/``curve_after`` ``[T]``, their total variation ``roughness_before/after``
        (sum of absolute frame-to-frame changes) and, with labels, ``dice_before``/``dice_after`` ``[T]``.
    """
    before = region_curve(frames.to(result.warped.device), region)
    after = region_curve(result.warped, region)
    out = {"curve_before": before, "curve_after": after,
           "roughness_before": float((before[1:] - before[:-1]).abs().sum()),
           "roughness_after": float((after[1:] - after[:-1]).abs().sum())}
    if labels is not None:
        out["dice_before"] = frame_dice(labels, classes=classes)
        out["dice_after"] = frame_dice(result.apply_labels(labels), classes=classes)
    return out
