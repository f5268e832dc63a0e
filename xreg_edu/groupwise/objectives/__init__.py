"""Groupwise objectives: X-CoReg and the four baselines of the talk's complexity table."""
from .ape import APE
from .base import GroupObjective, GroupSample
from .cg import Congealing
from .cte import CTE
from .gmm import GMM
from .xcoreg import XCoReg

OBJECTIVES = {"xcoreg": XCoReg, "ape": APE, "cte": CTE, "cg": Congealing, "gmm": GMM}

__all__ = ["APE", "CTE", "GMM", "Congealing", "GroupObjective", "GroupSample", "OBJECTIVES", "XCoReg"]
