"""xreg_edu: multi-modality groupwise image registration for teaching and research.

Importing the package is cheap: submodules load on first use (``xr.density``, ``xr.register_group`` ...).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "ImageGroup": "group",
    # information measures (eq. 1-6)
    "entropy": "info",
    "mutual_information": "info",
    "normalized_mutual_information": "info",
    "conditional_entropy": "info",
    "total_correlation": "info",
    "gaussian_total_correlation": "info",
    "posterior_information": "info",
    "labels_to_posterior": "info",
    "x_metric": "info",
    "x_metric_terms": "info",
    "x_objective": "info",
    # evaluation
    "group_registration_error": "evaluate",
    "group_warping_index": "evaluate",
    "group_dice": "evaluate",
    "assd": "evaluate",
    "folding_percentage": "evaluate",
    # simulation
    "misalign": "simulate",
    # data
    "load_dataset": "datasets",
    "list_datasets": "datasets",
    "load_nifti_group": "io",
    # registration (Algorithm 1 and baselines)
    "register_group": "groupwise",
    "ObjectiveOptions": "groupwise",
    "TransformLevel": "groupwise",
    "ScheduleOptions": "groupwise",
    "ConvergenceOptions": "groupwise",
    # chapters
    "setup_chapter": "_env",
    "show_versions": "_env",
}
_SUBMODULES = {
    "cli", "datasets", "density", "evaluate", "group", "groupwise", "info", "io", "plotting",
    "simulate", "spatial", "vae", "widgets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'xreg_edu' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)
