"""Benchmark: the cost of one rigid X-CoReg iteration, part by part, next to a memory-bandwidth bound (issue 11 item 4).

Groups: ``bench_vs_elastix.load`` (open_ms patient07 T1/T2/FLAIR, N = 3, seeded rigid misalignment, seed 0): the 2-D
218 x 182 slice and the 3-D 91 x 109 x 91 volume at 2 mm. The default objective (X-CoReg, K = 4, 32 bins, hard
lookup, robust range) at full resolution, every voxel of the overlap sampled.

- ``parts``: one loop iteration of ``groupwise.loop.run_stages`` re-played with a timer around each part (CPU
  time of this thread, ms per iteration, the least disturbed (minimum) of the timed iterations: the machine is
  shared): transform, warp + overlap mask, sample index, E-step (``objective.update``), loss forward (class
  histograms + information terms, ``objective.loss``), backward of the histograms (up to the warped intensities,
  timed by a tensor hook), backward of the warp and transform, optimiser step. ``update`` + ``loss`` is what
  ``objective.step`` does.
- ``end_to_end``: ``register_group`` with a fixed budget (full resolution, ``tol=0``), seconds per
  voxel x image x iteration (wall and CPU; the slope between 2 and 2 + ``--iterations`` iterations).
- ``bound``: bytes one voxel x image x iteration touches at least (:data:`BYTES_PER_VOXEL_IMAGE_ITER`) / the memory
  bandwidth measured here (:func:`memory_bandwidth`, a large ``numpy`` copy).

``--engine PATH`` imports ``xreg_edu`` from another checkout (e.g. the commit before the hot-path work), ``--label``
names the run; runs with different labels accumulate in ``benchmarks/results/bench_hotpath.json`` (+ ``.png``:
ns per voxel x image x iteration per part and label, the bound as a line). One thread; the load average is recorded.

Usage: ``python benchmarks/bench_hotpath.py [--label after] [--engine PATH] [--iterations 20] [--quick]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: bytes a voxel x image x iteration must move at least (float32): the warp reads 4 (2-D) / 8 (3-D) neighbours
#: (cached lines, counted once: 4 B) and writes the value (4 B); the E-step and the two class histograms read the
#: value 3 x (12 B) and the posterior share K x 4 / N per image twice (2 x 16 / 3 B at K = 4, N = 3); the E-step
#: writes the posterior share (16 / 3 B); the backward reads the value and writes its gradient (8 B) and reads
#: the grid gradient path (the points, 3 x 4 B written forward and read backward: 24 B).
BYTES_PER_VOXEL_IMAGE_ITER = 4 + 4 + 12 + 32 / 3 + 16 / 3 + 8 + 24
PARTS = ("transform", "warp + overlap", "sample index", "E-step", "loss forward", "histogram backward",
         "warp + transform backward", "optimiser step")
SETTINGS = ("2d_full", "3d_2mm")


def memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s of a ``megabytes`` numpy copy (read + write counted), best of ``repeats`` (one thread)."""
    a = np.ones(megabytes * 2 ** 20 // 8)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best


def cost_report(seconds_per_voxel_image_iteration: float, bandwidth: float | None = None) -> dict:
    """Cost per voxel x image x iteration next to the bandwidth bound: ``{"ns": .., "bound_ns": .., "ratio": ..,
    "bandwidth_gb_s": .., "bytes_per_voxel_image_iteration": ..}`` (``bandwidth`` measured when None)."""
    bw = memory_bandwidth() if bandwidth is None else bandwidth
    bound = BYTES_PER_VOXEL_IMAGE_ITER / bw
    return {"ns": seconds_per_voxel_image_iteration * 1e9, "bound_ns": bound * 1e9,
            "ratio": seconds_per_voxel_image_iteration / bound, "bandwidth_gb_s": bw / 1e9,
            "bytes_per_voxel_image_iteration": BYTES_PER_VOXEL_IMAGE_ITER}


def _group(setting: str):
    sys.path.insert(0, str(HERE))
    from bench_vs_elastix import SETTINGS as MIS, load
    from xreg_edu.simulate import misalign
    g, _ = load(setting)
    obs, _ = misalign(g, "rigid", seed=0, **MIS[setting][2])
    return obs


def parts(obs, iterations: int) -> dict:
    """ms per iteration of each part of one loop iteration (minimum over ``iterations`` after one warm-up)."""
    import torch
    import xreg_edu as xr
    from xreg_edu.density import robust_range
    from xreg_edu.groupwise.api import _normalise
    from xreg_edu.groupwise.loop import _sample_index, warp_with_overlap
    from xreg_edu.groupwise.objectives.base import GroupSample
    from xreg_edu.groupwise.optim import ScaledOptimizer, characteristic_radius, parameter_scale
    from xreg_edu.spatial import CompositeTransform, RigidTransform, identity_grid
    img = _normalise(obs.images.float(), None)
    n, shape, sp = img.shape[0], tuple(img.shape[2:]), tuple(obs.spacing)
    grid = identity_grid(shape, sp)
    transform = CompositeTransform([RigidTransform(n, len(shape))])
    level = transform.levels[0]
    objective = xr.groupwise.XCoReg(4, 32)
    gen = torch.Generator().manual_seed(0)
    objective.reset(n, shape, device="cpu", dtype=img.dtype, generator=gen)
    flat = img.flatten(1)
    lo, hi = robust_range(flat, 1e-3)
    ext = 0.1 * (hi - lo)[:, 0]
    bounds = (torch.maximum(flat.amin(1), lo[:, 0] - ext), torch.minimum(flat.amax(1), hi[:, 0] + ext))
    opt = ScaledOptimizer([level.params], [parameter_scale(level, characteristic_radius(shape, sp))], 1.0, "adam")
    times = {p: [] for p in PARTS}
    clock = time.thread_time
    for it in range(iterations + 1):
        t = {}
        t0 = clock()
        points = transform(grid)
        t["transform"] = clock()
        warped, inside = warp_with_overlap(img, points, sp)
        t["warp + overlap"] = clock()
        index = _sample_index(inside, 1.0, gen)
        t["sample index"] = clock()
        sample = GroupSample(warped.reshape(n, -1), inside, index, shape, bounds)
        with torch.no_grad():
            objective.update(sample.detach())
        t["E-step"] = clock()
        loss = objective.loss(sample)
        t["loss forward"] = clock()
        stamp = {}
        warped.register_hook(lambda g: stamp.setdefault("hist", clock()) and None)
        opt.zero_grad()
        loss.backward()
        t_bwd = clock()
        t["histogram backward"] = stamp["hist"]
        t["warp + transform backward"] = t_bwd
        opt.step()
        t["optimiser step"] = clock()
        if it:
            prev = t0
            for p in PARTS:
                times[p].append(1e3 * (t[p] - prev))
                prev = t[p]
    return {p: float(np.min(v)) for p, v in times.items()}


def end_to_end(obs, iterations: int) -> dict:
    """``register_group`` at full resolution: wall / CPU seconds per iteration as the slope between a run of 2 and
    a run of ``2 + iterations`` iterations (the set-up of a call, e.g. the robust range, cancels)."""
    import xreg_edu as xr
    from xreg_edu.groupwise import ConvergenceOptions, ScheduleOptions
    conv = ConvergenceOptions(tol=0.0)

    def timed(k):
        t, c = time.perf_counter(), time.thread_time()
        xr.register_group(obs, schedule=ScheduleOptions(pyramid=1, iterations=k), convergence=conv)
        return time.perf_counter() - t, time.thread_time() - c

    timed(2)                                                   # warm-up
    (w0, c0), (w1, c1) = timed(2), timed(2 + iterations)
    return {"wall_s_per_iteration": (w1 - w0) / iterations, "cpu_s_per_iteration": (c1 - c0) / iterations}


def figure(results: dict):
    sys.path.insert(0, str(HERE))
    from _common import plot_style
    plt = plot_style()
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(7, 3.6), sharey=False)
    for ax, setting in zip(axes, SETTINGS):
        labels = [lab for lab, run in results["runs"].items() if setting in run]
        if not labels:
            continue
        bottom = np.zeros(len(labels))
        for i, p in enumerate(PARTS):
            vals = np.array([results["runs"][lab][setting]["parts_ns"].get(p, 0.0) for lab in labels])
            ax.bar(labels, vals, bottom=bottom, label=p, color=plt.cm.tab10(i))
            bottom += vals
        bound = results["runs"][labels[-1]][setting]["cost"]["bound_ns"]
        ax.axhline(bound, color="k", ls="--", lw=1, label="bandwidth bound")
        ax.set_title(f"{setting}: {'x'.join(map(str, results['runs'][labels[-1]][setting]['shape']))}, N = 3")
        ax.set_ylabel("ns per voxel x image x iteration")
    axes[-1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="after")
    ap.add_argument("--engine", default=None, help="checkout whose xreg_edu is imported (default: this one)")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="5 iterations, 2-D only")
    args = ap.parse_args(argv)
    if args.engine:
        sys.path.insert(0, str(Path(args.engine).resolve()))
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from _common import _LIBC, machine, write
    if _LIBC is not None:     # _common fixes a 64 KiB mmap threshold (for its RSS probe); the hot path is timed with
        _LIBC.mallopt(-3, 32 * 2 ** 20)   # glibc's warm default instead (blocks >= 32 MiB are mmapped)
    iters = 5 if args.quick else args.iterations
    bw = memory_bandwidth()
    run = {"machine": machine(1), "iterations": iters}
    for setting in SETTINGS[:1] if args.quick else SETTINGS:
        obs = _group(setting)
        nvox = int(np.prod(obs.shape))
        n = obs.images.shape[0]
        p = parts(obs, iters)
        e2e = end_to_end(obs, iters)
        per = e2e["cpu_s_per_iteration"] / (nvox * n)
        run[setting] = {"shape": list(obs.shape), "voxels": nvox, "images": n, "parts_ms": p,
                        "parts_ns": {k: 1e6 * v / (nvox * n) for k, v in p.items()}, "end_to_end": e2e,
                        "cost": cost_report(per, bw),
                        "wall_ns_per_voxel_image_iteration": 1e9 * e2e["wall_s_per_iteration"] / (nvox * n)}
        print(f"{args.label} {setting} {obs.shape}: " + ", ".join(f"{k} {v:.1f}" for k, v in p.items())
              + f" ms; end to end {1e3 * e2e['cpu_s_per_iteration']:.1f} ms CPU/iteration = "
              f"{run[setting]['cost']['ns']:.1f} ns per voxel x image x iteration (bound "
              f"{run[setting]['cost']['bound_ns']:.2f} ns at {bw / 1e9:.1f} GB/s)", flush=True)
    run["machine"]["loadavg_end"] = list(os.getloadavg())
    path = HERE / "results" / "bench_hotpath.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.setdefault("runs", {})[args.label] = run
    results["description"] = __doc__.splitlines()[0]
    results["bytes_per_voxel_image_iteration"] = BYTES_PER_VOXEL_IMAGE_ITER
    write("bench_hotpath", results, figure(results) if not args.quick else None)


if __name__ == "__main__":
    main()
