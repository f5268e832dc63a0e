"""What every groupwise objective receives each iteration, and the small interface the loop calls."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GroupSample:
    """The warped group of one iteration, flattened to voxels.

    Attributes:
        values: ``[N, P]`` warped (normalised) intensities of all P voxels of the working grid (carries the gradient).
        mask: ``[P] bool`` overlap of all fields of view AND the user mask (the region ``Omega^phi`` of the talk).
        index: ``[M] long`` indices of the voxels used for the histograms (the mask, randomly subsampled at rate rho).
        shape: spatial shape of the working grid.
        bounds: optional ``(lo [N], hi [N])`` fixed histogram range of each image (robust quantiles of the stage's
            images); ``None``: the detached min / max of the sample.
    """

    values: Tensor
    mask: Tensor
    index: Tensor
    shape: tuple[int, ...]
    bounds: tuple[Tensor, Tensor] | None = None

    @property
    def num_images(self) -> int:
        return self.values.shape[0]

    def sampled(self) -> Tensor:
        """``[N, M]`` intensities of the sampled voxels (differentiable)."""
        if self.index.numel() == self.values.shape[1]:      # every voxel selected (indices are sorted & unique)
            return self.values
        return self.values.index_select(1, self.index)

    def detach(self) -> "GroupSample":
        return GroupSample(self.values.detach(), self.mask, self.index, self.shape, self.bounds)


class GroupObjective:
    """Base class of a groupwise registration objective (minimised by the loop).

    The loop calls :meth:`reset` once per working resolution, then every iteration :meth:`step`, which runs the
    no-grad model update (E-step, EM ...) and returns the differentiable loss. Subclasses document their cost per
    iteration in N (images), K (classes), L (bins) and |Omega| (voxels).
    """

    name = "objective"

    def reset(self, num_images: int, shape: tuple[int, ...], *, device, dtype, generator: torch.Generator) -> None:
        """Start on a new working grid ``shape`` (called before the first iteration and when the resolution changes)."""
        self.num_images = num_images
        self.shape = tuple(shape)
        self.generator = generator

    def update(self, sample: GroupSample) -> None:
        """No-grad update of the nuisance parameters (posterior, prior, mixture ...) for the current warp."""

    def loss(self, sample: GroupSample) -> Tensor:
        """Differentiable loss for the current warp (nuisance parameters fixed)."""
        raise NotImplementedError

    def step(self, sample: GroupSample) -> Tensor:
        """One iteration's model update followed by the loss."""
        with torch.no_grad():
            self.update(sample.detach())
        return self.loss(sample)

    def state(self) -> dict:
        """Extra outputs for :class:`~xreg_edu.groupwise.result.RegistrationResult` (posterior, prior ...)."""
        return {}
