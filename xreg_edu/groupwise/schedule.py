"""Default optimisation schedule per grid: what a user gets without tuning.

The coarse levels of an image pyramid give the capture range; the finer ones only refine, on a small budget
(:data:`REFINE_ITERATIONS`) with the step ``refine_step`` times smaller per level and the parameter-motion test of
:class:`~xreg_edu.groupwise.ConvergenceOptions` (its loss test cannot be trusted on sampled histograms). The E-step
runs at each stage's resolution (the posterior is resampled between stages).

- 3-D: the coarsest level has at most :data:`COARSE_EXTENT` voxels along its longest axis (a 2 mm brain,
  91 x 109 x 91, gets 3 levels, the coarsest at 8 mm; 1 mm, 182 x 218 x 182, gets 4). A stage with more than
  :data:`SAMPLE_VOXELS` voxels builds its histograms from a random sample of about that many (2 mm: rho = 0.15 at
  full resolution), an iteration of which costs little more than the warp and the E-step.
- 2-D: slices up to :data:`SINGLE_LEVEL_EXTENT_2D` pixels along the longest axis (the book's and the tests' 48-128 px
  slices) stay at full resolution only; larger ones (a full 218 x 182 slice) get a half-resolution level first, the
  full-resolution stage refining on :data:`REFINE_ITERATIONS_2D` iterations at :data:`REFINE_STEP_2D` of the step
  (chosen on patients that the benchmarks do not report, ``benchmarks/bench_schedule_2d.py``: a quarter-resolution
  level was faster but lost groups at the larger misalignments).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .options import ScheduleOptions

#: longest axis (voxels) of the coarsest 3-D pyramid level
COARSE_EXTENT = 40
#: most pyramid levels of the default 3-D schedule
MAX_LEVELS = 4
#: longest axis (pixels) of the largest 2-D grid registered at full resolution only
SINGLE_LEVEL_EXTENT_2D = 160
#: iteration budget of the full-resolution stage of a larger 2-D grid
REFINE_ITERATIONS_2D = 5
#: its step size relative to the half-resolution stage's
REFINE_STEP_2D = 1 / 16
#: voxels of the histogram sample of a large stage
SAMPLE_VOXELS = 2 ** 17
#: iteration budgets of the finer stages: the intermediate ones, then the finest
REFINE_ITERATIONS = (20, 10)


def pyramid_levels(shape: Sequence[int]) -> int:
    """Number of pyramid levels (1 = full resolution only) of the default schedule for a grid ``shape``."""
    shape = [int(n) for n in shape]
    if len(shape) < 3:
        return 2 if max(shape) > SINGLE_LEVEL_EXTENT_2D else 1
    levels, extent = 1, max(shape)
    while extent > COARSE_EXTENT and levels < MAX_LEVELS:
        extent = (extent + 1) // 2
        levels += 1
    return levels


def stage_shapes(shape: Sequence[int], levels: int) -> list[tuple[int, ...]]:
    """Grid of each pyramid level, coarsest first (as :func:`xreg_edu.spatial.downsample`)."""
    shapes = [tuple(int(n) for n in shape)]
    for _ in range(levels - 1):
        shapes.append(tuple(max((n - 1) // 2 + 1, 2) for n in shapes[-1]))
    return shapes[::-1]


def default_schedule(shape: Sequence[int], spacing: Sequence[float] | None = None) -> ScheduleOptions:
    """The :class:`~xreg_edu.groupwise.ScheduleOptions` used when ``register_group`` gets ``schedule=None``.

    Args:
        shape: spatial grid ``[*S]`` of the group (2 or 3 axes).
        spacing: mm per axis (unused: the rule is in voxels, so that the cost of a level is fixed).
    """
    levels = pyramid_levels(shape)
    if levels == 1:
        return ScheduleOptions()
    voxels = [int(torch.Size(s).numel()) for s in stage_shapes(shape, levels)]
    rates = tuple(1.0 if s == 0 else min(1.0, SAMPLE_VOXELS / v) for s, v in enumerate(voxels))
    if len(shape) < 3:
        return ScheduleOptions(pyramid=levels, refine_iterations=REFINE_ITERATIONS_2D, refine_step=REFINE_STEP_2D,
                               sample_rate=rates)
    refine = (REFINE_ITERATIONS[0],) * (levels - 2) + (REFINE_ITERATIONS[1],)
    return ScheduleOptions(pyramid=levels, refine_iterations=refine, sample_rate=rates)
