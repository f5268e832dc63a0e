"""The one optimisation loop shared by X-CoReg and every baseline.

Each iteration: warp all images with the current transforms -> overlap mask (AND user mask) -> voxel sample ->
the objective's no-grad model update (E-step, EM ...) -> differentiable loss (+ alpha x regulariser of the active
non-linear level) -> one Adam / gradient-descent step on the active transform level. Transform levels (rigid ->
affine -> FFD/SVF) are optimised one after the other, each optionally coarse-to-fine on an image pyramid; the
common space is always the group mean (the transform modules re-centre their parameters). A stage stops after its
iteration budget or when it has converged: no grid point moved more than ``motion_tol`` voxels of the stage in
the last w iterations (:func:`motion_mm`), or (stages whose histograms use every voxel) the relative change
between two consecutive moving averages of the loss (window w) falls below ``tol`` (spec §4.2 [R]); the checks
(one device sync) run every ``check_every`` iterations only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

import torch.nn.functional as F

from ..density import robust_range
from ..spatial import identity_grid, points_to_normalized, pyramid, resize
from .objectives.base import GroupObjective, GroupSample
from .optim import ScaledOptimizer, characteristic_radius, parameter_scale


@dataclass
class Stage:
    """One block of iterations: transform level ``level`` at pyramid ``scale`` (0 = full resolution)."""

    level: int
    scale: int
    iterations: int
    step_size: float
    name: str = ""
    alpha: float = 0.0
    sample_rate: float = 1.0


@dataclass
class LoopOptions:
    """Knobs of :func:`run_stages` (see :func:`xreg_edu.groupwise.register_group` for their meaning)."""

    regularization: str = "bending"
    optimizer: str = "adam"
    tol: float = 1e-4
    motion_tol: float = 0.0
    window: int = 10
    check_every: int = 5
    min_iterations: int = 10
    decay: float = 0.5
    decays: int = 0
    outside: str = "exclude"
    min_retained: float = 0.5
    restarts: int = 1
    init: str = "auto"
    robust_range: float = 1e-3
    progress: bool = False
    callback: object = None


@dataclass
class LoopRecord:
    """What the loop measured: per-iteration loss, stage boundaries, convergence flags and timings."""

    history: list[float] = field(default_factory=list)
    stage_of_iteration: list[int] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def _sample_index(mask: Tensor, rate: float, generator: torch.Generator) -> Tensor | None:
    """Sorted indices of the mask voxels, each kept with probability ``rate`` (Bernoulli, at least 16 kept);
    ``None`` when the mask is empty (the overlap collapsed)."""
    idx = mask.nonzero().squeeze(1)
    if idx.numel() == 0:
        return None
    if rate < 1.0 and idx.numel() > 16:
        keep = torch.rand(idx.numel(), generator=generator, device=generator.device).to(idx.device) < rate
        if int(keep.sum()) >= 16:
            idx = idx[keep]
    return idx


def _sampled_values(img: Tensor, grid: Tensor, transform, spacing, pad, warped: Tensor, index: Tensor) -> Tensor:
    """``[N, P]`` warped intensities, differentiable at the voxels ``index`` only: the transform and the warp are
    re-evaluated there (``[1, d, M, 1(, 1)]`` points, a linear transform being pointwise), so the backward pass
    touches M voxels, not P. ``warped``: ``[N, 1, *S]`` the no-grad warp of every voxel."""
    d = grid.shape[1]
    points = grid.flatten(2).index_select(2, index).reshape(1, d, -1, *([1] * (d - 1)))
    at_sample, _ = warp_with_overlap(img, transform(points), spacing, pad)
    values = warped.reshape(warped.shape[0], -1).clone()
    values[:, index] = at_sample.reshape(warped.shape[0], -1)
    return values


def warp_with_overlap(images: Tensor, points: Tensor, spacing: tuple[float, ...],
                      background: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Hot-path warp: ``spatial.warp`` (bilinear) without its per-call finiteness checks, plus the overlap mask of
    all fields of view from the same normalised grid.

    Args:
        images: ``[N, 1, *S]``; points: ``[N, d, *S']`` mm (centred frame of the image grid).
        background: optional ``[N]`` value of each image outside its field of view (default 0, zero padding).

    Returns:
        (``[N, 1, *S']`` warped, ``[P'] bool`` inside every image's FOV).
    """
    g = points_to_normalized(points, images.shape[2:], spacing)
    if background is None:
        warped = F.grid_sample(images, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    else:
        view = (-1,) + (1,) * (images.dim() - 1)
        bg = background.view(view)
        warped = F.grid_sample(images - bg, g, mode="bilinear", padding_mode="zeros", align_corners=True) + bg
    with torch.no_grad():
        inside = (g.detach().abs() <= 1.0 + 1e-6).all(dim=-1).all(dim=0).reshape(-1)
    return warped, inside


def background_level(images: Tensor) -> Tensor:
    """``[N]`` background intensity of each image: the median of its grid's boundary voxels (what most likely lies
    just outside its field of view). ``images``: ``[N, 1, *S]``."""
    n, d = images.shape[0], images.dim() - 2
    faces = []
    for axis in range(d):
        x = images.movedim(2 + axis, 2)
        faces += [x[:, :, 0].reshape(n, -1), x[:, :, -1].reshape(n, -1)]
    return torch.cat(faces, 1).median(dim=1).values


def foreground_centroids(images: Tensor, grid: Tensor, background: Tensor, threshold: Tensor) -> Tensor:
    """``[N, d]`` mm centroid of each image's foreground mask ``|u_j - background_j| > threshold_j`` (a binary mask,
    so images of different modalities of the same anatomy agree). images ``[N, 1, *S]``, grid ``[1, d, *S]``."""
    w = foreground_mask(images, background, threshold).to(grid.dtype).flatten(2)                    # [N, 1, P]
    return (w * grid.flatten(2)).sum(2) / w.sum(2).clamp_min(1.0)


def centre_translations(level, centroids: Tensor) -> None:
    """Start a rigid/affine level with the translations that superpose the foreground centroids (``[N, d]`` mm):
    ``phi_j(x) = x + c_j - mean(c)`` (no-op for other levels)."""
    name = type(level).__name__
    t = centroids - centroids.mean(0, keepdim=True)
    with torch.no_grad():
        if name == "RigidTransform":
            level.params[:, level.params.shape[1] - t.shape[1]:] = t
        elif name == "AffineTransform":
            level.params[:, :, -1] = t


def foreground_mask(images: Tensor, background: Tensor, threshold: Tensor) -> Tensor:
    """``[N, 1, *S]`` bool: ``|u_j - background_j| > threshold_j`` (background, threshold ``[N]``)."""
    view = (-1,) + (1,) * (images.dim() - 1)
    return (images - background.view(view)).abs() > threshold.view(view)


def foreground_fraction(images: Tensor, background: Tensor, threshold: Tensor) -> Tensor:
    """``[N]`` fraction of the grid where ``|u_j - background_j| > threshold_j`` (``images [N, 1, *S]``)."""
    return foreground_mask(images, background, threshold).flatten(1).float().mean(1)


def motion_mm(params: Tensor, reference: Tensor, scale: Tensor | float) -> float:
    """Largest parameter change in mm: ``max |params - reference| / scale`` (``scale`` of
    :func:`~xreg_edu.groupwise.optim.parameter_scale`: an angle change times the grid radius, a translation or
    displacement change as it is). One device sync."""
    return float(((params - reference).abs() / scale).amax())


def _converged(hist: Tensor, count: int, window: int, tol: float) -> bool:
    if count < 2 * window:
        return False
    recent = hist[count - 2 * window:count].tolist()          # one sync
    prev = sum(recent[:window]) / window
    now = sum(recent[window:]) / window
    return abs(now - prev) <= tol * max(abs(prev), 1e-12)


def run_stages(images: Tensor, spacing: tuple[float, ...], transform, objective: GroupObjective,
               stages: list[Stage], *, mask: Tensor | None, generator: torch.Generator,
               options: LoopOptions) -> LoopRecord:
    """Optimise ``transform`` (a :class:`~xreg_edu.spatial.CompositeTransform`) for ``objective``.

    Region of the histograms: with ``options.outside == "exclude"`` (default) only the overlap of all fields of view
    (the talk's ``Omega^phi``, which has shrinking-overlap optima at large misalignments: the guard below catches
    them); ``"background"``: the whole common grid (AND the user mask), every image reading its background level
    (:func:`background_level`) outside its field of view, so sliding an image out of the others' view replaces its
    anatomy by background. Guard: every ``check_every`` iterations the fraction of each image's foreground
    still inside the common grid is measured; below ``min_retained`` the stage restarts from its initial
    parameters with half the step (``restarts`` times), then stops at its initial parameters; each event adds a
    line to ``LoopRecord.warnings``. ``options.init == "centroid"`` (``"auto"``: in 3-D only, where the capture range
    is short of the talk's +-30 mm; on the 2-D test slices it moved seed 5 into an 8.6 mm optimum): the first stage of a rigid/affine level whose
    parameters are still zero starts from the translations superposing the foreground centroids
    (:func:`centre_translations`). A sampled stage (``stage.sample_rate < 1``) of a linear transform warps every
    voxel without gradient (the E-step needs them all) and differentiates the warp at its sample only
    (:func:`_sampled_values`); it stops on the motion test only, its loss being noisy.

    Args:
        images: ``[N, 1, *S]`` normalised intensities.
        spacing: mm per axis.
        transform: composite transform whose ``levels[stage.level]`` is optimised in each stage.
        objective: a :class:`GroupObjective`.
        stages: the schedule (coarse-to-fine and level after level).
        mask: optional ``[*S]`` bool foreground mask in the common space.
        generator: seeded generator (posterior initialisation, voxel sampling).
        options: :class:`LoopOptions`.

    Returns:
        :class:`LoopRecord`.
    """
    if options.init not in ("auto", "centroid", "identity"):
        raise ValueError(f"init must be 'auto', 'centroid' or 'identity', got {options.init!r}")
    centroid = options.init == "centroid" or (options.init == "auto" and images.dim() == 5)
    if options.outside not in ("background", "exclude"):
        raise ValueError(f"outside must be 'background' or 'exclude', got {options.outside!r}")
    n = images.shape[0]
    device, dtype = images.device, images.dtype
    depth = 1 + max(s.scale for s in stages)
    levels_img = pyramid(images, spacing, depth) if depth > 1 else [(images, tuple(spacing))]
    record = LoopRecord()
    total_iters = sum(s.iterations for s in stages)
    bar = None
    if options.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_iters, desc=f"{objective.name}", leave=False)
    t_start = time.perf_counter()
    hist_buf = torch.zeros(max(s.iterations for s in stages), device=device, dtype=dtype)
    initialised: set[int] = set()
    for si, stage in enumerate(stages):
        img, sp = levels_img[stage.scale]
        shape = tuple(img.shape[2:])
        grid = identity_grid(shape, sp, device=device, dtype=dtype)
        umask = None
        if mask is not None:
            umask = mask if tuple(mask.shape) == shape else \
                resize(mask[None, None].to(dtype), shape, mode="nearest")[0, 0] > 0.5
            umask = umask.reshape(-1)
        with torch.no_grad():
            bg = background_level(img)
            flat = img.flatten(1)
            lo, hi = robust_range(flat, max(options.robust_range, 1e-3))
            thr = 0.1 * (hi - lo)[:, 0]                     # foreground: 10 % of the robust range off background
            fg0 = foreground_fraction(img, bg, thr).clamp_min(1e-12)
            bounds = None
            if options.robust_range > 0:     # quantiles widened by 10 %, never beyond the data: clean images keep
                ext = 0.1 * (hi - lo)[:, 0]  # their min/max, a few outliers fall into the edge bins
                bounds = (torch.maximum(flat.amin(1), lo[:, 0] - ext), torch.minimum(flat.amax(1), hi[:, 0] + ext))
        pad = bg if options.outside == "background" else None
        full = torch.ones(grid[0, 0].numel(), dtype=torch.bool, device=device) if umask is None else umask
        objective.reset(n, shape, device=device, dtype=dtype, generator=generator)
        for li, lvl in enumerate(transform.levels):
            lvl.requires_grad_(li == stage.level)
        active = transform.levels[stage.level]
        if centroid and active.is_linear and stage.level not in initialised \
                and not bool(active.params.detach().any()):
            centre_translations(active, foreground_centroids(img, grid, bg, thr))
        initialised.add(stage.level)
        start = active.params.detach().clone()
        radius = characteristic_radius(shape, sp)
        scale = parameter_scale(active, radius)
        motion_tol_mm = options.motion_tol * min(sp) if options.tol > 0 else 0.0   # tol = 0: run the budget
        loss_test = options.tol > 0 and stage.sample_rate >= 1.0   # a sampled loss is too noisy for it
        sparse = stage.sample_rate < 1.0 and transform.is_linear   # backward through the sample only
        regularise = (not active.is_linear) and stage.alpha > 0
        t0 = time.perf_counter()
        restarts_left = options.restarts
        step_size = stage.step_size
        while True:
            opt = ScaledOptimizer([active.params], [scale], step_size, options.optimizer)
            count = 0
            converged = collapsed = False
            decays_left = options.decays
            since = 0                        # iteration of the last step-size decay
            snapshots = [(0, active.params.detach().clone())]   # (iteration, params) at each test
            for it in range(stage.iterations):
                with torch.set_grad_enabled(not sparse):
                    warped, inside = warp_with_overlap(img, transform(grid), sp, pad)
                m = full if pad is not None else (inside if umask is None else inside & umask)
                if count % options.check_every == 0:
                    with torch.no_grad():
                        retained = float((foreground_fraction(warped.detach(), bg, thr) / fg0).amin())
                    if retained < options.min_retained:
                        collapsed = True
                        break
                index = _sample_index(m, stage.sample_rate, generator)
                if index is None:            # no voxel left in the overlap of the fields of view
                    collapsed, retained = True, 0.0
                    break
                values = _sampled_values(img, grid, transform, sp, pad, warped, index) if sparse \
                    else warped.reshape(n, -1)
                sample = GroupSample(values, m, index, shape, bounds)
                loss = objective.step(sample)
                if regularise:
                    loss = loss + stage.alpha * active.regularization(options.regularization)
                opt.zero_grad()
                loss.backward()
                opt.step()
                hist_buf[it] = loss.detach()
                count = it + 1
                if options.callback is not None:
                    options.callback(si, it, transform, loss.detach(), objective.state())
                if bar is not None:
                    bar.update(1)
                if count % options.check_every or count < options.min_iterations or count - since < options.window:
                    continue
                if motion_tol_mm > 0:
                    snapshots.append((count, active.params.detach().clone()))
                    while len(snapshots) > 1 and snapshots[1][0] <= count - options.window:
                        snapshots.pop(0)     # snapshots[0]: the latest one at least `window` iterations old
                still = motion_tol_mm > 0 and snapshots[0][0] >= since and \
                    motion_mm(active.params.detach(), snapshots[0][1], scale) <= motion_tol_mm
                flat_loss = loss_test and count - since >= 2 * options.window and \
                    _converged(hist_buf, count, options.window, options.tol)
                if still or flat_loss:
                    if decays_left > 0:      # refine with a smaller step before declaring convergence
                        decays_left -= 1
                        opt.lr *= options.decay
                        since = count
                        continue
                    converged = True
                    break
            if not collapsed:
                break
            with torch.no_grad():
                active.params.copy_(start)
            what = (f"stage {stage.name}: an image kept only {retained:.0%} of its foreground inside the common "
                    f"grid after {count} iterations (overlap collapse)")
            if restarts_left > 0:
                restarts_left -= 1
                step_size *= 0.5
                record.warnings.append(f"{what}; restarted from the stage's start with step {step_size:g}")
                objective.reset(n, shape, device=device, dtype=dtype, generator=generator)
                continue
            record.warnings.append(f"{what}; stopped, the stage's initial transforms are kept")
            count = 0
            break
        for li, lvl in enumerate(transform.levels):
            lvl.requires_grad_(True)
        record.history.extend(hist_buf[:count].tolist())
        record.stage_of_iteration.extend([si] * count)
        record.stages.append({"name": stage.name, "level": stage.level, "scale": stage.scale, "shape": shape,
                              "iterations": count, "converged": converged, "collapsed": collapsed,
                              "seconds": time.perf_counter() - t0, "step_size": step_size,
                              "sample_rate": stage.sample_rate})
    if bar is not None:
        bar.close()
    record.seconds = time.perf_counter() - t_start
    return record
