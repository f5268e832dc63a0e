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
  threads = 1 and elastix ``MaximumNumberOfThreads 1``); peak memory = that process's peak RSS
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, includes the Python/torch/ITK runtime, ~0.3-0.5 GB), time = wall
  seconds of the registration call alone (data loading excluded). ``os.getloadavg()`` is recorded before/after:
  the machine is shared, so wall times carry its load.
- Item 4 of issue 11: xreg_edu seconds per voxel x image x iteration (the iterations of all its stages, each
  weighted by its stage's voxel count), next to a memory-bandwidth bound: bytes/s of a large numpy copy and an
  estimate of the bytes one voxel x image x iteration touches.

Usage: ``python benchmarks/bench_vs_elastix.py [--groups 10] [--max-minutes 20] [--quick]``.
Writes ``benchmarks/results/bench_vs_elastix.json`` and ``.png``.
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

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {      # name -> (dim, spacing mm (None: native), misalignment ranges)
    "2d_full": (2, None, dict(max_angle_deg=15.0, max_translation_mm=12.0)),
    "3d_2mm": (3, 2.0, dict(max_angle_deg=10.0, max_translation_mm=10.0)),
    "3d_2mm_talk": (3, 2.0, dict(max_angle_deg=30.0, max_translation_mm=30.0)),
    "3d_1mm": (3, None, dict(max_angle_deg=10.0, max_translation_mm=10.0)),
}
MODALITIES = ["T1", "T2", "FLAIR"]
# bytes one voxel x image x iteration touches in the xreg_edu hot path (float32, forward + backward), estimated:
# forward: points 3x4 written + read, trilinear warp 8 taps x 4 read + 4 written, intensity, bin weights 4 taps x
# (index 8 + weight 4), posterior K=4 x 4 read, histogram scatter 4 taps x K x 4; backward: about twice the forward.
BYTES_PER_VOXEL_IMAGE_ITER = 3 * (3 * 4 * 2 + 8 * 4 + 4 + 4 * 12 + 4 * 4 + 4 * 4 * 4)


def elastix_parameters(dim: int, resolutions: int = 3):
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
        "Optimizer": ["AdaptiveStochasticGradientDescent"], "MaximumNumberOfIterations": ["500"],
        "AutomaticParameterEstimation": ["true"], "ASGDParameterEstimationMethod": ["Original"],
        "ImageSampler": ["RandomCoordinate"], "NumberOfSpatialSamples": ["2048"],
        "NewSamplesEveryIteration": ["true"], "CheckNumberOfSamples": ["true"],
        "MaximumNumberOfSamplingAttempts": ["8"], "UseDirectionCosines": ["true"],
        "WriteResultImage": ["false"], "ResultImageFormat": ["nii"], "MaximumNumberOfThreads": ["1"],
        "SubtractMean": ["true"],
    }
    p.AddParameterMap(m)
    return p


def load(setting: str):
    """(aligned ImageGroup, foreground [*S]) of a setting: open_ms patient07 T1/T2/FLAIR on the full MNI field of
    view (no ROI crop): 2-D the loader's axial slice, 218 x 182 at 1 mm; 3-D 182 x 218 x 182 at 1 mm (trilinear
    to 91 x 109 x 91 at 2 mm). Intensities / 99.5th foreground percentile, as ``bench_rigid_table``."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    import xreg_edu as xr
    from xreg_edu.datasets import fetch
    from xreg_edu.group import ImageGroup
    dim, spacing, _ = SETTINGS[setting]
    files = {p.name.split("_")[0]: p for p in fetch("open_ms") if "patient07" in str(p)}
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
    g = ImageGroup(images=img, spacing=sp, names=[f"patient07/{m}" for m in MODALITIES],
                   meta={"dataset": "open_ms", "fov": "full"})
    return g, g.images.mean(0)[0] > 0.05


def run_xreg(obs):
    import xreg_edu as xr
    t0, c0 = time.perf_counter(), time.process_time()
    r = xr.register_group(obs)
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    cost = sum(s["iterations"] * int(np.prod(s["shape"])) for s in r.stages) * obs.images.shape[0]
    return r.points, sec, {"cpu_seconds": cpu, "iterations": sum(s["iterations"] for s in r.stages), "voxel_image_iterations": cost,
                           "stages": [{k: s[k] for k in ("name", "shape", "iterations", "converged")}
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


def bandwidth() -> float:
    """Bytes/s of a 256 MB numpy copy (read + write counted), best of 5."""
    a = np.ones(2 ** 25, dtype=np.float64)
    b = np.empty_like(a)
    best = min(_timed(np.copyto, b, a) for _ in range(5))
    return 2 * a.nbytes / best


def _timed(f, *a):
    t = time.perf_counter()
    f(*a)
    return time.perf_counter() - t


def _hwm_gb(pid: int) -> float | None:
    """Peak resident set (VmHWM) of a live process in GB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 2 ** 20
    except (OSError, StopIteration, ValueError):
        return None


def spawn(setting, seed, tool, timeout):
    """One registration in a fresh subprocess; its VmHWM is polled, so a run killed at ``timeout`` still reports
    the peak RSS it had reached."""
    cmd = [sys.executable, __file__, "--worker", setting, str(seed), tool]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0, peak = time.time(), 0.0
    while p.poll() is None and time.time() - t0 < timeout:
        peak = max(peak, _hwm_gb(p.pid) or 0.0)
        try:
            p.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
    if p.poll() is None:
        p.kill()
        p.wait()
        return {"setting": setting, "seed": seed, "tool": tool, "error": f"timeout after {timeout} s",
                "peak_rss_gb_at_timeout": peak, "elapsed_s_at_timeout": time.time() - t0}
    out, err = p.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not lines:
        return {"setting": setting, "seed": seed, "tool": tool, "error": err[-800:]}
    return json.loads(lines[-1][7:])


def summarise(runs):
    out = {}
    for r in runs:
        if "error" in r:
            continue
        d = out.setdefault(r["setting"], {}).setdefault(r["tool"], {"seconds": [], "gre_mm": [], "peak_rss_gb": [],
                                                                    "gre_start_mm": [], "cpu_seconds": []})
        for k in d:
            d[k].append(r[k])
    table = {}
    for s, tools in out.items():
        for t, d in tools.items():
            table.setdefault(s, {})[t] = {"groups": len(d["seconds"]), "seconds_median": float(np.median(d["seconds"])),
                                          "cpu_seconds_median": float(np.median(d["cpu_seconds"])),
                                          "gre_median_mm": float(np.median(d["gre_mm"])),
                                          "gre_max_mm": float(np.max(d["gre_mm"])),
                                          "gre_start_median_mm": float(np.median(d["gre_start_mm"])),
                                          "peak_rss_gb_max": float(np.max(d["peak_rss_gb"]))}
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--groups-1mm", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=20.0)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--quick", action="store_true", help="1 group per setting")
    ap.add_argument("--name", default="bench_vs_elastix", help="results/<name>.json|.png")
    ap.add_argument("--run-timeout", type=float, default=None, help="seconds per registration (default: budget)")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print("RESULT " + json.dumps(worker(a.worker[0], int(a.worker[1]), a.worker[2])), flush=True)
        return 0
    import torch
    torch.set_num_threads(1)
    settings = a.settings.split(",")
    groups = 1 if a.quick else a.groups
    load0, t_start = os.getloadavg(), time.time()
    bw = bandwidth()
    runs, deadline = [], t_start + 60 * a.max_minutes
    planned = {s: (min(groups, a.groups_1mm) if s == "3d_1mm" else groups) for s in settings}
    stopped = None
    for seed in range(groups):                     # round-robin: every setting gets the same number of groups
        for s in settings:
            if seed >= planned[s]:
                continue
            if time.time() > deadline:
                stopped = f"time budget of {a.max_minutes} min reached before seed {seed} of {s}"
                break
            for tool in ("xreg_edu", "elastix"):
                r = spawn(s, seed, tool, timeout=int(a.run_timeout) if a.run_timeout else max(120, int(deadline - time.time()) + 120))
                runs.append(r)
                print(json.dumps({k: r.get(k) for k in ("setting", "seed", "tool", "seconds", "gre_mm", "gre_start_mm",
                                                        "peak_rss_gb", "error")}), flush=True)
        if stopped:
            break
    load1 = os.getloadavg()
    table = summarise(runs)
    xr_cost = [r["seconds"] / r["voxel_image_iterations"] for r in runs
               if r.get("tool") == "xreg_edu" and "voxel_image_iterations" in r and r["setting"] != "2d_full"]
    cost = float(np.median(xr_cost)) if xr_cost else float("nan")
    bound = BYTES_PER_VOXEL_IMAGE_ITER / bw
    targets = {}
    t2 = table.get("3d_2mm", {})
    if "xreg_edu" in t2 and "elastix" in t2:
        targets["3d_2mm_time_le_half_elastix"] = t2["xreg_edu"]["seconds_median"] <= 0.5 * t2["elastix"]["seconds_median"]
        targets["3d_2mm_gre_median_le_0.3mm"] = t2["xreg_edu"]["gre_median_mm"] <= 0.3
    if "xreg_edu" in table.get("3d_1mm", {}):
        targets["3d_1mm_peak_rss_lt_8GB"] = table["3d_1mm"]["xreg_edu"]["peak_rss_gb_max"] < 8.0
    if "xreg_edu" in table.get("2d_full", {}):
        targets["2d_full_median_le_0.5s"] = table["2d_full"]["xreg_edu"]["seconds_median"] <= 0.5
    print(f"\n{'setting':14s} {'tool':9s} {'n':>3s} {'time s':>8s} {'gRE0 mm':>8s} {'gRE mm':>7s} {'max':>7s} "
          f"{'RSS GB':>7s} {'cpu s':>8s}")
    for s, tools in table.items():
        for t, d in tools.items():
            print(f"{s:14s} {t:9s} {d['groups']:3d} {d['seconds_median']:8.2f} {d['gre_start_median_mm']:8.2f} "
                  f"{d['gre_median_mm']:7.3f} {d['gre_max_mm']:7.3f} {d['peak_rss_gb_max']:7.2f} {d['cpu_seconds_median']:8.2f}")
    print(f"\nxreg_edu 3-D cost {cost * 1e9:.2f} ns per voxel x image x iteration; bandwidth {bw / 1e9:.2f} GB/s "
          f"(numpy copy) x ~{BYTES_PER_VOXEL_IMAGE_ITER} B touched -> bound {bound * 1e9:.3f} ns "
          f"(cost / bound = {cost / bound:.1f}x)")
    print("targets:", targets, "| load", load0, "->", load1)
    out = {"description": __doc__, "quick": a.quick, "groups_requested": planned, "stopped_early": stopped,
           "gre_definition": "xreg_edu.evaluate.group_registration_error(mis.true_points(points), mean image > 0.05):"
                             " mean over images of the mean foreground distance of psi_j(x) = g_j(T_j(x)) from the "
                             "group mean; T_j for elastix = grid + transformix deformation field (stack axis dropped)",
           "threads": {"torch": 1, "itk": 1}, "loadavg_before": load0, "loadavg_after": load1,
           "cpu_count": os.cpu_count(), "wall_minutes": (time.time() - t_start) / 60,
           "bandwidth_bytes_per_s": bw, "bytes_per_voxel_image_iteration_estimate": BYTES_PER_VOXEL_IMAGE_ITER,
           "xreg_seconds_per_voxel_image_iteration_3d_median": cost, "bandwidth_bound_seconds": bound,
           "cost_over_bound": cost / bound, "table": table, "targets": targets, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    name = a.name + ("_quick" if a.quick else "")
    tmp = RESULTS / f".{name}.json.tmp"
    tmp.write_text(json.dumps(out, indent=1, default=str))
    tmp.replace(RESULTS / f"{name}.json")
    plot(table, RESULTS / f"{name}.png")
    return 0


def plot(table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    settings = list(table)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, key, label in zip(axes, ("seconds_median", "gre_median_mm", "peak_rss_gb_max"),
                              ("median wall time (s)", "median gRE (mm)", "peak RSS (GB)")):
        for k, tool in enumerate(("xreg_edu", "elastix")):
            vals = [table[s].get(tool, {}).get(key, np.nan) for s in settings]
            ax.bar(np.arange(len(settings)) + (k - 0.5) * 0.4, vals, 0.4, label=tool)
        ax.set_xticks(np.arange(len(settings)), settings, rotation=20, fontsize=9)
        ax.set_ylabel(label, fontsize=10)
        if key == "seconds_median":
            ax.set_yscale("log")
    axes[0].legend(fontsize=9)
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=150)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
