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

``--engines LABEL=PATH|LABEL=git:REV ...`` measures several engines side by side (e.g. the commit before the
hot-path work against this checkout): every (engine, setting) in a fresh one-thread process, the engines
alternating for ``--repeats`` rounds, the least disturbed round kept part by part. Writes
``benchmarks/results/bench_hotpath.json`` + ``.png`` (ns per voxel x image x iteration per part and engine, the bound
as a line); the load average is recorded at the start and end.

Usage: ``python benchmarks/bench_hotpath.py [--engines before=git:a47b009 after=.] [--iterations 20] [--quick]``.
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
    """Stacked ns per voxel x image x iteration per part (minimum per part) and engine, the end-to-end cost
    (a marker) and the bandwidth bound (dashed), one panel per setting."""
    sys.path.insert(0, str(HERE))
    from _common import plot_style
    plt = plot_style()
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(7, 4.2))
    for ax, setting in zip(axes, SETTINGS):
        labels = [lab for lab, run in results["runs"].items() if setting in run]
        if not labels:
            continue
        runs = [results["runs"][lab][setting] for lab in labels]
        bottom = np.zeros(len(labels))
        for i, p in enumerate(PARTS):
            vals = np.array([r["parts_ns"].get(p, 0.0) for r in runs])
            ax.bar(labels, vals, bottom=bottom, label=p, color=plt.cm.tab10(i), width=0.6)
            bottom += vals
        ax.plot(labels, [r["cost"]["ns"] for r in runs], "kD", label="end to end (all iterations)")
        ax.axhline(runs[-1]["cost"]["bound_ns"], color="k", ls="--", lw=1, label="bandwidth bound")
        ax.set_title(f"{setting}: {' x '.join(map(str, runs[-1]['shape']))}, N = {runs[-1]['images']}")
        ax.set_ylabel("ns per voxel x image x iteration")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    return fig


def worker(setting: str, iterations: int) -> dict:
    """One engine, one setting (run in a fresh process with the engine first on ``sys.path``)."""
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from _common import _LIBC, machine
    if _LIBC is not None:     # _common fixes a 64 KiB mmap threshold (for its RSS probe); the hot path is timed with
        _LIBC.mallopt(-3, 32 * 2 ** 20)   # glibc's warm default instead (blocks >= 32 MiB are mmapped)
    obs = _group(setting)
    return {"shape": list(obs.shape), "voxels": int(np.prod(obs.shape)), "images": obs.images.shape[0],
            "parts_ms": parts(obs, iterations), "end_to_end": end_to_end(obs, iterations), "machine": machine(1)}


def _engine_path(spec: str, tmp: Path) -> Path:
    """``PATH`` (a checkout) or ``git:REV`` (this repository's ``xreg_edu`` at REV, unpacked into ``tmp``)."""
    if not spec.startswith("git:"):
        return Path(spec).resolve()
    import subprocess
    import tarfile
    rev = spec[4:]
    out = tmp / rev
    out.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev, "xreg_edu"], check=True,
                         capture_output=True).stdout
    import io
    tarfile.open(fileobj=io.BytesIO(tar)).extractall(out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", nargs="+", default=[f"this={HERE.parent}"],
                    help="LABEL=PATH or LABEL=git:REV, measured side by side (alternating, in fresh processes)")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="alternating rounds; the minimum per part is kept")
    ap.add_argument("--quick", action="store_true", help="5 iterations, 1 round, 2-D only, nothing written")
    ap.add_argument("--replot", action="store_true", help="redraw the PNG from the JSON")
    ap.add_argument("--worker", nargs=3, metavar=("ENGINE", "SETTING", "ITERATIONS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        sys.path.insert(0, args.worker[0])
        print(json.dumps(worker(args.worker[1], int(args.worker[2]))))
        return
    import subprocess
    import tempfile
    sys.path.insert(0, str(HERE))
    from _common import machine, write
    if args.replot:
        results = json.loads((HERE / "results" / "bench_hotpath.json").read_text())
        write("bench_hotpath", results, figure(results))
        return
    iters, repeats = (5, 1) if args.quick else (args.iterations, args.repeats)
    settings = SETTINGS[:1] if args.quick else SETTINGS
    bw = memory_bandwidth()
    load_start = list(os.getloadavg())
    runs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        engines = {spec.split("=", 1)[0]: (spec.split("=", 1)[1], _engine_path(spec.split("=", 1)[1], Path(tmp)))
                   for spec in args.engines}
        for _ in range(repeats):
            for label, (spec, path) in engines.items():
                for setting in settings:
                    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(path)}
                    out = subprocess.run([sys.executable, __file__, "--worker", str(path), setting, str(iters)],
                                         env=env, capture_output=True, text=True, check=True).stdout
                    r = json.loads(out.strip().splitlines()[-1])
                    prev = runs.setdefault(label, {"engine": spec}).get(setting)
                    if prev is not None:          # keep the least disturbed round, part by part
                        r["parts_ms"] = {k: min(v, prev["parts_ms"][k]) for k, v in r["parts_ms"].items()}
                        r["end_to_end"] = {k: min(v, prev["end_to_end"][k]) for k, v in r["end_to_end"].items()}
                    runs[label][setting] = r
                    print(f"{label} {setting}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["parts_ms"].items())
                          + f" ms; end to end {1e3 * r['end_to_end']['cpu_s_per_iteration']:.1f} ms CPU/iteration",
                          flush=True)
    for label, run in runs.items():
        for setting in settings:
            r = run[setting]
            nvi = r["voxels"] * r["images"]
            r["parts_ns"] = {k: 1e6 * v / nvi for k, v in r["parts_ms"].items()}
            r["cost"] = cost_report(r["end_to_end"]["cpu_s_per_iteration"] / nvi, bw)
            r["wall_ns_per_voxel_image_iteration"] = 1e9 * r["end_to_end"]["wall_s_per_iteration"] / nvi
            print(f"{label} {setting} {r['shape']}: {r['cost']['ns']:.1f} ns per voxel x image x iteration "
                  f"(parts {sum(r['parts_ns'].values()):.1f}), bound {r['cost']['bound_ns']:.2f} ns at "
                  f"{bw / 1e9:.1f} GB/s: {r['cost']['ratio']:.0f} x the bound")
    results = {"description": __doc__.splitlines()[0], "runs": runs, "iterations": iters, "repeats": repeats,
               "bandwidth_bytes_per_s": bw, "bytes_per_voxel_image_iteration": BYTES_PER_VOXEL_IMAGE_ITER,
               "machine": {**machine(1), "loadavg_start": load_start}}
    if not args.quick:                        # a quick run is a smoke test: printed, not written
        write("bench_hotpath", results, figure(results))


if __name__ == "__main__":
    main()
