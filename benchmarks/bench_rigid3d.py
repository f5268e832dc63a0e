"""Benchmark: multi-modality groupwise rigid registration at the talk's scale (METHODS §8.4(d)), 3-D volumes.

Protocol: aligned 3-D groups of BrainWeb subject 47 T1/T2/PD (BrainWeb MR-simulator outputs, ``brainweb47``) and of
the real open_ms T1/T2/FLAIR/T1POST volumes of its three patients (``open_ms``), resampled to ``--spacing`` mm and
zero-padded by ``--pad-mm`` on every side; per group every image gets a seeded random rotation U(±30°) about each
axis and translation U(±30 mm) per axis, group mean zero (``xreg_edu.simulate.misalign``). Every method registers
the group with rigid transforms from the identity with ``register_group``'s defaults (the same for all). gRE
(METHODS §8.2) over the foreground (tissue labels, else image mean > 0.05) in mm; success = gRE < 2 mm; a run that
raises (e.g. the overlap collapsed) is a failure with gRE NaN, ranked worse than any value in the paired Wilcoxon
test against X-CoReg. Time-r is the ratio of mean CPU seconds of the registering thread (robust to the load of
a shared machine; wall seconds are recorded too), Mem-r the ratio of mean peak resident-memory increase.

Resolution: the talk used 1 mm volumes on a GPU. On one thread of a shared 2-core CPU one group of all six methods
costs (CPU seconds, measured 2026-12-02 on the pre-freeze engine) about 27 / 13 s at 8 mm, 31 / 28 s at 6 mm and
121 s (BrainWeb) at 4 mm; the committed JSONs are at the default 4 mm (recorded in each), one process per
dataset: ``--datasets <d> --name bench_rigid3d_<d>`` writes ``bench_rigid3d_<d>.json``. Every group records the load average and the engine's warnings (e.g.
the overlap-collapse guard). Writes ``benchmarks/results/<name>.json`` and ``.png``.

Usage: ``python benchmarks/bench_rigid3d.py [--groups 20] [--datasets brainweb47,open_ms] [--spacing 4] [--max-minutes 30] [--quick]``
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_rigid_table import METHODS  # noqa: E402  label -> (method, ObjectiveOptions fields): the same six methods
DATA = {"brainweb47": {"modalities": None, "subjects": ["subject47"], "fg": "labels"},   # tissue model > 0
        "open_ms": {"modalities": ["T1", "T2", "FLAIR", "T1POST"], "subjects": ["patient07", "patient19",
                                                                                 "patient26"],
                    "fg": "images"}}    # skull-stripped volumes: mean image > 0.05 (its labels are lesions)
TALK = {"None": (40.65, 4.29, None, None, "< 1e-10"), "GMM": (15.84, 7.78, 0.57, 0.96, "< 1e-10"),
        "CTE": (13.46, 5.04, 0.98, 1.01, "< 1e-10"), "APE": (5.36, 2.60, 2.02, 2.00, "0.61"),
        "X-CoReg": (5.52, 1.90, 1.00, 1.00, "—")}
SUCCESS_MM = 2.0


def load_volume(name: str, subject: str, spacing: float, pad_mm: float, device: str):
    """One aligned 3-D group at ``spacing`` mm (isotropic), zero-padded by ``pad_mm``; returns (group, foreground)."""
    import xreg_edu as xr

    full = xr.load_dataset(name, dim=3, size=None, subjects=subject, modalities=DATA[name]["modalities"])
    group = C.resample(full, spacing, pad_mm)
    fg = (group.labels[0, 0] > 0) if DATA[name]["fg"] == "labels" else (group.images.mean(0)[0] > 0.05)
    return group.to(device), fg.to(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=20, help="random groups per dataset (>= 20 for the table)")
    ap.add_argument("--datasets", default="brainweb47,open_ms")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--spacing", type=float, default=4.0,
                    help="isotropic voxel size of the volumes (mm; the committed JSONs: 4)")
    ap.add_argument("--pad-mm", type=float, default=12.0, help="zero margin added on every side (mm)")
    ap.add_argument("--max-angle", type=float, default=30.0)
    ap.add_argument("--max-translation", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="2 groups, 3 methods, 16 mm: a smoke test")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="wall-time budget: start no new group after it (the JSON records how many ran)")
    ap.add_argument("--name", default="bench_rigid3d")
    args = ap.parse_args(argv)
    if args.quick:
        args.groups, args.spacing, args.name = 2, 16.0, args.name + "_quick"
        args.methods = "X-CoReg,APE,GMM-sym"
    torch.set_num_threads(args.threads)
    from xreg_edu.evaluate import group_registration_error
    from xreg_edu.simulate import misalign

    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    start = C.machine(args.threads, args.device)
    t_start = time.time()
    out = {"benchmark": "bench_rigid3d", "protocol": {
        "spacing_mm": args.spacing, "pad_mm": args.pad_mm, "max_angle_deg": args.max_angle,
        "max_translation_mm": args.max_translation, "group_mean_zero": True, "groups_per_dataset": args.groups,
        "success_mm": SUCCESS_MM, "max_minutes": args.max_minutes, "settings": "register_group defaults (rigid), identical for every method",
        "time_ratio": "mean CPU seconds of the registering thread / X-CoReg's",
        "memory_ratio": "mean peak RSS increase during the call / X-CoReg's",
        "failures": "a run that raises: gRE NaN, counted as failure, ranked worst in the Wilcoxon test"},
        "machine_start": start, "talk": {k: dict(zip(("gre_mean", "gre_sd", "time_r", "gpu_r", "p"), v))
                                          for k, v in TALK.items()}, "datasets": {}}
    for ds in [d for d in args.datasets.split(",") if d]:
        subjects = DATA[ds]["subjects"]
        cache = {}
        rows = {m: {"gre": [], "wall_s": [], "cpu_s": [], "peak_mb": [], "iterations": [], "error": [],
                    "warnings": []} for m in methods}
        rows["None"] = {"gre": [], "loadavg_1min": []}
        shape = None
        for g in range(args.groups):
            if args.max_minutes is not None and time.time() - t_start > 60 * args.max_minutes:
                print(f"time budget of {args.max_minutes} min reached after {g} groups", flush=True)
                break
            subj = subjects[g % len(subjects)]
            if subj not in cache:
                cache[subj] = load_volume(ds, subj, args.spacing, args.pad_mm, args.device)
            group, fg = cache[subj]
            shape = list(group.shape)
            obs, mis = misalign(group, "rigid", seed=g, max_angle_deg=args.max_angle,
                                max_translation_mm=args.max_translation)
            rows["None"]["gre"].append(float(group_registration_error(mis.points, fg)))
            rows["None"]["loadavg_1min"].append(os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
            line = [f"{ds} group {g:2d} ({subj}): none {rows['None']['gre'][-1]:6.2f}"]
            for m in methods:
                method, kw = METHODS[m]
                r, wall, cpu, mb = C.measure(lambda: C.register(obs, method, "rigid", seed=g, device=args.device,
                                                                **kw), args.device)
                if isinstance(r, Exception):
                    gre, its, err, warn = float("nan"), None, f"{type(r).__name__}: {r}", []
                else:
                    gre = float(group_registration_error(mis.true_points(r.points), fg))
                    its, err, warn = r.iterations, None, list(getattr(r, "warnings", []))
                    if not np.isfinite(gre):
                        err = "non-finite gRE"
                row = rows[m]
                for k, v in (("gre", gre), ("wall_s", wall), ("cpu_s", cpu), ("peak_mb", mb), ("iterations", its),
                             ("error", err), ("warnings", warn)):
                    row[k].append(v)
                line.append(f"{m} {gre:7.2f} ({cpu:5.1f}s{' ERR' if err else ''}{' W' if warn else ''})")
            print(" | ".join(line), flush=True)
        out["datasets"][ds] = {"shape": shape, "subjects": subjects, "per_group": rows,
                               "groups_run": len(rows["None"]["gre"]),
                               "summary": summarise(rows, methods, len(rows["None"]["gre"]))}
        print_table(ds, out["datasets"][ds]["summary"])
    C.finish(args.name, out, lambda o: plot(o, methods), args.threads, t_start, args.device)
    return 0


def summarise(rows, methods, n):
    ref = rows.get("X-CoReg")
    summ = {}
    for m, row in rows.items():
        g = np.asarray(row["gre"], float)
        s = {"gre": C.stats(g), "success": int(np.sum(g < SUCCESS_MM)), "groups": n,
             "worse_than_start": int(np.sum(~(g <= np.asarray(rows["None"]["gre"])))) if m != "None" else None}
        if m != "None":
            s["cpu_s"] = C.stats(row["cpu_s"])
            s["wall_s"] = C.stats(row["wall_s"])
            s["peak_mb"] = C.stats(row["peak_mb"])
            s["errors"] = sum(e is not None for e in row["error"])
            s["warned"] = sum(bool(w) for w in row["warnings"])
        if ref is not None and m != "X-CoReg":
            s["p_vs_xcoreg"] = C.paired_p(g, ref["gre"])
        summ[m] = s
    if ref is not None:
        for m, (time_r, mem_r) in C.cost_ratios(rows, methods).items():
            summ[m].update(time_r=time_r, mem_r=mem_r)
    return summ


def print_table(ds, summ):
    print(f"\n{ds}: | method | success | gRE mean ± sd (mm) | median | Time-r | Mem-r | p vs X-CoReg | talk gRE |")
    for m, s in summ.items():
        g = s["gre"]
        gre = f"{g['mean']:.2f} ± {g['sd']:.2f}" if g["mean"] is not None else "—"
        med = f"{g['median']:.2f}" if g["median"] is not None else "—"
        p = s.get("p_vs_xcoreg")
        talk = TALK.get(m)
        print(f"| {m} | {s['success']}/{s['groups']} | {gre} (failed {g['failed']}) | {med} | "
              f"{s.get('time_r', float('nan')):.2f} | {s.get('mem_r') or float('nan'):.2f} | "
              f"{'—' if p is None else f'{p:.2g}'} | {'—' if talk is None else f'{talk[0]} ± {talk[1]}'} |")


def plot(out, methods):
    plt = C.plot_style()
    dss = list(out["datasets"])
    fig, axes = plt.subplots(1, len(dss), figsize=(3.6 * len(dss) + 0.4, 3.6), squeeze=False)
    for ax, ds in zip(axes[0], dss):
        rows = out["datasets"][ds]["per_group"]
        names = ["None"] + methods
        data = [np.asarray(rows[n]["gre"], float) for n in names]
        for i, d in enumerate(data):
            ok = np.isfinite(d)
            x = i + np.linspace(-0.18, 0.18, len(d))
            ax.scatter(x[ok], d[ok], s=9, color="tab:blue" if i else "tab:gray", alpha=0.8)
            if (~ok).any():
                ax.scatter(x[~ok], np.full((~ok).sum(), 300.0), s=16, marker="x", color="tab:red")
        ax.set_yscale("log")
        ax.set_ylim(0.05, 500)
        ax.axhline(SUCCESS_MM, color="tab:red", lw=0.8, ls="--", label=f"success < {SUCCESS_MM:g} mm")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_ylabel("gRE (mm, log scale)")
        sp = out["protocol"]["spacing_mm"]
        ax.set_title(f"{ds}, {len(data[0])} groups, {sp:g} mm")
        ax.legend(loc="upper right", fontsize=9)
    fig.suptitle(f"3-D rigid, ±{out['protocol']['max_angle_deg']:g}° per axis, "
                 f"±{out['protocol']['max_translation_mm']:g} mm per axis (× = run failed)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
