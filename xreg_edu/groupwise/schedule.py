"""Default optimisation schedule per grid: what a user gets without tuning.

3-D: an image pyramid whose coarsest level has at most :data:`COARSE_EXTENT` voxels along its longest axis (a 2 mm
brain, 91 x 109 x 91, gets 3 levels, the coarsest at 8 mm; 1 mm, 182 x 218 x 182, gets 4). The coarse levels cost
1/8 and 1/64 of a full-resolution iteration and give the capture range (+-30 deg / +-30 mm at the talk's scale);
the E-step runs at each stage's resolution (the posterior is resampled between stages). Histograms use every voxel
(``sample_rate=1``): the sampled variant does not pay with the current convergence test (issue 11).
2-D: full resolution only (a 2-D iteration is cheap; the 2-D results of the book and tests are tuned for it).
"""
from __future__ import annotations

from typing import Sequence

from .options import ScheduleOptions

#: longest axis (voxels) of the coarsest 3-D pyramid level
COARSE_EXTENT = 40
#: most pyramid levels of the default 3-D schedule
MAX_LEVELS = 4


def pyramid_levels(shape: Sequence[int]) -> int:
    """Number of pyramid levels (1 = full resolution only) of the default schedule for a grid ``shape``."""
    shape = [int(n) for n in shape]
    if len(shape) < 3:
        return 1
    levels, extent = 1, max(shape)
    while extent > COARSE_EXTENT and levels < MAX_LEVELS:
        extent = (extent + 1) // 2
        levels += 1
    return levels


def default_schedule(shape: Sequence[int], spacing: Sequence[float] | None = None) -> ScheduleOptions:
    """The :class:`~xreg_edu.groupwise.ScheduleOptions` used when ``register_group`` gets ``schedule=None``.

    Args:
        shape: spatial grid ``[*S]`` of the group (2 or 3 axes).
        spacing: mm per axis (unused for now: the rule is in voxels, so that the cost of a level is fixed).
    """
    return ScheduleOptions(pyramid=pyramid_levels(shape))
