"""``register_group``: the public entry point of groupwise registration (X-CoReg and the baselines)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .._env import is_quick
from .._checks import check_bins, check_classes, check_group, check_mask
from ..group import ImageGroup
from .loop import LoopOptions, Stage, run_stages
from .objectives import OBJECTIVES, XCoReg, APE, CTE, Congealing, GMM
from .result import RegistrationResult

METHODS = tuple(OBJECTIVES)
TRANSFORMS = ("rigid", "affine", "ffd", "svf", "dense")

#: default step size eta (mm per step, see :mod:`.optim`) and iteration budget per stage, per transform kind
DEFAULTS = {
    "rigid": {"step_size": 1.0, "iterations": 300, "alpha": 0.0},
    "affine": {"step_size": 0.5, "iterations": 200, "alpha": 0.0},
    "ffd": {"step_size": 0.3, "iterations": 200, "alpha": 0.01},
    "svf": {"step_size": 0.5, "iterations": 200, "alpha": 0.03},
    "dense": {"step_size": 0.1, "iterations": 200, "alpha": 0.1},
}


def _parse_levels(transform, control_spacing) -> list[tuple[str, dict]]:
    """``"rigid"``, ``"rigid+ffd"``, ``["rigid", ("ffd", {"control_spacing": 20})]`` -> [(kind, kwargs)]."""
    if isinstance(transform, str):
        items = [t.strip() for t in transform.replace(",", "+").split("+") if t.strip()]
    elif isinstance(transform, (list, tuple)):
        items = list(transform)
    else:
        raise TypeError(f"transform must be a string or a list of levels, got {type(transform).__name__}")
    if not items:
        raise ValueError("transform names no level")
    levels = []
    for item in items:
        kw = {}
        if isinstance(item, (tuple, list)):
            if len(item) != 2 or not isinstance(item[1], dict):
                raise ValueError(f"a transform level must be a name or (name, dict), got {item!r}")
            item, kw = item[0], dict(item[1])
        elif isinstance(item, dict):
            kw = dict(item)
            item = kw.pop("kind", None)
        if item not in TRANSFORMS:
            raise ValueError(f"unknown transform {item!r}; choose from {TRANSFORMS}")
        if item == "ffd":
            cs = kw.get("control_spacing", control_spacing)
            # a list of per-level spacings (each a number or a per-axis tuple) = one FFD level each, coarse -> fine
            if isinstance(cs, list) and len(cs) > 1:
                for c in cs:
                    levels.append(("ffd", {**kw, "control_spacing": c}))
                continue
            kw.setdefault("control_spacing", cs)
        levels.append((item, kw))
    return levels


def _per_level(value, n: int, name: str, default: Sequence) -> list:
    if value is None:
        return list(default)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} transform levels")
        return list(value)
    return [value] * n


def make_objective(method: str, *, num_classes: int = 4, bins: int = 32, **kw):
    """Build the objective for ``method`` (``"xcoreg" | "ape" | "cte" | "cg" | "gmm"``) from its keywords."""
    if method == "xcoreg":
        keys = ("appearance", "prior", "min_prob", "lookup", "init_posterior", "warmup", "estep_histogram")
        return XCoReg(num_classes, bins, **{k: kw[k] for k in keys if k in kw})
    if method == "ape":
        return APE(bins)
    if method == "cte":
        return CTE(bins)
    if method == "cg":
        return Congealing(kw.get("kernel_sigma", 1.0))
    if method == "gmm":
        return GMM(num_classes, init=kw.get("gmm_init", "random"))
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def _normalise(images: Tensor, mask: Tensor | None) -> Tensor:
    """z-score each image over its (masked) voxels; constant images are only centred."""
    flat = images.reshape(images.shape[0], -1)
    sel = flat if mask is None else flat[:, mask.reshape(-1)]
    mean = sel.mean(1)
    std = sel.std(1)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    view = (-1,) + (1,) * (images.dim() - 1)
    return (images - mean.view(view)) / std.view(view)


def register_group(images: Tensor | ImageGroup, method: str = "xcoreg", transform="rigid", num_classes: int = 4,
                   step_size: float | Sequence[float] | None = None, iterations: int | Sequence[int] | None = None,
                   bins: int = 32, sample_rate: float = 1.0, mask: Tensor | None = None,
                   spacing: Sequence[float] | None = None, seed: int = 0, device=None, progress: bool = False, *,
                   optimizer: str = "adam", pyramid: int = 1, alpha: float | Sequence[float] | None = None,
                   regularization: str = "bending", control_spacing=None, svf_steps: int = 7,
                   velocity_spacing=None, appearance: str = "hist", prior="global", min_prob: float = 1e-3,
                   lookup: str = "hard", init_posterior: Tensor | None = None, warmup: int = 0,
                   estep_histogram: str = "spline", gmm_init: str = "random", kernel_sigma: float = 1.0,
                   tol: float = 1e-4, window: int = 10, check_every: int = 5, min_iterations: int | None = None,
                   decays: int = 0, refine_step: float = 0.25, normalize: bool = True,
                   callback=None) -> RegistrationResult:
    """Groupwise registration of N images into their group-mean common space.

    Args:
        images: ``[N, 1, H, W]`` / ``[N, 1, D, H, W]`` float tensor, or an :class:`~xreg_edu.group.ImageGroup`
            (its spacing is used unless ``spacing`` is given). N >= 2, finite values.
        method: ``"xcoreg"`` (Algorithm 1, default), ``"ape"``, ``"cte"``, ``"cg"`` (congealing) or ``"gmm"``.
        transform: ``"rigid" | "affine" | "ffd" | "svf" | "dense"``, or several levels optimised in turn,
            e.g. ``"rigid+ffd"`` or ``["affine", ("ffd", {"control_spacing": 20}), ("ffd", {"control_spacing": 10})]``.
        num_classes: K (X-CoReg classes / GMM components), >= 2.
        step_size: eta, "mm per step" (angles and matrix entries are scaled by the grid radius, see
            :mod:`xreg_edu.groupwise.optim`); one value or one per level; default per kind (:data:`DEFAULTS`).
        iterations: budget per stage (each level x pyramid scale); one value or one per level.
        bins: histogram bins L (>= 2).
        sample_rate: fraction rho in (0, 1] of the overlap voxels used for the histograms each iteration.
        mask: optional ``[*S]`` foreground mask in the common space (AND-ed with the overlap of the FOVs). Keep a
            margin around the object: with a mask that hugs it, the images can raise the objective by sliding
            background into the mask.
        spacing: mm per axis (default: the group's, or 1 mm).
        seed: seeds the random posterior initialisation and the voxel sampling (same seed -> same result).
        device: where to compute (default: the images' device).
        progress: show a tqdm progress bar.
        optimizer: ``"adam"`` (default, as the official code) or ``"sgd"`` (plain gradient descent, step eta).
        pyramid: number of resolution levels (1 = full resolution only, 2 = half then full).
        refine_step: step-size factor of each finer pyramid stage of a level relative to the coarser one.
        alpha: weight of the regulariser of non-linear levels (bending energy of the raw parameters, summed over
            the group = N x mean); one value or one per level; default per kind (:data:`DEFAULTS`: FFD 0.01, SVF 0.03).
        regularization: ``"bending"`` or ``"membrane"``.
        control_spacing: FFD control-point spacing in mm (default 1/8 of the largest extent).
        svf_steps: scaling-and-squaring steps of SVF levels.
        velocity_spacing: SVF velocity lattice spacing in mm (default 1/8 of the largest extent, as the FFD control
            spacing; ``"voxel"``: one vector per voxel); the lattice is linearly interpolated to the image grid.
        appearance, prior, min_prob, lookup, init_posterior, warmup, estep_histogram: X-CoReg options (see
            :class:`~xreg_edu.groupwise.objectives.XCoReg`); ``prior`` is ``"global"`` or an atlas ``[K, *S]``.
        gmm_init: GMM initialisation, ``"random"`` (default), ``"kmeans"`` or ``"symmetric"`` (official).
        kernel_sigma: congealing Parzen width (z-score units).
        tol, window, check_every, min_iterations: convergence test: stop a stage when the relative change of two
            consecutive ``window``-iteration loss averages is below ``tol`` (checked every ``check_every`` its).
        decays: number of times the step size is halved at convergence before stopping (refinement).
        normalize: z-score every image first (the histogram methods are invariant; CG/GMM/CTE need it).
        callback: optional ``f(stage, iteration, transform, loss, state)`` called after every step, ``state`` being
            the objective's current outputs (X-CoReg: ``{"posterior": [K,*S], "prior": ...}``), e.g. for animations.

    Returns:
        :class:`~xreg_edu.groupwise.result.RegistrationResult`.
    """
    group_spacing = None
    if isinstance(images, ImageGroup):
        group_spacing = images.spacing
        images = images.images
    check_group(images, "images", min_n=2)
    if method not in OBJECTIVES:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    check_classes(num_classes)
    check_bins(bins)
    if not (isinstance(sample_rate, (int, float)) and 0.0 < float(sample_rate) <= 1.0):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(pyramid, bool) or not isinstance(pyramid, int) or pyramid < 1:
        raise ValueError(f"pyramid must be an integer >= 1, got {pyramid!r}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    dim = images.dim() - 2
    shape = tuple(images.shape[2:])
    if spacing is None:
        spacing = group_spacing if group_spacing is not None else (1.0,) * dim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != dim or any(not s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} must hold {dim} positive values (mm per axis)")
    if device is not None:
        images = images.to(device)
    device = images.device
    images = images.float() if images.dtype not in (torch.float32, torch.float64) else images
    if mask is not None:
        mask = check_mask(torch.as_tensor(mask, device=device), shape)
    n = images.shape[0]

    levels = _parse_levels(transform, control_spacing)
    kinds = [k for k, _ in levels]
    steps = _per_level(step_size, len(levels), "step_size", [DEFAULTS[k]["step_size"] for k in kinds])
    iters = _per_level(iterations, len(levels), "iterations", [DEFAULTS[k]["iterations"] for k in kinds])
    alphas = _per_level(alpha, len(levels), "alpha", [DEFAULTS[k]["alpha"] for k in kinds])
    for a in alphas:
        if not (isinstance(a, (int, float)) and a >= 0):
            raise ValueError(f"alpha must be >= 0, got {a!r}")
    if is_quick():
        iters = [max(10, int(i) // 4) for i in iters]
    for i in iters:
        if isinstance(i, bool) or not isinstance(i, int) or i < 1:
            raise ValueError(f"iterations must be positive integers, got {i!r}")
    for s in steps:
        if not (isinstance(s, (int, float)) and s > 0):
            raise ValueError(f"step_size must be > 0, got {s!r}")

    from ..spatial import CompositeTransform, identity_grid, make_transform, warp
    modules = []
    for kind, kw in levels:
        extra = dict(kw)
        if kind == "svf":
            extra.setdefault("steps", svf_steps)
            vs = extra.pop("velocity_spacing", velocity_spacing)
            if vs is None:
                vs = max((m - 1) * s for m, s in zip(shape, spacing)) / 8
            if vs != "voxel":        # velocity on a coarser lattice, linearly interpolated to the image grid
                from ..spatial import SVFTransform, resized_spacing
                vs = (float(vs),) * dim if isinstance(vs, (int, float)) else tuple(float(v) for v in vs)
                vshape = tuple(max(3, int(round((m - 1) * s / v)) + 1) for m, s, v in zip(shape, spacing, vs))
                modules.append(SVFTransform(n, vshape, resized_spacing(shape, spacing, vshape), extra["steps"]))
                continue
        modules.append(make_transform(kind, n, shape, spacing, **extra))
    composite = CompositeTransform(modules).to(device=device, dtype=images.dtype)

    # coarse-to-fine: a finer stage of the same level starts near the solution, so its step is refine_step x smaller
    stages = [Stage(li, s, int(iters[li]), float(steps[li]) * refine_step ** (pyramid - 1 - s),
                    name=f"{kinds[li]}@1/{2 ** s}", alpha=float(alphas[li]))
              for li in range(len(levels)) for s in reversed(range(pyramid))]

    objective = make_objective(method, num_classes=num_classes, bins=bins, appearance=appearance, prior=prior,
                               min_prob=min_prob, lookup=lookup, init_posterior=init_posterior, warmup=warmup,
                               estep_histogram=estep_histogram,
                               gmm_init=gmm_init, kernel_sigma=kernel_sigma)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    work = _normalise(images, mask) if normalize else images
    opts = LoopOptions(sample_rate=float(sample_rate), regularization=regularization,
                       optimizer=optimizer, tol=float(tol), window=int(window), check_every=int(check_every),
                       min_iterations=int(min_iterations if min_iterations is not None else 2 * window),
                       decays=int(decays), progress=progress, callback=callback)
    record = run_stages(work, spacing, composite, objective, stages, mask=mask, generator=generator, options=opts)

    with torch.no_grad():
        grid = identity_grid(shape, spacing, device=device, dtype=images.dtype)
        points = composite(grid)
        warped = warp(images, points, spacing)
    state = objective.state()
    options = {"method": method, "transform": levels, "num_classes": num_classes, "step_size": steps,
               "iterations": iters, "bins": bins, "sample_rate": sample_rate, "seed": seed, "optimizer": optimizer,
               "pyramid": pyramid, "refine_step": refine_step, "alpha": alphas, "regularization": regularization,
               "control_spacing": control_spacing, "velocity_spacing": velocity_spacing, "svf_steps": svf_steps,
               "appearance": appearance, "min_prob": min_prob, "lookup": lookup, "warmup": warmup,
               "estep_histogram": estep_histogram, "gmm_init": gmm_init, "kernel_sigma": kernel_sigma, "tol": tol,
               "window": window, "decays": decays, "normalize": normalize, "device": str(device)}
    return RegistrationResult(warped=warped, transform=composite, points=points, spacing=spacing,
                              posterior=state.get("posterior"), prior=state.get("prior"), history=record.history,
                              stage_of_iteration=record.stage_of_iteration, stages=record.stages,
                              seconds=record.seconds, method=method, options=options)
