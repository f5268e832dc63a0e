"""The container :func:`~xreg_edu.groupwise.register_group` returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class RegistrationResult:
    """Outcome of a groupwise registration.

    Attributes:
        warped: ``[N, 1, *S]`` the input images (original intensities) resampled into the common space.
        transform: the fitted :class:`~xreg_edu.spatial.CompositeTransform` (common space -> image j, mm).
        points: ``[N, d, *S]`` mm, ``phi_j(x)`` on the common grid (what ``warped`` was sampled at).
        spacing: mm per axis of the common grid.
        posterior: ``[K, *S]`` class posterior gamma (X-CoReg: a free groupwise segmentation), or None.
        prior: ``[K]`` global class proportions or ``[K, *S]`` atlas prior, or None.
        history: per-iteration loss (all stages concatenated; X-CoReg: ``-sum_j I(U_j; Z)`` [+ alpha x reg]).
        stage_of_iteration: stage index of each history entry.
        stages: per stage: name, level, pyramid scale, shape, iterations, converged, seconds, step size.
        seconds: wall time of the optimisation (s).
        method: objective name; options: every setting used (for reproducibility).
        warnings: what went wrong on the way (e.g. an overlap collapse that restarted or stopped a stage); empty
            when nothing did. Each is also issued as a Python ``RuntimeWarning``.
    """

    warped: Tensor
    transform: torch.nn.Module
    points: Tensor
    spacing: tuple[float, ...]
    posterior: Tensor | None
    prior: Tensor | None
    history: list[float]
    stage_of_iteration: list[int]
    stages: list[dict]
    seconds: float
    method: str
    options: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        """Total number of iterations run."""
        return len(self.history)

    @property
    def converged(self) -> bool:
        """True when the last stage stopped by the convergence test (not by its iteration budget)."""
        return bool(self.stages and self.stages[-1]["converged"])

    @property
    def num_images(self) -> int:
        return self.warped.shape[0]

    def displacement(self) -> Tensor:
        """``[N, d, *S]`` mm: ``phi_j(x) - x`` on the common grid."""
        from ..spatial import identity_grid
        grid = identity_grid(self.points.shape[2:], self.spacing, device=self.points.device,
                             dtype=self.points.dtype)
        return self.points - grid

    def segmentation(self) -> Tensor | None:
        """``[*S] int64`` hard labels ``argmax_k gamma`` (None for methods without a posterior)."""
        return None if self.posterior is None else self.posterior.argmax(0)

    def apply(self, images: Tensor, *, mode: str = "bilinear") -> Tensor:
        """Resample other images / channels of the same group with the fitted transforms.

        Args:
            images: ``[N, C, *S]`` float on the input grid. Returns ``[N, C, *S]``.
        """
        from ..spatial import warp
        return warp(images.to(self.points.device, self.points.dtype), self.points, self.spacing, mode=mode)

    def apply_labels(self, labels: Tensor) -> Tensor:
        """Warp integer label maps ``[N, 1, *S]`` into the common space (nearest neighbour) -> int64."""
        from ..spatial import warp_labels
        return warp_labels(labels.to(self.points.device), self.points, self.spacing)

    def summary(self) -> str:
        """One line: method, iterations, time, final loss."""
        last = self.history[-1] if self.history else float("nan")
        return (f"{self.method}: N={self.num_images}, {self.iterations} iterations in {self.seconds:.2f} s, "
                f"final loss {last:.4f}, converged={self.converged}")

    def __repr__(self) -> str:
        return f"RegistrationResult({self.summary()})"
