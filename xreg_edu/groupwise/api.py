"""``register_group``: the public entry point of groupwise registration (X-CoReg and the baselines)."""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import Tensor

from .._env import is_quick
from ..density import robust_range
from .._checks import check_class_maps, check_classes, check_group, check_mask, check_seed
from ..group import ImageGroup
from .loop import LoopOptions, Stage, run_stages
from .objectives import OBJECTIVES, XCoReg, APE, CTE, Congealing, GMM
from .options import (TRANSFORMS, ConvergenceOptions, ObjectiveOptions, ScheduleOptions, TransformLevel,
                      parse_transform)
from .result import RegistrationResult
from .schedule import default_schedule, stage_shapes

METHODS = tuple(OBJECTIVES)

#: the keywords of the former 37-keyword signature and the option object that now holds each
MOVED = {
    **dict.fromkeys(("bins", "appearance", "prior", "min_prob", "lookup", "init_posterior", "warmup",
                     "estep_histogram", "gmm_init", "kernel_sigma", "regularization", "normalize"), "objective"),
    **dict.fromkeys(("optimizer", "step_size", "iterations", "pyramid", "refine_step", "sample_rate"), "schedule"),
    **dict.fromkeys(("tol", "window", "check_every", "min_iterations", "decays"), "convergence"),
    **dict.fromkeys(("alpha", "control_spacing", "velocity_spacing", "svf_steps"), "transform"),
}
_OPTION_CLASSES = {"objective": ObjectiveOptions, "schedule": ScheduleOptions, "convergence": ConvergenceOptions}
#: the sampled histograms of a stage hold at least min(all voxels, this x bins) voxels
MIN_SAMPLES_PER_BIN = 8

#: default step size eta (mm per step, see :mod:`.optim`) and iteration budget per stage, per transform kind
DEFAULTS = {
    "rigid": {"step_size": 1.0, "iterations": 300, "alpha": 0.0},
    "affine": {"step_size": 0.5, "iterations": 200, "alpha": 0.0},
    "ffd": {"step_size": 0.3, "iterations": 200, "alpha": 0.01},
    "svf": {"step_size": 0.5, "iterations": 200, "alpha": 0.03},
    "dense": {"step_size": 0.1, "iterations": 200, "alpha": 0.1},
}


def _per_level(value, n: int, name: str, default: Sequence) -> list:
    if value is None:
        return list(default)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} transform levels")
        return list(value)
    return [value] * n


def make_objective(method: str, num_classes: int = 4, options: ObjectiveOptions | None = None):
    """Build the objective for ``method`` (``"xcoreg" | "ape" | "cte" | "cg" | "gmm"``) from ``options``."""
    o = options if options is not None else ObjectiveOptions()
    if method == "xcoreg":
        return XCoReg(num_classes, o.bins, appearance=o.appearance, prior=o.prior, min_prob=o.min_prob,
                      lookup=o.lookup, init_posterior=o.init_posterior, warmup=o.warmup,
                      estep_histogram=o.estep_histogram)
    if method == "ape":
        return APE(o.bins)
    if method == "cte":
        return CTE(o.bins)
    if method == "cg":
        return Congealing(o.kernel_sigma)
    if method == "gmm":
        return GMM(num_classes, init=o.gmm_init)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def _normalise(images: Tensor, mask: Tensor | None) -> Tensor:
    """Winsorised z-score of each image over its (masked) voxels: ``[N, 1, *S] -> [N, 1, *S]``.

    Values beyond the robust range (the 0.1 % and 99.9 % quantiles, widened by 10 % as the loop's histogram bounds)
    are clipped before the mean and standard deviation are taken, so one outlier voxel cannot take the scale (a plain
    z-score squeezed the rest of the image into a few bins or kernel widths); clean images are left unclipped.
    Constant images are only centred. Each image is first divided by its largest magnitude, so huge values (1e300)
    cannot overflow the variance.
    """
    view = (-1,) + (1,) * (images.dim() - 1)
    flat = images.reshape(images.shape[0], -1)
    scale = flat.abs().amax(1).clamp_min(torch.finfo(images.dtype).tiny)
    images = images / scale.view(view)
    flat = images.reshape(images.shape[0], -1)
    sel = flat if mask is None else flat[:, mask.reshape(-1)]
    lo, hi = robust_range(sel)
    margin = 0.1 * (hi - lo)
    images = torch.maximum(torch.minimum(images, (hi + margin).view(view)), (lo - margin).view(view))
    sel = sel.clamp(lo - margin, hi + margin)
    mean = sel.mean(1)
    std = sel.std(1)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return (images - mean.view(view)) / std.view(view)


def _option(value, name: str):
    cls = _OPTION_CLASSES[name]
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__} (e.g. {name}=xr.{cls.__name__}(...)), "
                        f"got {type(value).__name__}")
    return value


def register_group(images: Tensor | ImageGroup, method: str = "xcoreg",
                   transform: str | TransformLevel | Sequence = "rigid", *, num_classes: int = 4,
                   mask: Tensor | None = None, spacing: Sequence[float] | None = None, seed: int = 0, device=None,
                   progress: bool = False, callback=None, objective: ObjectiveOptions | None = None,
                   schedule: ScheduleOptions | None = None, convergence: ConvergenceOptions | None = None,
                   **moved) -> RegistrationResult:
    """Groupwise registration of N images into their group-mean common space.

    Args:
        images: ``[N, 1, H, W]`` / ``[N, 1, D, H, W]`` float tensor, or an :class:`~xreg_edu.group.ImageGroup`
            (its spacing is used unless ``spacing`` is given). N >= 2, finite values.
        method: ``"xcoreg"`` (Algorithm 1, default), ``"ape"``, ``"cte"``, ``"cg"`` (congealing) or ``"gmm"``.
        transform: ``"rigid" | "affine" | "ffd" | "svf" | "dense"``, several levels optimised in turn
            (``"rigid+ffd"``), or :class:`~xreg_edu.groupwise.options.TransformLevel` objects and names, e.g.
            ``["affine", TransformLevel("ffd", control_spacing=20), TransformLevel("ffd", control_spacing=10)]``.
        num_classes: K (X-CoReg classes / GMM components), >= 2.
        mask: optional ``[*S]`` foreground mask in the common space (AND-ed with the overlap of the FOVs). Keep a
            margin around the object: with a mask that hugs it, the images can raise the objective by sliding
            background into the mask.
        spacing: mm per axis (default: the group's, or 1 mm).
        seed: integer in [0, 2**63) seeding the random posterior initialisation and the voxel sampling (same seed
            -> same result).
        device: where to compute (default: the images' device).
        progress: show a tqdm progress bar.
        callback: optional ``f(stage, iteration, transform, loss, state)`` called after every step, ``state`` being
            the objective's current outputs (X-CoReg: ``{"posterior": [K,*S], "prior": ...}``), e.g. for animations.
        objective: :class:`~xreg_edu.groupwise.options.ObjectiveOptions` (bins, X-CoReg/GMM/CG settings,
            regulariser, normalisation).
        schedule: :class:`~xreg_edu.groupwise.options.ScheduleOptions` (optimiser, step sizes, iterations,
            pyramid, voxel sampling); default ``groupwise.schedule.default_schedule`` of the grid (3-D and
            2-D slices over 160 px: an image pyramid whose finer levels only refine, large stages sampled; smaller
            2-D slices: full resolution only). The sample of each stage must hold at least min(all its voxels,
            8 x bins) voxels.
        convergence: :class:`~xreg_edu.groupwise.options.ConvergenceOptions` (when a stage stops).
        **moved: the former keywords (``iterations=`` ...) raise a TypeError naming the option object that holds
            them now (``MOVED``).

    Returns:
        :class:`~xreg_edu.groupwise.result.RegistrationResult`; its ``options`` record every setting used.
    """
    for key in moved:
        if key in MOVED:
            where = MOVED[key]
            cls = "TransformLevel" if where == "transform" else _OPTION_CLASSES[where].__name__
            raise TypeError(f"register_group() no longer takes {key}=: pass {where}=xr.{cls}({key}=...)"
                            + (" (or a list of them, one per level)" if where == "transform" else ""))
        raise TypeError(f"register_group() got an unexpected keyword argument {key!r}")
    objective = _option(objective, "objective")
    if schedule is not None:
        schedule = _option(schedule, "schedule")
    convergence = _option(convergence, "convergence")
    group_spacing = None
    if isinstance(images, ImageGroup):
        group_spacing = images.spacing
        images = images.images
    check_group(images, "images", min_n=2)
    images = images.detach()              # the registration never differentiates through its inputs
    if method not in OBJECTIVES:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    check_classes(num_classes)
    check_seed(seed)
    dim = images.dim() - 2
    shape = tuple(images.shape[2:])
    if spacing is None:
        spacing = group_spacing if group_spacing is not None else (1.0,) * dim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != dim or any(not s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} must hold {dim} positive values (mm per axis)")
    if schedule is None:                  # the default schedule of this grid (3-D: a pyramid; 2-D: full resolution)
        schedule = default_schedule(shape, spacing)
    if device is not None:
        images = images.to(device)
    device = images.device
    images = images.float() if images.dtype not in (torch.float32, torch.float64) else images
    if mask is not None:
        mask = check_mask(torch.as_tensor(mask, device=device).detach(), shape)
    if method == "xcoreg":
        for name in ("prior", "init_posterior"):
            value = getattr(objective, name)
            if isinstance(value, Tensor):
                check_class_maps(value, name, num_classes, shape)
    n = images.shape[0]
    rates = schedule.stage_rates()
    for s, (rate, total) in enumerate(zip(rates, stage_shapes(shape, schedule.pyramid))):
        total = int(torch.Size(total).numel())
        need = min(total, MIN_SAMPLES_PER_BIN * objective.bins)
        if rate * total < need:
            which = "coarsest stage" if s == 0 else f"pyramid stage {s} (coarsest = 0)"
            raise ValueError(f"sample_rate={schedule.sample_rate!r} samples {rate * total:.3g} of the "
                             f"{total} voxels of the {which}; the histograms need >= {need} "
                             f"({MIN_SAMPLES_PER_BIN} x bins): use ScheduleOptions(sample_rate >= {need / total:.3g}) "
                             "there or fewer pyramid levels")

    levels = parse_transform(transform)
    kinds = [lv.kind for lv in levels]
    steps = _per_level(schedule.step_size, len(levels), "step_size", [DEFAULTS[k]["step_size"] for k in kinds])
    iters = _per_level(schedule.iterations, len(levels), "iterations", [DEFAULTS[k]["iterations"] for k in kinds])
    alphas = [DEFAULTS[lv.kind]["alpha"] if lv.alpha is None else float(lv.alpha) for lv in levels]
    budgets = [schedule.stage_budgets(i) for i in iters]          # per level: one budget per stage, coarsest first
    if is_quick():
        budgets = [[max(10, int(i) // 4) for i in b] for b in budgets]

    from ..spatial import CompositeTransform, identity_grid, make_transform, warp
    modules = []
    for lv in levels:
        if lv.kind == "svf":
            vs = lv.velocity_spacing
            if vs is None:
                vs = max((m - 1) * s for m, s in zip(shape, spacing)) / 8
            if vs != "voxel":        # velocity on a coarser lattice, linearly interpolated to the image grid
                from ..spatial import SVFTransform, resized_spacing
                vs = (float(vs),) * dim if isinstance(vs, (int, float)) else tuple(float(v) for v in vs)
                vshape = tuple(max(3, int(round((m - 1) * s / v)) + 1) for m, s, v in zip(shape, spacing, vs))
                modules.append(SVFTransform(n, vshape, resized_spacing(shape, spacing, vshape), lv.svf_steps))
                continue
            modules.append(make_transform("svf", n, shape, spacing, steps=lv.svf_steps))
        elif lv.kind == "ffd":
            modules.append(make_transform("ffd", n, shape, spacing, control_spacing=lv.control_spacing))
        else:
            modules.append(make_transform(lv.kind, n, shape, spacing))
    composite = CompositeTransform(modules).to(device=device, dtype=images.dtype)

    # coarse-to-fine: a finer stage of the same level starts near the solution, so its step is refine_step x smaller
    pyr, refine = schedule.pyramid, schedule.refine_step
    stages = [Stage(li, s, budgets[li][pyr - 1 - s],
                    float(steps[li]) * refine ** (pyr - 1 - s), name=f"{kinds[li]}@1/{2 ** s}",
                    alpha=float(alphas[li]), sample_rate=rates[pyr - 1 - s])
              for li in range(len(levels)) for s in reversed(range(pyr))]

    objective_fn = make_objective(method, num_classes, objective)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    work = _normalise(images, mask) if objective.normalize else images
    min_iterations = convergence.min_iterations if convergence.min_iterations is not None \
        else convergence.window
    opts = LoopOptions(regularization=objective.regularization, optimizer=schedule.optimizer,
                       tol=float(convergence.tol), motion_tol=float(convergence.motion_tol),
                       window=int(convergence.window),
                       check_every=int(convergence.check_every), min_iterations=int(min_iterations),
                       decays=int(convergence.decays), progress=progress, callback=callback)
    record = run_stages(work, spacing, composite, objective_fn, stages, mask=mask, generator=generator,
                        options=opts)

    for message in record.warnings:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    with torch.no_grad():
        grid = identity_grid(shape, spacing, device=device, dtype=images.dtype)
        points = composite(grid)
        warped = warp(images, points, spacing)
    state = objective_fn.state()
    options = {"method": method, "num_classes": num_classes, "seed": int(seed), "device": str(device),
               "spacing": list(spacing),
               "transform": [{**lv.as_dict(), "alpha": a} for lv, a in zip(levels, alphas)],
               "objective": objective.as_dict(),
               "schedule": {**schedule.as_dict(), "step_size": steps, "iterations": iters,
                            "stage_iterations": [list(b) for b in budgets]},
               "convergence": {**convergence.as_dict(), "min_iterations": min_iterations}}
    return RegistrationResult(warped=warped, transform=composite, points=points, spacing=spacing,
                              posterior=state.get("posterior"), prior=state.get("prior"), history=record.history,
                              stage_of_iteration=record.stage_of_iteration, stages=record.stages,
                              seconds=record.seconds, method=method, options=options,
                              warnings=list(record.warnings))
