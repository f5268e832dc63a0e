"""Option objects of :func:`~xreg_edu.groupwise.register_group`: what is optimised, with which transform levels, on
which schedule, until when. Frozen dataclasses that check their values when built and serialise with ``as_dict``.

    >>> xr.register_group(group, transform=["rigid", xr.TransformLevel("ffd", control_spacing=20)],
    ...                   objective=xr.ObjectiveOptions(bins=16), schedule=xr.ScheduleOptions(iterations=100),
    ...                   convergence=xr.ConvergenceOptions(tol=1e-5))
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._checks import check_bins

TRANSFORMS = ("rigid", "affine", "ffd", "svf", "dense")


def _choice(value, name: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _integer(value, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _number(value, name: str, *, positive: bool = False) -> None:
    """A finite real >= 0 (> 0 with ``positive``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > 0 if positive else value >= 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


def _each(value, name: str, check) -> None:
    """``None``, one value, or a tuple/list of values (one per transform level), each passing ``check``."""
    if value is None:
        return
    for v in (value if isinstance(value, (tuple, list)) else [value]):
        check(v, name)


def _spacing(value, name: str, allow_voxel: bool = False) -> None:
    """``None``, a positive finite mm value, or one per axis (or ``"voxel"`` with ``allow_voxel``)."""
    if value is None or (allow_voxel and value == "voxel"):
        return
    values = value if isinstance(value, (tuple, list)) else [value]
    if not values or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                             for v in values):
        extra = ", or 'voxel'" if allow_voxel else ""
        raise ValueError(f"{name} must be a positive finite spacing in mm (one value or one per axis{extra}), "
                         f"got {value!r}")


def _jsonable(value):
    if isinstance(value, Tensor):
        return f"tensor{list(value.shape)}"
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


class _Options:
    def as_dict(self) -> dict:
        """Field -> value, JSON-serialisable (tensors are recorded by their shape)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class ObjectiveOptions(_Options):
    """What is optimised: the objective's settings (X-CoReg, GMM, congealing, APE/CTE) and the regulariser.

    Args:
        bins: histogram bins L (>= 2; X-CoReg, APE, CTE).
        appearance, prior, min_prob, lookup, init_posterior, warmup, estep_histogram: X-CoReg options (see
            :class:`~xreg_edu.groupwise.objectives.XCoReg`); ``prior`` is ``"global"`` or an atlas ``[K, *S]`` and
            ``init_posterior`` a ``[K, *S]`` template, both on the images' grid.
        gmm_init: GMM initialisation, ``"random"``, ``"kmeans"`` or ``"symmetric"`` (official).
        kernel_sigma: congealing Parzen width (z-score units, > 0).
        regularization: regulariser of the non-linear levels, ``"bending"`` or ``"membrane"`` (weight: the level's
            ``alpha``).
        normalize: z-score every image first (the histogram methods are invariant; CG/GMM/CTE need it).
    """

    bins: int = 32
    appearance: str = "hist"
    prior: str | Tensor = field(default="global", compare=False)
    min_prob: float = 1e-3
    lookup: str = "hard"
    init_posterior: Tensor | None = field(default=None, compare=False)
    warmup: int = 0
    estep_histogram: str = "spline"
    gmm_init: str = "random"
    kernel_sigma: float = 1.0
    regularization: str = "bending"
    normalize: bool = True

    def __eq__(self, other) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        same = (lambda a, b: isinstance(b, Tensor) and a.shape == b.shape and bool(torch.equal(a, b.to(a.device)))
                if isinstance(a, Tensor) else not isinstance(b, Tensor) and a == b)
        return all(same(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self))

    def __post_init__(self) -> None:
        check_bins(self.bins)
        _choice(self.appearance, "appearance", ("hist", "gauss"))
        if not isinstance(self.prior, Tensor):
            _choice(self.prior, "prior", ("global",))
        _number(self.min_prob, "min_prob")
        _choice(self.lookup, "lookup", ("hard", "spline"))
        if self.init_posterior is not None and not isinstance(self.init_posterior, Tensor):
            raise TypeError(f"init_posterior must be a tensor [K, *S] or None, got {type(self.init_posterior).__name__}")
        _integer(self.warmup, "warmup", 0)
        _choice(self.estep_histogram, "estep_histogram", ("spline", "hard"))
        _choice(self.gmm_init, "gmm_init", ("random", "kmeans", "symmetric"))
        _number(self.kernel_sigma, "kernel_sigma", positive=True)
        _choice(self.regularization, "regularization", ("bending", "membrane"))
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be True or False, got {self.normalize!r}")


@dataclass(frozen=True)
class TransformLevel(_Options):
    """One transform level (levels are optimised one after the other, e.g. rigid then FFD).

    Args:
        kind: ``"rigid" | "affine" | "ffd" | "svf" | "dense"``.
        alpha: weight of the regulariser (:attr:`ObjectiveOptions.regularization`; summed over the group) of a
            non-linear level; default per kind (``xreg_edu.groupwise.api.DEFAULTS``: FFD 0.01, SVF 0.03).
        control_spacing: FFD control-point spacing in mm, one value or one per axis (default 1/8 of the largest
            extent).
        velocity_spacing: SVF velocity lattice spacing in mm (default 1/8 of the largest extent; ``"voxel"``: one
            vector per voxel); the lattice is linearly interpolated to the image grid.
        svf_steps: scaling-and-squaring steps of an SVF level.
    """

    kind: str
    alpha: float | None = None
    control_spacing: float | tuple[float, ...] | None = None
    velocity_spacing: float | tuple[float, ...] | str | None = None
    svf_steps: int = 7

    def __post_init__(self) -> None:
        if self.kind not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.kind!r}; choose from {TRANSFORMS}")
        if self.alpha is not None:
            _number(self.alpha, "alpha")
        _spacing(self.control_spacing, "control_spacing")
        _spacing(self.velocity_spacing, "velocity_spacing", allow_voxel=True)
        _integer(self.svf_steps, "svf_steps", 0)
        for name, kinds in (("alpha", ("ffd", "svf", "dense")), ("control_spacing", ("ffd",)),
                            ("velocity_spacing", ("svf",))):
            if getattr(self, name) is not None and self.kind not in kinds:
                raise ValueError(f"{name} applies to {' / '.join(kinds)} levels only, not to a {self.kind} level")
        for name in ("control_spacing", "velocity_spacing"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))


def parse_transform(spec, **fields) -> tuple[TransformLevel, ...]:
    """Transform levels from ``"rigid"``, ``"rigid+ffd"``, a :class:`TransformLevel` or a list of names and levels.

    ``fields`` (``alpha``, ``control_spacing``, ``velocity_spacing``, ``svf_steps``) are given to each level named
    by a string that uses them, e.g. ``parse_transform("rigid+ffd", control_spacing=20)``.
    """
    if isinstance(spec, str):
        items = [t.strip() for t in spec.replace(",", "+").split("+") if t.strip()]
    elif isinstance(spec, TransformLevel):
        items = [spec]
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        raise TypeError(f"transform must be a string, a TransformLevel or a list of them, got {type(spec).__name__}")
    if not items:
        raise ValueError("transform names no level")
    uses = {"alpha": ("ffd", "svf", "dense"), "control_spacing": ("ffd",), "velocity_spacing": ("svf",),
            "svf_steps": ("svf",)}
    unknown = set(fields) - set(uses)
    if unknown:
        raise TypeError(f"parse_transform got unknown level field(s) {sorted(unknown)}; choose from {sorted(uses)}")
    levels = []
    for item in items:
        if isinstance(item, str):
            if item not in TRANSFORMS:
                raise ValueError(f"unknown transform {item!r}; choose from {TRANSFORMS}")
            item = TransformLevel(item, **{k: v for k, v in fields.items() if v is not None and item in uses[k]})
        elif not isinstance(item, TransformLevel):
            raise TypeError(f"a transform level must be a name or a TransformLevel, got {item!r} "
                            "(e.g. TransformLevel('ffd', control_spacing=20))")
        levels.append(item)
    return tuple(levels)


@dataclass(frozen=True)
class ScheduleOptions(_Options):
    """How it is optimised: optimiser, step sizes and iteration budgets, image pyramid and voxel sampling.

    Args:
        optimizer: ``"adam"`` (default, as the official code) or ``"sgd"`` (plain gradient descent, step eta).
        step_size: eta, "mm per step" (angles and matrix entries are scaled by the grid radius, see
            :mod:`xreg_edu.groupwise.optim`); one value or one per transform level; default per kind
            (``xreg_edu.groupwise.api.DEFAULTS``).
        iterations: budget per stage (each level x pyramid scale); one value or one per transform level.
        pyramid: number of resolution levels (1 = full resolution only, 2 = half then full).
        refine_step: step-size factor (> 0) of each finer pyramid stage of a level relative to the coarser one.
        refine_iterations: budget of the pyramid stages finer than a level's coarsest (default: ``iterations``),
            one value or one per finer stage, coarse to fine (``pyramid - 1`` values): the coarse stages give the
            capture range, the finer ones only refine.
        sample_rate: fraction rho in (0, 1] of the overlap voxels used for the histograms each iteration; one value,
            or one per pyramid stage, coarsest first (e.g. ``(1.0, 1.0, 0.25)``: only the finest stage sampled). The
            sample must hold enough voxels for the histograms (see :func:`register_group`); a sampled stage stops on
            the parameter-motion test only (:class:`ConvergenceOptions`), its loss being noisy.
    """

    optimizer: str = "adam"
    step_size: float | tuple[float, ...] | None = None
    iterations: int | tuple[int, ...] | None = None
    pyramid: int = 1
    refine_step: float = 0.25
    refine_iterations: int | tuple[int, ...] | None = None
    sample_rate: float | tuple[float, ...] = 1.0

    def stage_rates(self) -> tuple[float, ...]:
        """Sample rate of each pyramid stage, coarsest first."""
        if isinstance(self.sample_rate, tuple):
            return tuple(float(r) for r in self.sample_rate)
        return (float(self.sample_rate),) * self.pyramid

    def stage_budgets(self, iterations: int) -> tuple[int, ...]:
        """Iteration budget of each pyramid stage of a level whose coarsest stage gets ``iterations``, coarsest
        first."""
        refine = self.refine_iterations
        if refine is None:
            refine = iterations
        finer = tuple(refine) if isinstance(refine, tuple) else (refine,) * (self.pyramid - 1)
        return (int(iterations),) + tuple(int(i) for i in finer)

    def __post_init__(self) -> None:
        _choice(self.optimizer, "optimizer", ("adam", "sgd"))
        _each(self.step_size, "step_size", lambda v, n: _number(v, n, positive=True))
        _each(self.iterations, "iterations", lambda v, n: _integer(v, n, 1))
        _integer(self.pyramid, "pyramid", 1)
        _number(self.refine_step, "refine_step", positive=True)
        _each(self.refine_iterations, "refine_iterations", lambda v, n: _integer(v, n, 1))
        if isinstance(self.refine_iterations, (tuple, list)) and len(self.refine_iterations) != self.pyramid - 1:
            raise ValueError(f"refine_iterations has {len(self.refine_iterations)} entries for the "
                             f"{self.pyramid - 1} finer stages of pyramid={self.pyramid} (one value, or one per "
                             "finer stage, coarse to fine)")
        rates = self.sample_rate if isinstance(self.sample_rate, (tuple, list)) else [self.sample_rate]
        if not rates or not all(isinstance(r, numbers.Real) and not isinstance(r, bool) and 0.0 < r <= 1.0
                                for r in rates):
            raise ValueError(f"sample_rate must be in (0, 1] (one value or one per pyramid stage), "
                             f"got {self.sample_rate!r}")
        if isinstance(self.sample_rate, (tuple, list)) and len(self.sample_rate) != self.pyramid:
            raise ValueError(f"sample_rate has {len(self.sample_rate)} entries for pyramid={self.pyramid} stages "
                             "(give one value, or one per pyramid stage, coarsest first)")
        for name in ("step_size", "iterations", "refine_iterations", "sample_rate"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass(frozen=True)
class ConvergenceOptions(_Options):
    """When a stage stops: at its iteration budget, or (checked every ``check_every`` iterations, not before
    ``min_iterations``) when it has converged, after ``decays`` halvings of the step size. Two tests:

    - motion: no point of the grid moved more than ``motion_tol`` voxels of the stage in the last ``window``
      iterations (parameter change in mm: translations and displacements as they are, angles and matrix entries
      times the grid radius, :mod:`xreg_edu.groupwise.optim`); robust to the noise of sampled histograms;
    - loss (stages with every voxel in the histograms only): the relative change of two consecutive
      ``window``-iteration loss averages is below ``tol``.

    Args:
        tol: relative loss tolerance (>= 0; 0 turns both tests off: every stage runs its budget).
        motion_tol: motion tolerance in voxels of the stage (>= 0; 0 turns the motion test off).
        window: window w (>= 1 iterations) of both tests.
        check_every: iterations between two tests (>= 1).
        min_iterations: no test before this many iterations of a stage (default ``window``; the loss test
            needs ``2 * window`` iterations in any case).
        decays: times the step size is halved at convergence before stopping (refinement).
    """

    tol: float = 1e-4
    motion_tol: float = 0.05
    window: int = 10
    check_every: int = 5
    min_iterations: int | None = None
    decays: int = 0

    def __post_init__(self) -> None:
        _number(self.tol, "tol")
        _number(self.motion_tol, "motion_tol")
        _integer(self.window, "window", 1)
        _integer(self.check_every, "check_every", 1)
        if self.min_iterations is not None:
            _integer(self.min_iterations, "min_iterations", 0)
        _integer(self.decays, "decays", 0)
