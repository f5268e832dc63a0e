"""Benchmark: xreg_edu groupwise rigid (``register_group`` defaults, X-CoReg) vs elastix groupwise, side by side.

Same groups, same gRE. Aligned real open_ms T1/T2/FLAIR (patient07) groups get seeded random rigid misalignments
(``xreg_edu.simulate.misalign``, group mean zero); each tool registers the observed group from the identity.

- xreg_edu: ``register_group(group)`` (method ``xcoreg``, transform ``rigid``, every option at its default; the
  3-D default schedule is ``groupwise.schedule.default_schedule``).
- elastix (itk-elastix): the 2-D/3-D images stacked along a last axis, ``EulerStackTransform`` +
  ``PCAMetric2``, 3 resolutions (smoothing pyramid, the stack axis never smoothed), adaptive stochastic gradient
  descent with 2048 random samples/iteration, 500 iterations per resolution (the configuration of the issue's review).
- gRE (METHODS §8.2, ``xreg_edu.evaluate.group_registration_error``) over the foreground (mean image > 0.05) of the
  points ``psi_j = g_j(T_j(x))``: ``T_j`` maps the common grid into observed image j (xreg_edu: ``result.points``;
  elastix: the grid plus transformix's deformation field of the stack transform, the stack-axis component dropped),
  ``g_j`` the known misalignment (``Misalignment.true_points``). The same function on the same points for both.
- Every registration runs in a fresh subprocess with one thread (``torch.set_num_threads(1)``; ITK global default
  threads = 1 and elastix ``MaximumNumberOfThreads 1``), after a 2-iteration warm-up call of the same tool on the
  same group (first-call costs: imports, kernels, allocator); peak memory = that process's peak RSS
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, includes the Python/torch/ITK runtime, ~0.3-0.5 GB), time = wall
  seconds of the registration call alone (data loading excluded). ``os.getloadavg()`` is recorded before/after:
  the machine is shared, so wall times carry its load.
- Item 4 of issue 11: xreg_edu wall seconds per voxel x image x iteration (the iterations of all its stages, each
  weighted by its stage's grid voxels: the warp and the E-step visit every voxel, a sampled stage's histograms
  only its sample), next to the memory-bandwidth bound of ``bench_hotpath`` (bytes/s of a large numpy copy and
  the bytes one voxel x image x iteration must move, ``bench_hotpath.BYTES_PER_VOXEL_IMAGE_ITER``).

Usage: ``python benchmarks/bench_vs_elastix.py [--groups 20] [--groups-1mm 10] [--jobs 2] [--max-minutes 55]
[--quick]`` (issue 11: >= 10 groups per setting, >= 20 at the talk's scale). With ``--jobs 2`` (default) the two tools of a group run at the same time, one thread each on the
2 cores, so both see the same machine load. Writes ``benchmarks/results/bench_vs_elastix.json`` and ``.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SETTINGS = {      # name -> (dim, spacing mm (None: native), misalignment ranges)
    "2d_full": (2, None, dict(max_angle_deg=15.0, max_translation_mm=12.0)),
    "3d_2mm": (3, 2.0, dict(max_angle_deg=10.0, max_translation_mm=10.0)),
    "3d_2mm_talk": (3, 2.0, dict(max_angle_deg=30.0, max_translation_mm=30.0)),
    "3d_1mm": (3, None, dict(max_angle_deg=10.0, max_translation_mm=10.0)),
}
MODALITIES = ["T1", "T2", "FLAIR"]
def elastix_parameters(dim: int, resolutions: int = 3, iterations: int = 500):
    import itk
    p = itk.ParameterObject.New()
    sched = []
    for r in range(resolutions):
        s = 2 ** (resolutions - 1 - r)
        sched += [str(s)] * dim + ["0"]
    m = {
        "FixedInternalImagePixelType": ["float"], "MovingInternalImagePixelType": ["float"],
        "Registration": ["MultiResolutionRegistration"],
        "FixedImagePyramid": ["FixedSmoothingImagePyramid"], "MovingImagePyramid": ["MovingSmoothingImagePyramid"],
        "ImagePyramidSchedule": sched, "NumberOfResolutions": [str(resolutions)],
        "Interpolator": ["ReducedDimensionBSplineInterpolator"],
        "ResampleInterpolator": ["FinalReducedDimensionBSplineInterpolator"], "Resampler": ["DefaultResampler"],
        "BSplineInterpolationOrder": ["1"], "FinalBSplineInterpolationOrder": ["3"],
        "Metric": ["PCAMetric2"], "Transform": ["EulerStackTransform"],
        "AutomaticScalesEstimationStackTransform": ["true"], "HowToCombineTransforms": ["Compose"],
        "Optimizer": ["AdaptiveStochasticGradientDescent"], "MaximumNumberOfIterations": [str(iterations)],
        "AutomaticParameterEstimation": ["true"], "ASGDParameterEstimationMethod": ["Original"],
        "ImageSampler": ["RandomCoordinate"], "NumberOfSpatialSamples": ["2048"],
        "NewSamplesEveryIteration": ["true"], "CheckNumberOfSamples": ["true"],
        "MaximumNumberOfSamplingAttempts": ["8"], "UseDirectionCosines": ["true"],
        "WriteResultImage": ["false"], "ResultImageFormat": ["nii"], "MaximumNumberOfThreads": ["1"],
        "SubtractMean": ["true"],
    }
    p.AddParameterMap(m)
    return p


def load(setting: str, patient: str = "patient07"):
    """(aligned ImageGroup, foreground [*S]) of a setting: open_ms ``patient`` T1/T2/FLAIR on the full MNI field of
    view (no ROI crop): 2-D the loader's axial slice, 218 x 182 at 1 mm; 3-D 182 x 218 x 182 at 1 mm (trilinear
    to 91 x 109 x 91 at 2 mm). Intensities / 99.5th foreground percentile. ``bench_rigid_table`` and
    ``bench_schedule_2d`` load their 2-D groups here too."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    import xreg_edu as xr
    from xreg_edu.datasets import fetch
    from xreg_edu.group import ImageGroup
    dim, spacing, _ = SETTINGS[setting]
    files = {p.name.split("_")[0]: p for p in fetch("open_ms") if patient in str(p)}
    images = []
    k = None
    if dim == 2:
        ref = xr.load_dataset("open_ms", size=None, modalities=MODALITIES)
        k = ref.meta["slice_index"]
        k = int(k[0]) if isinstance(k, (list, tuple)) else int(k)
    for mod in MODALITIES:
        vol = nib.as_closest_canonical(nib.load(str(files[mod]))).get_fdata(dtype=np.float32)   # RAS [x, y, z]
        arr = vol[:, :, k].T[::-1] if dim == 2 else vol.transpose(2, 1, 0)[:, ::-1]              # [(z,) y, x]
        hi = np.percentile(arr[arr > 0], 99.5) if (arr > 0).any() else 1.0
        images.append(np.clip(arr / hi, 0, None))
    img = torch.from_numpy(np.ascontiguousarray(np.stack(images)[:, None])).float()
    sp = (1.0,) * dim
    if spacing is not None:
        shape = [round(n / spacing) for n in img.shape[2:]]
        img = F.interpolate(img, size=shape, mode="trilinear", align_corners=False)
        sp = tuple(n0 / n for n0, n in zip(images[0].shape, shape))
    g = ImageGroup(images=img, spacing=sp, names=[f"{patient}/{m}" for m in MODALITIES],
                   meta={"dataset": "open_ms", "fov": "full"})
    return g, g.images.mean(0)[0] > 0.05


def run_xreg(obs):
    import xreg_edu as xr
    from dataclasses import replace
    from xreg_edu.groupwise.schedule import default_schedule
    warm = replace(default_schedule(obs.shape), iterations=2, refine_iterations=1)   # the same stages, 2 + 1 + ..
    xr.register_group(obs, schedule=warm)                                     # warm-up: imports, kernels, allocator
    t0, c0 = time.perf_counter(), time.process_time()
    r = xr.register_group(obs)
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    cost = sum(s["iterations"] * int(np.prod(s["shape"])) for s in r.stages) * obs.images.shape[0]
    return r.points, sec, {"cpu_seconds": cpu, "iterations": sum(s["iterations"] for s in r.stages), "voxel_image_iterations": cost,
                           "stages": [{k: s[k] for k in ("name", "shape", "iterations", "converged", "sample_rate", "seconds")}
                                      for s in r.stages], "warnings": list(r.warnings)}


def run_elastix(obs):
    import itk
    import torch
    from xreg_edu.spatial import identity_grid
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
    imgs = obs.images[:, 0].numpy().astype(np.float32)         # [N, *S]
    shape, sp = imgs.shape[1:], list(obs.spacing)
    dim = len(shape)
    stack = itk.GetImageFromArray(np.ascontiguousarray(imgs))  # ITK axes: reversed (x = last array axis), then stack
    stack.SetSpacing([float(s) for s in sp[::-1]] + [1.0])
    stack.SetOrigin([-(n - 1) / 2 * s for n, s in zip(shape[::-1], sp[::-1])] + [0.0])
    params = elastix_parameters(dim)
    itk.elastix_registration_method(stack, stack, parameter_object=elastix_parameters(dim, 1, 2),   # warm-up
                                    log_to_console=False, number_of_threads=1)
    t0, c0 = time.perf_counter(), time.process_time()
    _, tp = itk.elastix_registration_method(stack, stack, parameter_object=params, log_to_console=False,
                                            number_of_threads=1)
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    import tempfile
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:                 # transformix writes deformationField.nii in the cwd
        os.chdir(tmp)
        try:
            field = itk.transformix_deformation_field(stack, tp)   # [N, *S, dim+1] ITK order (x, y, (z), stack)
        finally:
            os.chdir(here)
    disp = np.asarray(field)[..., :dim][..., ::-1].copy()       # -> array-axis order
    disp = torch.from_numpy(disp).float().movedim(-1, 1)        # [N, dim, *S]
    points = identity_grid(shape, sp) + disp
    return points, sec, {"cpu_seconds": cpu, "transform_parameters": [float(v) for v in tp.GetParameterMap(0)["TransformParameters"]]}


def worker(setting: str, seed: int, tool: str) -> dict:
    import torch
    torch.set_num_threads(1)
    from xreg_edu.evaluate import group_registration_error
    from xreg_edu.simulate import misalign
    g, fg = load(setting)
    obs, mis = misalign(g, "rigid", seed=seed, **SETTINGS[setting][2])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    points, sec, extra = (run_xreg if tool == "xreg_edu" else run_elastix)(obs)
    gre = float(group_registration_error(mis.true_points(points), fg))
    gre0 = float(group_registration_error(mis.points, fg))
    return {"setting": setting, "seed": seed, "tool": tool, "shape": list(g.shape), "spacing": list(g.spacing),
            "seconds": sec, "gre_mm": gre, "gre_start_mm": gre0, "peak_rss_gb": resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "rss_before_registration_gb": rss0, **extra}


def _hwm_gb(pid: int) -> float | None:
    """Peak resident set (VmHWM) of a live process in GB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 2 ** 20
    except (OSError, StopIteration, ValueError):
        return None


def spawn(jobs, timeout):
    """Run the registrations ``jobs`` (``(setting, seed, tool)``) at once, each in a fresh single-thread subprocess;
    their VmHWM is polled, so a run killed at ``timeout`` still reports the peak RSS it had reached."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", s, str(seed), tool], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for s, seed, tool in jobs]
    t0, peak = time.time(), [0.0] * len(procs)
    while any(p.poll() is None for p in procs) and time.time() - t0 < timeout:
        for k, p in enumerate(procs):
            if p.poll() is None:
                peak[k] = max(peak[k], _hwm_gb(p.pid) or 0.0)
        time.sleep(0.5)
    out = []
    for (setting, seed, tool), p, hwm in zip(jobs, procs, peak):
        head = {"setting": setting, "seed": seed, "tool": tool}
        if p.poll() is None:
            p.kill()
            p.wait()
            out.append({**head, "error": f"timeout after {timeout} s", "peak_rss_gb_at_timeout": hwm,
                        "elapsed_s_at_timeout": time.time() - t0})
            continue
        stdout, stderr = p.communicate()
        lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
        out.append(json.loads(lines[-1][7:]) if p.returncode == 0 and lines else {**head, "error": stderr[-800:]})
    return out


def summarise(runs):
    """Per setting and tool: time, gRE (start and end), success (gRE < 2 mm), results worse than the start, peak
    RSS; failed runs (timeouts, errors) counted."""
    from _common import stats
    table = {}
    for r in runs:
        table.setdefault(r["setting"], {}).setdefault(r["tool"], []).append(r)
    out = {}
    for setting, tools in table.items():
        for tool, rs in tools.items():
            ok = [r for r in rs if "error" not in r]
            gre = [r["gre_mm"] for r in ok]
            out.setdefault(setting, {})[tool] = {
                "groups": len(rs), "failed_runs": len(rs) - len(ok), "seconds": stats([r["seconds"] for r in ok]),
                "cpu_seconds": stats([r["cpu_seconds"] for r in ok]), "gre_mm": stats(gre),
                "gre_start_mm": stats([r["gre_start_mm"] for r in ok]),
                "success_rate_gre_lt_2mm": float(np.mean([g < 2.0 for g in gre])) if gre else None,
                "worse_than_start": int(sum(r["gre_mm"] > r["gre_start_mm"] for r in ok)),
                "peak_rss_gb_max": max([r.get("peak_rss_gb") or r.get("peak_rss_gb_at_timeout") or 0.0 for r in rs])}
    return out


def targets(table) -> dict:
    """Issue 11's targets, each True / False (absent when its setting did not run); the time targets on wall
    seconds and on CPU seconds of the (single-thread) process, which the load of the shared machine inflates less."""
    t = {}
    a = table.get("3d_2mm", {})
    if a.get("xreg_edu", {}).get("gre_mm", {}).get("n") and a.get("elastix", {}).get("seconds", {}).get("n"):
        for key, label in (("seconds", "wall"), ("cpu_seconds", "cpu")):
            t[f"3d_2mm_{label}_time_le_half_elastix"] = \
                a["xreg_edu"][key]["median"] <= 0.5 * a["elastix"][key]["median"]
        t["3d_2mm_gre_median_le_0.3mm"] = a["xreg_edu"]["gre_mm"]["median"] <= 0.3
    b = table.get("3d_1mm", {}).get("xreg_edu")
    if b:
        t["3d_1mm_peak_rss_lt_8GB"] = b["peak_rss_gb_max"] < 8.0 and b["failed_runs"] == 0
    c = table.get("2d_full", {}).get("xreg_edu")
    if c and c["seconds"]["n"]:
        t["2d_full_wall_median_le_0.5s"] = c["seconds"]["median"] <= 0.5
        t["2d_full_cpu_median_le_0.5s"] = c["cpu_seconds"]["median"] <= 0.5
    d = table.get("3d_2mm_talk", {}).get("xreg_edu")
    if d and d["gre_mm"]["n"]:
        t["talk_no_result_worse_than_start"] = d["worse_than_start"] == 0 and d["failed_runs"] == 0
        t["talk_success_ge_90pct"] = d["success_rate_gre_lt_2mm"] >= 0.9 and d["failed_runs"] == 0
        t["talk_groups_ge_20"] = d["groups"] >= 20
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=20, help="seeded groups per setting")
    ap.add_argument("--groups-1mm", type=int, default=10, help="groups of the 1 mm setting")
    ap.add_argument("--max-minutes", type=float, default=55.0, help="no new group starts after this")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--jobs", type=int, choices=(1, 2), default=2,
                    help="2: the two tools of a group run at the same time (one thread each, on 2 cores)")
    ap.add_argument("--quick", action="store_true", help="1 group per setting")
    ap.add_argument("--name", default="bench_vs_elastix", help="results/<name>.json|.png")
    ap.add_argument("--run-timeout", type=float, default=900.0, help="seconds per registration")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print("RESULT " + json.dumps(worker(a.worker[0], int(a.worker[1]), a.worker[2])), flush=True)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import finish, machine
    from bench_hotpath import BYTES_PER_VOXEL_IMAGE_ITER, cost_report, memory_bandwidth
    settings = a.settings.split(",")
    groups = 1 if a.quick else a.groups
    planned = {s: (a.groups_1mm if s == "3d_1mm" and not a.quick else groups) for s in settings}
    t_start = time.time()
    out = {"description": __doc__, "quick": a.quick, "groups_requested": planned, "jobs": a.jobs,
           "machine_start": machine(1), "bandwidth_bytes_per_s": memory_bandwidth(),
           "bytes_per_voxel_image_iteration_estimate": BYTES_PER_VOXEL_IMAGE_ITER,
           "gre_definition": "xreg_edu.evaluate.group_registration_error(mis.true_points(points), mean image > 0.05):"
                             " mean over images of the mean foreground distance of psi_j(x) = g_j(T_j(x)) from the "
                             "group mean; T_j for elastix = grid + transformix deformation field (stack axis dropped)",
           "threads": {"torch": 1, "itk": 1}, "runs": [], "stopped_early": None}
    deadline = t_start + 60 * a.max_minutes
    # round-robin over the settings (they get groups at the same pace), the slow 1 mm setting after the others
    order = [(s, seed) for seed in range(max(planned.values())) for s in settings if s != "3d_1mm"] + \
        [("3d_1mm", seed) for seed in range(planned.get("3d_1mm", 0))]
    for s, seed in order:
        if seed >= planned[s]:
            continue
        if time.time() > deadline:
            out["stopped_early"] = f"time budget of {a.max_minutes} min reached before seed {seed} of {s}"
            break
        jobs = [(s, seed, tool) for tool in ("xreg_edu", "elastix")]
        for batch in ([jobs] if a.jobs == 2 else [[j] for j in jobs]):
            for r in spawn(batch, a.run_timeout):
                r["loadavg_after"] = list(os.getloadavg())
                out["runs"].append(r)
                print(json.dumps({k: r.get(k) for k in ("setting", "seed", "tool", "seconds", "gre_mm",
                                                        "gre_start_mm", "peak_rss_gb", "error")}), flush=True)
    out["table"] = table = summarise(out["runs"])
    out["targets"] = targets(table)
    xr3 = [r for r in out["runs"] if r["tool"] == "xreg_edu" and "voxel_image_iterations" in r
           and r["setting"] != "2d_full"]
    for key in ("seconds", "cpu_seconds"):              # wall, and CPU (less inflated by the machine's load)
        cost = [r[key] / r["voxel_image_iterations"] for r in xr3]
        c = float(np.median(cost)) if cost else None
        out[f"xreg_{key}_per_voxel_image_iteration_3d_median"] = c
        out[f"cost_vs_bandwidth_bound_{key}"] = cost_report(c, out["bandwidth_bytes_per_s"]) if c else None
    print(f"\n{'setting':12s} {'tool':9s} {'n':>3s} {'fail':>4s} {'time s':>7s} {'cpu s':>7s} {'gRE0 mm':>8s} {'gRE mm':>7s} "
          f"{'max':>7s} {'<2mm':>5s} {'worse':>5s} {'RSS GB':>6s}")
    for s, tools in table.items():
        for t, d in tools.items():
            f = lambda x: float("nan") if x is None else x   # noqa: E731
            print(f"{s:12s} {t:9s} {d['groups']:3d} {d['failed_runs']:4d} {f(d['seconds']['median']):7.2f} "
                  f"{f(d['cpu_seconds']['median']):7.2f} "
                  f"{f(d['gre_start_mm']['median']):8.2f} {f(d['gre_mm']['median']):7.3f} {f(d['gre_mm']['max']):7.3f} "
                  f"{f(d['success_rate_gre_lt_2mm']):5.2f} {d['worse_than_start']:5d} {d['peak_rss_gb_max']:6.2f}")
    for key in ("seconds", "cpu_seconds"):
        b = out[f"cost_vs_bandwidth_bound_{key}"]
        if b:
            print(f"xreg_edu 3-D cost ({key}) {b['ns']:.1f} ns per voxel x image x iteration (grid voxels of every "
                  f"stage); bandwidth {b['bandwidth_gb_s']:.1f} GB/s (numpy copy) x "
                  f"{b['bytes_per_voxel_image_iteration']:.0f} B -> bound {b['bound_ns']:.2f} ns "
                  f"(cost / bound = {b['ratio']:.0f}x)")
    print("targets:", out["targets"])
    finish(a.name + ("_quick" if a.quick else ""), out, plot, 1, t_start)
    return 0


def plot(out):
    """Median wall time (log), gRE per group (dots) and peak RSS per setting, both tools side by side."""
    from _common import plot_style
    plt = plot_style()
    table, runs = out["table"], out["runs"]
    settings = list(table)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for k, tool in enumerate(("xreg_edu", "elastix")):
        x = np.arange(len(settings)) + (k - 0.5) * 0.4
        axes[0].bar(x, [table[s].get(tool, {}).get("seconds", {}).get("median") or np.nan for s in settings], 0.4,
                    label=tool)
        for i, s in enumerate(settings):
            g = [r["gre_mm"] for r in runs if r["setting"] == s and r["tool"] == tool and "error" not in r]
            axes[1].plot([x[i]] * len(g), g, "o", ms=3, color=f"C{k}", label=tool if i == 0 else None)
        axes[2].bar(x, [table[s].get(tool, {}).get("peak_rss_gb_max", np.nan) for s in settings], 0.4, label=tool)
    for ax, label in zip(axes, ("median wall time (s)", "gRE per group (mm)", "peak RSS (GB)")):
        ax.set_xticks(np.arange(len(settings)), settings, rotation=20)
        ax.set_ylabel(label)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[1].axhline(2.0, color="0.5", lw=0.8, ls="--")
    axes[0].legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
