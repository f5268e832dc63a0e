"""Groupwise registration: X-CoReg (Algorithm 1) and the baselines CG, APE, CTE, GMM in one loop.

    >>> import xreg_edu as xr
    >>> result = xr.register_group(group, method="xcoreg", transform="rigid", num_classes=4)
    >>> result.warped, result.posterior, result.history
"""
from .api import DEFAULTS, METHODS, MOVED, TRANSFORMS, make_objective, register_group
from .estep import e_step, log_posterior, random_posterior
from .options import ConvergenceOptions, ObjectiveOptions, ScheduleOptions, TransformLevel, parse_transform
from .objectives import APE, CTE, GMM, OBJECTIVES, Congealing, GroupObjective, GroupSample, XCoReg
from .result import RegistrationResult
from .timeseries import consensus_labels, frame_dice, motion_correct, motion_report, region_curve

__all__ = [
    "APE", "CTE", "DEFAULTS", "GMM", "METHODS", "MOVED", "OBJECTIVES", "TRANSFORMS", "Congealing", "GroupObjective",
    "ConvergenceOptions", "ObjectiveOptions", "ScheduleOptions", "TransformLevel", "parse_transform",
    "GroupSample", "RegistrationResult", "XCoReg", "e_step", "log_posterior", "make_objective", "random_posterior",
    "register_group", "consensus_labels", "frame_dice", "motion_correct", "motion_report", "region_curve",
]
