"""Shared plumbing of the experiment benchmarks (bench_rigid3d, bench_deformable_myops, bench_brain3d, bench_motion).

One call adapter for ``register_group`` (flat keywords, mapped onto the option objects when the installed engine has
them), a time + peak-memory probe, the machine record (load average, threads, commit) every JSON carries, the paired
test, and an atomic writer for ``benchmarks/results/<name>.json|.png``.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import platform
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _libc():
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()
if _LIBC is not None:            # glibc: fixed 32 MiB mmap threshold (its warm default), so freed large tensors
    _LIBC.mallopt(-3, 32 * 2 ** 20)   # leave the resident set; a 64 KiB one page-faulted every tensor and inflated
                                      # the timings (measured by bench_hotpath). M_MMAP_THRESHOLD; measure() trims.
_OBJECTIVE = {"bins", "appearance", "prior", "min_prob", "lookup", "init_posterior", "warmup", "estep_histogram",
              "gmm_init", "kernel_sigma", "regularization", "normalize"}
_SCHEDULE = {"optimizer", "step_size", "iterations", "pyramid", "refine_step", "refine_iterations", "sample_rate"}
_CONVERGENCE = {"tol", "window", "check_every", "min_iterations", "decays"}
_LEVEL = {"alpha", "control_spacing", "velocity_spacing", "svf_steps"}


def register(images, method: str, transform: str = "rigid", **kw):
    """``register_group(images, method, transform, **kw)`` with the old flat keywords on either API version."""
    import xreg_edu as xr
    from xreg_edu.groupwise import register_group

    params = inspect.signature(register_group).parameters
    if "objective" not in params:                      # flat-keyword engine
        return register_group(images, method=method, transform=transform, **kw)
    groups = {"objective": {}, "schedule": {}, "convergence": {}, "level": {}}
    for k, v in list(kw.items()):
        for name, keys in (("objective", _OBJECTIVE), ("schedule", _SCHEDULE), ("convergence", _CONVERGENCE),
                           ("level", _LEVEL)):
            if k in keys:
                groups[name][k] = kw.pop(k)
    if groups["level"]:
        transform = xr.TransformLevel(transform, **groups["level"])
    extra = {}
    if groups["objective"]:
        extra["objective"] = xr.ObjectiveOptions(**groups["objective"])
    if groups["schedule"]:
        extra["schedule"] = xr.ScheduleOptions(**groups["schedule"])
    if groups["convergence"]:
        extra["convergence"] = xr.ConvergenceOptions(**groups["convergence"])
    return register_group(images, method=method, transform=transform, **kw, **extra)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(fn, device: str = "cpu"):
    """Run ``fn()``; return ``(value or exception, wall seconds, CPU seconds of this thread, peak MB above start)``.

    CPU: resident set size sampled every 5 ms in a thread (peak minus the value at the start); CUDA:
    ``torch.cuda.max_memory_allocated``. An exception is returned, not raised (a failure is a result).
    """
    cuda = str(device).startswith("cuda")
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            stop.wait(0.005)

    th = None if cuda else threading.Thread(target=sample, daemon=True)
    if th:
        th.start()
    t0, c0 = time.perf_counter(), time.thread_time()
    try:
        out = fn()
    except Exception as err:          # noqa: BLE001 - a diverged run is recorded, not hidden
        out = err
    if cuda:
        torch.cuda.synchronize()
    dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
    if th:
        stop.set()
        th.join()
        peak[0] = max(peak[0], _rss_bytes())
    else:
        peak[0] = torch.cuda.max_memory_allocated()
    return out, dt, cpu, (peak[0] - base) / 2 ** 20


def machine(threads: int, device: str = "cpu") -> dict:
    """Where and how the benchmark ran (load average now, threads, torch, engine commit)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "xreg_edu"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    import xreg_edu
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": threads, "device": device,
            "torch": torch.__version__, "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "engine_commit": commit, "engine_dirty": dirty, "engine_path": str(Path(xreg_edu.__file__).parent)}


def paired_p(a, b):
    """Two-sided paired Wilcoxon signed-rank p of ``a`` vs ``b`` (NaN = failed run, ranked worse than any value)."""
    from scipy.stats import wilcoxon
    a, b = np.asarray(a, float), np.asarray(b, float)
    big = 10 * np.nanmax(np.abs(np.concatenate([a, b]))) + 1 if np.isfinite(np.concatenate([a, b])).any() else 1
    a, b = np.where(np.isnan(a), big, a), np.where(np.isnan(b), big, b)
    if np.allclose(a, b):
        return 1.0
    try:
        return float(wilcoxon(a, b).pvalue)
    except ValueError:
        return None


def cost_ratios(rows: dict, methods, reference: str = "X-CoReg") -> dict:
    """``{method: (time ratio, memory ratio)}``: mean ``cpu_s`` and mean ``peak_mb`` of each method's per-group
    ``rows[method]`` over the reference method's (memory ratio ``None`` when the reference used none)."""
    ref = rows[reference]
    t0, m0 = np.mean(ref["cpu_s"]), np.mean(ref["peak_mb"])
    return {m: (float(np.mean(rows[m]["cpu_s"]) / t0),
                float(np.mean(rows[m]["peak_mb"]) / m0) if m0 > 0 else None) for m in methods}


def stats(values) -> dict:
    """mean, sd, median, min, max over the finite values and the number of failed (NaN) ones."""
    v = np.asarray(values, float)
    f = v[np.isfinite(v)]
    if f.size == 0:
        return {"mean": None, "sd": None, "median": None, "min": None, "max": None, "n": 0,
                "failed": int(v.size)}
    return {"mean": float(f.mean()), "sd": float(f.std(ddof=1)) if f.size > 1 else 0.0,
            "median": float(np.median(f)), "min": float(f.min()), "max": float(f.max()), "n": int(f.size),
            "failed": int(v.size - f.size)}


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, torch.Tensor):
        return _clean(x.tolist())
    return x


def write(name: str, data: dict, fig=None) -> Path:
    """Write ``results/<name>.json`` (NaN -> null) and ``results/<name>.png`` (150 dpi), each atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1))
    os.replace(tmp, path)
    if fig is not None:
        png = path.with_suffix(".png")
        tmp = png.with_name("." + png.stem + ".tmp.png")
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        os.replace(tmp, png)
    return path


def plot_style():
    """matplotlib with the Agg backend and fonts readable at page width (>= 9 pt at 150 dpi, 7-inch figures)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
                         "xtick.labelsize": 9, "ytick.labelsize": 9})
    return plt


def resample(group, spacing: float, pad_mm: float = 0.0):
    """A copy of a 3-D ImageGroup on an isotropic ~``spacing`` mm grid over the same extent (trilinear images,
    nearest labels), zero-padded by ``pad_mm`` on every side. Returns the new group."""
    import torch.nn.functional as F
    from dataclasses import replace

    extent = [n * s for n, s in zip(group.shape, group.spacing)]
    shape = [max(8, round(e / spacing)) for e in extent]
    p = round(pad_mm / spacing)
    img = F.pad(F.interpolate(group.images, size=shape, mode="trilinear", align_corners=False), (p,) * 6)
    lab = None
    if group.labels is not None:
        lab = F.pad(F.interpolate(group.labels.float(), size=shape, mode="nearest").long(), (p,) * 6)
    return replace(group, images=img, labels=lab, spacing=tuple(e / n for e, n in zip(extent, shape)),
                   affines=None)


def finish(name: str, out: dict, plot, threads: int, t_start: float, device: str = "cpu") -> Path:
    """Record the machine at the end and the wall time, write the JSON first (a plotting error must not lose the
    numbers), then JSON + PNG; print where."""
    out["machine_end"] = machine(threads, device)
    out["total_wall_s"] = time.time() - t_start
    write(name, out)
    path = write(name, out, plot(out))
    print(f"wrote {path} and .png in {out['total_wall_s']:.0f} s")
    return path
