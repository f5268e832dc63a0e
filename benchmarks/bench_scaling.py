"""Benchmark: per-iteration time and peak memory versus group size N for X-CoReg, APE, CTE, GMM and CG, in one run.

Groups of N = 4 ... 128 real 128 x 128 brain slices (open_ms: 3 patients x FLAIR/T1/T1POST/T2, cycled, each copy
re-misaligned by a different seeded rigid transform), rigid transforms, the same loop and settings for every method
(L = 32, K = 4, full sampling). Each (method, N) runs in its own fresh worker process (so one run's freed heap does
not hide the next one's memory): one warm-up iteration, then the median wall time of the next iterations (at least
2, more while the budget allows; configurations faster than 1 s per iteration are run ``--repeats`` times and the
fastest run is kept, the usual robust estimate under interference from other load), and the peak resident memory above the worker's baseline after loading the data
(Linux VmHWM, reset just before the run; on CUDA the peak of ``memory_allocated`` above its baseline). A straight line is fitted to log time vs
log N per method. Targets (the task): X-CoReg slope <= 1.1 and X-CoReg time at N = 64 <= 0.1 x APE's.

Prints a table, writes ``benchmarks/results/bench_scaling.json`` and ``benchmarks/results/bench_scaling.png``.

Usage: ``python benchmarks/bench_scaling.py [--sizes 4,8,16,32,64,128] [--methods xcoreg,ape,cte,gmm,cg]
[--threads 1] [--device cpu] [--budget 20]``
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


class _Enough(Exception):
    pass


def _rss_kib(field: str) -> int | None:
    try:
        return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    except (OSError, AttributeError):
        return None


def _reset_peak() -> int | None:
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _rss_kib("VmRSS")


def make_group(n: int):
    import xreg_edu as xr
    from xreg_edu.simulate import misalign

    base = xr.load_dataset("open_ms", size=128, subjects="all")
    parts, seed = [], 0
    while sum(p.shape[0] for p in parts) < n:
        parts.append(misalign(base, "rigid", seed=seed, max_angle_deg=10.0, max_translation_mm=8.0)[0].images)
        seed += 1
    return torch.cat(parts)[:n], base.spacing


def measure(method: str, images, spacing, device: str, budget: float, min_timed: int = 2, max_timed: int = 8):
    """Time the iterations of one registration and its peak memory (run in a fresh worker process)."""
    from xreg_edu.groupwise import ConvergenceOptions, ObjectiveOptions, ScheduleOptions, register_group

    stamps = []
    t_start = [None]

    def cb(stage, it, transform, loss, state):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        timed = len(stamps) - 1
        if timed >= max_timed or (timed >= min_timed and stamps[-1] - stamps[0] > budget):
            raise _Enough

    images = images.to(device)
    base = _reset_peak()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    t_start[0] = time.perf_counter()
    try:
        register_group(images, spacing=spacing, method=method, transform="rigid", num_classes=4, device=device,
                       callback=cb, objective=ObjectiveOptions(bins=32),
                       schedule=ScheduleOptions(iterations=max_timed + 1), convergence=ConvergenceOptions(tol=0.0))
    except _Enough:
        pass
    per_iter = statistics.median(np.diff(stamps)) if len(stamps) > 1 else float("nan")
    if device.startswith("cuda"):
        mem_mb = (torch.cuda.max_memory_allocated() - base_cuda) / 2 ** 20
    else:
        peak = _rss_kib("VmHWM")
        mem_mb = (peak - base) / 1024 if (peak is not None and base is not None) else float("nan")
    return {"seconds_per_iteration": per_iter, "timed_iterations": len(stamps) - 1,
            "first_iteration_s": stamps[0] - t_start[0] if stamps else None, "peak_memory_mb": mem_mb}


def worker(group_file: str, method: str, n: int, device: str, budget: float, threads: int) -> None:
    """Entry point of the per-(method, N) process: prints one JSON line."""
    torch.set_num_threads(threads)
    data = torch.load(group_file)
    images, spacing = data["images"][:n], tuple(data["spacing"])
    from xreg_edu.groupwise import ConvergenceOptions, ScheduleOptions, register_group
    register_group(images[:2, :, 40:88, 40:88].to(device), spacing=spacing, method=method, device=device,
                   schedule=ScheduleOptions(iterations=2), convergence=ConvergenceOptions(tol=0.0))                                  # warm-up of imports / kernels, small
    print("RESULT " + json.dumps(measure(method, images, spacing, device, budget)), flush=True)


def run_worker(group_file: str, method: str, n: int, args) -> dict:
    import subprocess

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench_scaling; "
            f"bench_scaling.worker({group_file!r}, {method!r}, {n}, {args.device!r}, {args.budget}, {args.threads})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker {method} N={n} failed:\n{proc.stderr[-3000:]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="4,8,16,32,64,128")
    ap.add_argument("--methods", default="xcoreg,ape,cte,gmm,cg")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of timed iterations per (method, N)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="worker runs per (method, N) when an iteration takes < 1 s; the fastest is kept (robust to "
                         "other load on a shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    print(f"threads={args.threads} device={args.device} load average "
          f"{os.getloadavg() if hasattr(os, 'getloadavg') else 'n/a'}", flush=True)
    import tempfile
    images, spacing = make_group(max(sizes))
    tmp = tempfile.NamedTemporaryFile(suffix=".pt", delete=False)
    tmp.close()
    torch.save({"images": images, "spacing": spacing}, tmp.name)
    res = {m: {} for m in methods}
    for n in sizes:                                                 # interleave methods at each N
        for m in methods:                                           # one fresh process each: clean memory peak
            r = run_worker(tmp.name, m, n, args)
            runs = [r["seconds_per_iteration"]]
            while r["seconds_per_iteration"] < 1.0 and len(runs) < args.repeats:   # cheap: repeat, keep the min
                again = run_worker(tmp.name, m, n, args)
                runs.append(again["seconds_per_iteration"])
                if again["seconds_per_iteration"] < r["seconds_per_iteration"]:
                    r = again
            r["repeats_seconds_per_iteration"] = runs
            res[m][n] = r
            print(f"N={n:4d} {m:7s} {1e3 * r['seconds_per_iteration']:10.2f} ms/it  "
                  f"{r['peak_memory_mb']:9.1f} MB  ({r['timed_iterations']} timed)", flush=True)

    fits = {}
    for m in methods:
        ns = np.array([n for n in sizes if np.isfinite(res[m][n]["seconds_per_iteration"])], float)
        ts = np.array([res[m][int(n)]["seconds_per_iteration"] for n in ns])
        slope_all = float(np.polyfit(np.log(ns), np.log(ts), 1)[0]) if len(ns) > 1 else float("nan")
        big = ns >= 16
        slope_big = float(np.polyfit(np.log(ns[big]), np.log(ts[big]), 1)[0]) if big.sum() > 1 else float("nan")
        fits[m] = {"slope_loglog": slope_all, "slope_loglog_N_ge_16": slope_big}

    print("\n| method | " + " | ".join(f"N={n}" for n in sizes) + " | log-log slope | slope (N>=16) |")
    print("|---|" + "---|" * (len(sizes) + 2))
    for m in methods:
        cells = [f"{1e3 * res[m][n]['seconds_per_iteration']:.1f} ms / {res[m][n]['peak_memory_mb']:.0f} MB"
                 for n in sizes]
        print(f"| {m} | " + " | ".join(cells) + f" | {fits[m]['slope_loglog']:.2f} | "
              f"{fits[m]['slope_loglog_N_ge_16']:.2f} |")
    targets = {}
    if "xcoreg" in res:
        targets["xcoreg_slope"] = fits["xcoreg"]["slope_loglog"]
        targets["xcoreg_slope_target"] = 1.1
        if "ape" in res and 64 in sizes:
            ratio = res["xcoreg"][64]["seconds_per_iteration"] / res["ape"][64]["seconds_per_iteration"]
            targets["time_ratio_xcoreg_over_ape_N64"] = ratio
            targets["ratio_target"] = 0.1
        targets["pass"] = bool(targets["xcoreg_slope"] <= 1.1 and targets.get("time_ratio_xcoreg_over_ape_N64", 0) <= 0.1)
        print(f"\nX-CoReg log-log slope {targets['xcoreg_slope']:.2f} (<= 1.1); time(N=64) X-CoReg/APE = "
              f"{targets.get('time_ratio_xcoreg_over_ape_N64', float('nan')):.4f} (<= 0.1): "
              f"{'PASS' if targets['pass'] else 'FAIL'}")
    os.unlink(tmp.name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "bench_scaling", "image_size": [128, 128], "sizes": sizes, "methods": methods,
           "settings": {"transform": "rigid", "K": 4, "L": 32, "sample_rate": 1.0, "budget_s": args.budget},
           "machine": {"platform": platform.platform(), "threads": args.threads, "device": args.device,
                       "torch": torch.__version__, "cpu_count": os.cpu_count(),
                       "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
           "results": {m: {str(n): v for n, v in d.items()} for m, d in res.items()}, "fits": fits,
           "targets": targets}
    (RESULTS / "bench_scaling.json").write_text(json.dumps(out, indent=1))
    _plot(res, sizes, methods, fits, RESULTS / "bench_scaling.png")
    print(f"wrote {RESULTS / 'bench_scaling.json'} and bench_scaling.png")
    return 0


def _plot(res, sizes, methods, fits, path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common as C

    plt = C.plot_style()
    fig, ax = plt.subplots(1, 2, figsize=(7.2, 3.4))
    for m in methods:
        ax[0].loglog(sizes, [res[m][n]["seconds_per_iteration"] for n in sizes], "o-",
                     label=f"{m} (slope {fits[m]['slope_loglog']:.2f})")
        ax[1].loglog(sizes, [max(res[m][n]["peak_memory_mb"], 1e-1) for n in sizes], "o-", label=m)
    ax[0].set_xlabel("group size N")
    ax[0].set_ylabel("seconds per iteration")
    ax[1].set_xlabel("group size N")
    ax[1].set_ylabel("peak memory above baseline (MB)")
    for a in ax:
        a.legend(fontsize=9)
        a.grid(True, which="both", alpha=0.3)
    fig.suptitle("Rigid registration cost vs N (128 x 128 real brain slices)")
    fig.tight_layout()
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
