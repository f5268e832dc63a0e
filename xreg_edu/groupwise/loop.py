"""The one optimisation loop shared by X-CoReg and every baseline.

Each iteration: warp all images with the current transforms -> overlap mask (AND user mask) -> voxel sample ->
the objective's no-grad model update (E-step, EM ...) -> differentiable loss (+ alpha x regulariser of the active
non-linear level) -> one Adam / gradient-descent step on the active transform level. Transform levels (rigid ->
affine -> FFD/SVF) are optimised one after the other, each optionally coarse-to-fine on an image pyramid; the
common space is always the group mean (the transform modules re-centre their parameters). A stage stops after its
iteration budget or when the relative change between two consecutive moving averages of the loss (window w)
falls below ``tol`` (spec §4.2 [R]); the check (one device sync) runs every ``check_every`` iterations only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

import torch.nn.functional as F

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


@dataclass
class LoopOptions:
    """Knobs of :func:`run_stages` (see :func:`xreg_edu.groupwise.register_group` for their meaning)."""

    sample_rate: float = 1.0
    regularization: str = "bending"
    optimizer: str = "adam"
    tol: float = 1e-4
    window: int = 10
    check_every: int = 5
    min_iterations: int = 20
    decay: float = 0.5
    decays: int = 0
    progress: bool = False
    callback: object = None


@dataclass
class LoopRecord:
    """What the loop measured: per-iteration loss, stage boundaries, convergence flags and timings."""

    history: list[float] = field(default_factory=list)
    stage_of_iteration: list[int] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _sample_index(mask: Tensor, rate: float, generator: torch.Generator) -> Tensor:
    idx = mask.nonzero().squeeze(1)
    if idx.numel() == 0:
        raise ValueError("the warped images no longer overlap (empty overlap mask): the registration diverged; "
                         "lower the step size or the iteration count")
    if rate < 1.0:
        m = max(16, int(round(rate * idx.numel())))
        if m < idx.numel():
            pick = torch.randperm(idx.numel(), generator=generator, device=generator.device)[:m]
            idx = idx[pick.to(idx.device)]
    return idx


def warp_with_overlap(images: Tensor, points: Tensor, spacing: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """Hot-path warp: ``spatial.warp`` (bilinear, zero padding) without its per-call finiteness checks, plus the
    overlap mask of all fields of view from the same normalised grid.

    Args:
        images: ``[N, 1, *S]``; points: ``[N, d, *S']`` mm (centred frame of the image grid).

    Returns:
        (``[N, 1, *S']`` warped, ``[P'] bool`` inside every image's FOV).
    """
    g = points_to_normalized(points, images.shape[2:], spacing)
    warped = F.grid_sample(images, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    with torch.no_grad():
        inside = (g.detach().abs() <= 1.0 + 1e-6).all(dim=-1).all(dim=0).reshape(-1)
    return warped, inside


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
    for si, stage in enumerate(stages):
        img, sp = levels_img[stage.scale]
        shape = tuple(img.shape[2:])
        grid = identity_grid(shape, sp, device=device, dtype=dtype)
        umask = None
        if mask is not None:
            umask = mask if tuple(mask.shape) == shape else \
                resize(mask[None, None].to(dtype), shape, mode="nearest")[0, 0] > 0.5
            umask = umask.reshape(-1)
        objective.reset(n, shape, device=device, dtype=dtype, generator=generator)
        for li, lvl in enumerate(transform.levels):
            lvl.requires_grad_(li == stage.level)
        active = transform.levels[stage.level]
        radius = characteristic_radius(shape, sp)
        opt = ScaledOptimizer([active.params], [parameter_scale(active, radius)], stage.step_size,
                              options.optimizer)
        regularise = (not active.is_linear) and stage.alpha > 0
        t0 = time.perf_counter()
        count = 0
        converged = False
        decays_left = options.decays
        since = 0                            # iteration of the last step-size decay
        for it in range(stage.iterations):
            points = transform(grid)
            warped, m = warp_with_overlap(img, points, sp)
            if umask is not None:
                m = m & umask
            index = _sample_index(m, options.sample_rate, generator)
            sample = GroupSample(warped.reshape(n, -1), m, index, shape)
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
            if count >= options.min_iterations and count % options.check_every == 0 \
                    and count - since >= 2 * options.window \
                    and _converged(hist_buf, count, options.window, options.tol):
                if decays_left > 0:          # refine with a smaller step before declaring convergence
                    decays_left -= 1
                    opt.lr *= options.decay
                    since = count
                    continue
                converged = True
                break
        for li, lvl in enumerate(transform.levels):
            lvl.requires_grad_(True)
        record.history.extend(hist_buf[:count].tolist())
        record.stage_of_iteration.extend([si] * count)
        record.stages.append({"name": stage.name, "level": stage.level, "scale": stage.scale, "shape": shape,
                              "iterations": count, "converged": converged,
                              "seconds": time.perf_counter() - t0, "step_size": stage.step_size})
    if bar is not None:
        bar.close()
    record.seconds = time.perf_counter() - t_start
    return record
