"""The one container every loader returns and every algorithm accepts."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass
class ImageGroup:
    """A group of N co-gridded images (and optional label maps) of one dimensionality.

    Attributes:
        images: ``[N, 1, H, W]`` or ``[N, 1, D, H, W]`` float32 intensities.
        spacing: voxel size in mm, one value per spatial tensor axis (same order as ``images.shape[2:]``).
        names: N display names, e.g. ``"patient07/T1"``.
        labels: optional ``[N, 1, *S]`` int64 label maps on the same grid (0 = background).
        label_names: optional mapping label value -> structure name.
        affines: optional ``[N, 4, 4]`` voxel-to-world matrices (NIfTI convention), kept for writing results.
        meta: free-form provenance (dataset name, slice index, simulated contrasts...).
    """

    images: Tensor
    spacing: tuple[float, ...]
    names: list[str]
    labels: Tensor | None = None
    label_names: dict[int, str] | None = None
    affines: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(self.images).__name__}")
        if self.images.dim() not in (4, 5) or self.images.shape[1] != 1:
            raise ValueError(f"images must be [N, 1, H, W] or [N, 1, D, H, W], got {tuple(self.images.shape)}")
        if not self.images.is_floating_point():
            raise TypeError(f"images must be floating point, got {self.images.dtype}")
        self.spacing = tuple(float(s) for s in self.spacing)
        if len(self.spacing) != self.dim or any(s <= 0 for s in self.spacing):
            raise ValueError(f"spacing {self.spacing} must hold {self.dim} positive values (mm per axis)")
        if len(self.names) != len(self):
            raise ValueError(f"{len(self.names)} names for {len(self)} images")
        if self.labels is not None and self.labels.shape != self.images.shape:
            raise ValueError(f"labels {tuple(self.labels.shape)} must match images {tuple(self.images.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def dim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.images.dim() - 2

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial grid size, ``images.shape[2:]``."""
        return tuple(self.images.shape[2:])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: str | torch.device) -> "ImageGroup":
        """Copy of the group with images and labels on ``device``."""
        labels = None if self.labels is None else self.labels.to(device)
        return replace(self, images=self.images.to(device), labels=labels)

    def subset(self, index: Sequence[int]) -> "ImageGroup":
        """The images at ``index`` (in that order) as a new group."""
        index = list(index)
        idx = torch.as_tensor(index, device=self.images.device)
        return replace(
            self,
            images=self.images[idx],
            names=[self.names[i] for i in index],
            labels=None if self.labels is None else self.labels[idx],
            affines=None if self.affines is None else self.affines[index],
        )

    def __repr__(self) -> str:
        lab = "" if self.labels is None else ", labels"
        return (f"ImageGroup(N={len(self)}, shape={self.shape}, spacing={self.spacing}, "
                f"names={self.names}{lab}, device={self.device})")
