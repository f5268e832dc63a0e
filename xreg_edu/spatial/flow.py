"""Dense flows: compositive composition, stationary velocity fields (scaling and squaring), inversion."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ._validate import as_spacing, check_vector_field
from .grid import identity_grid
from .warp import sample_field


def compose_displacements(first: Tensor, second: Tensor, spacing: Sequence[float] | float) -> Tensor:
    """Displacement of "apply ``first``, then ``second``": ``first + second ∘ (id + first)``.

    Args:
        first, second: ``[N, d, *S]`` mm on the same grid with ``spacing``.

    Returns:
        ``[N, d, *S]`` mm (``second`` sampled bilinearly with border padding).
    """
    d = check_vector_field(first, "first")
    check_vector_field(second, "second")
    if first.shape[2:] != second.shape[2:]:
        raise ValueError(f"first {tuple(first.shape)} and second {tuple(second.shape)} must share a grid")
    spacing = as_spacing(spacing, d)
    grid = identity_grid(first.shape[2:], spacing, device=first.device, dtype=first.dtype)
    return first + sample_field(second, grid + first, spacing)


def svf_exp(velocity: Tensor, spacing: Sequence[float] | float, steps: int = 7) -> Tensor:
    """Exponential of a stationary velocity field by scaling and squaring.

    ``u <- v / 2^steps``; then ``steps`` times ``u <- u + u ∘ (id + u)``. The inverse is ``svf_exp(-v)``.

    Args:
        velocity: ``[N, d, *S]`` mm.
        steps: number of squarings S >= 0 (default 7).

    Returns:
        ``[N, d, *S]`` displacement in mm.
    """
    d = check_vector_field(velocity, "velocity")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    spacing = as_spacing(spacing, d)
    grid = identity_grid(velocity.shape[2:], spacing, device=velocity.device, dtype=velocity.dtype)
    u = velocity / (2 ** steps)
    for _ in range(steps):
        u = u + sample_field(u, grid + u, spacing)
    return u


def invert_displacement(displacement: Tensor, spacing: Sequence[float] | float, iterations: int = 30) -> Tensor:
    """Approximate inverse of ``id + u`` by the fixed point ``w <- -u ∘ (id + w)``: ``[N, d, *S]`` -> ``[N, d, *S]``.

    Converges when the map is invertible and ``|grad u| < 1`` (small, smooth deformations).
    """
    d = check_vector_field(displacement, "displacement")
    spacing = as_spacing(spacing, d)
    grid = identity_grid(displacement.shape[2:], spacing, device=displacement.device, dtype=displacement.dtype)
    w = -displacement
    for _ in range(iterations):
        w = -sample_field(displacement, grid + w, spacing)
    return w
