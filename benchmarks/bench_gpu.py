"""Benchmark: X-CoReg on a 3-D group on CUDA (iterations per second), the same code as on the CPU.

A real 3-D group: open_ms patient07 FLAIR/T1/T1POST/T2 volumes (N = 4), resampled to ``--size``^3 (default 160^3),
rigidly misaligned (seeded, group mean zero, ±10° about each axis, ±10 mm). For each configuration (rigid with full
sampling, rigid with rho = 0.1, FFD on top of the rigid result) it times ``--iterations`` iterations after a warm-up
(CUDA-synchronised callback timestamps), reports iterations/s and the peak GPU memory, and for the rigid run to
``register_group``'s defaults (the grid's default schedule) to convergence the time and the gRE before/after (mm).
Prints a table, writes ``benchmarks/results/<--name>.json`` and ``.png`` (atomically, with the machine record).

Usage: ``python benchmarks/bench_gpu.py [--device cuda] [--size 160] [--iterations 50]``
(``--device cpu --size 48 --name bench_gpu_cpu_smoke`` runs the same script as a smoke test without a GPU).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def make_group(size: int, device: str):
    import xreg_edu as xr
    from xreg_edu.spatial import resize, resized_spacing
    from dataclasses import replace

    g = xr.load_dataset("open_ms", dim=3, size=size, modalities=["FLAIR", "T1", "T1POST", "T2"])
    shape = (size, size, size)
    if g.shape != shape:
        spacing = resized_spacing(g.shape, g.spacing, shape)
        images = resize(g.images, shape, g.spacing)
        g = replace(g, images=images, spacing=spacing, labels=None)
    return g.to(device)


def _sync(device: str) -> None:
    """Wait for the device's queued kernels (CUDA), so that a time stamp taken next is the work's end."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_run(images, spacing, device, iterations, transform="rigid", sample_rate=1.0):
    from xreg_edu.groupwise import ConvergenceOptions, ScheduleOptions, register_group

    stamps = []

    def cb(stage, it, transform, loss, state):
        _sync(device)
        stamps.append(time.perf_counter())

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    r = register_group(images, transform=transform, spacing=spacing, device=device, callback=cb,
                       schedule=ScheduleOptions(iterations=iterations, sample_rate=sample_rate),
                       convergence=ConvergenceOptions(tol=0.0))
    dt = np.diff(stamps[1:])                                   # skip the first (warm-up) iteration
    mem = torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda") else float("nan")
    return r, {"iterations_per_s": float(1.0 / statistics.median(dt)), "ms_per_iteration": float(1e3 * np.median(dt)),
               "timed_iterations": int(dt.size), "peak_gpu_memory_mb": mem}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--name", default="bench_gpu", help="results/<name>.json|.png (e.g. bench_gpu_cpu_smoke)")
    args = ap.parse_args(argv)
    t_start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available: run with --device cpu --size 48 for a smoke test", file=sys.stderr)
        return 2
    from xreg_edu.evaluate import group_registration_error
    from xreg_edu.groupwise import ScheduleOptions, TransformLevel, register_group
    from xreg_edu.simulate import misalign

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import finish, machine, plot_style
    start = machine(torch.get_num_threads(), args.device)
    g = make_group(args.size, args.device)
    obs, mis = misalign(g, "rigid", seed=0, max_angle_deg=10.0, max_translation_mm=10.0)
    fg = g.images.mean(0)[0] > 0.02
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"group {tuple(obs.images.shape)} at {tuple(round(s, 3) for s in obs.spacing)} mm on {name}", flush=True)
    register_group(obs.images[:, :, ::4, ::4, ::4], spacing=tuple(4 * s for s in obs.spacing),
                   device=args.device, schedule=ScheduleOptions(iterations=3))                                 # warm-up (kernels, allocator)

    configs = {
        "rigid, rho=1": {"transform": "rigid"},
        "rigid, rho=0.1": {"transform": "rigid", "sample_rate": 0.1},
        "ffd 20 mm, rho=1": {"transform": TransformLevel("ffd", control_spacing=20.0)},
    }
    rows = {}
    for label, kw in configs.items():
        _, t = timed_run(obs.images, obs.spacing, args.device, args.iterations, **kw)
        rows[label] = t
        print(f"{label:18s} {t['iterations_per_s']:8.2f} it/s  {t['ms_per_iteration']:8.1f} ms/it  "
              f"peak {t['peak_gpu_memory_mb']:8.0f} MB", flush=True)

    # accuracy: register_group's defaults (the default schedule of this grid) to convergence
    _sync(args.device)
    t0 = time.perf_counter()
    r = register_group(obs, device=args.device)
    _sync(args.device)
    conv = {"seconds": time.perf_counter() - t0, "iterations": r.iterations,
            "stages": [{k: s[k] for k in ("name", "shape", "iterations", "sample_rate")} for s in r.stages],
            "gre_before_mm": float(group_registration_error(mis.points, fg)),
            "gre_after_mm": float(group_registration_error(mis.true_points(r.points), fg))}
    print(f"register_group defaults: {conv['iterations']} iterations in {conv['seconds']:.1f} s, "
          f"gRE {conv['gre_before_mm']:.2f} -> {conv['gre_after_mm']:.3f} mm")

    print("\n| configuration | iterations/s | ms/iteration | peak GPU memory (MB) |")
    print("|---|---|---|---|")
    for label, t in rows.items():
        print(f"| {label} | {t['iterations_per_s']:.2f} | {t['ms_per_iteration']:.1f} | {t['peak_gpu_memory_mb']:.0f} |")
    out = {"benchmark": "bench_gpu", "device": args.device, "device_name": name, "machine_start": start,
           "group_shape": list(obs.images.shape), "spacing_mm": list(obs.spacing), "iterations": args.iterations,
           "configs": rows, "default_schedule_run": conv, "cuda": torch.version.cuda}

    def plot(out):
        plt = plot_style()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.barh(list(out["configs"]), [t["iterations_per_s"] for t in out["configs"].values()], color="tab:green")
        ax.set_xlabel("iterations per second")
        ax.set_title(f"X-CoReg, N = 4 x {args.size}^3, {name}")
        fig.tight_layout()
        return fig

    finish(args.name, out, plot, torch.get_num_threads(), t_start, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
