"""BIGR-lite (hierarchical VAE, our reconstruction) versus X-CoReg on the same held-out real groups.

1. Inference time per group versus group size N, next to X-CoReg (``xreg_edu.register_group``) on the same groups.
   Target: the VAE's inference is >= 10x faster than X-CoReg at N = 32.
2. Accuracy table in the talk's format (DSC, ASSD mm, folding %, time s) at N = 3 over every held-out slice of the
   myops_cmr test patients (synthetic SVF misalignment on top of the native alignment).

Writes benchmarks/results/bench_vae.json, bench_vae.png and bench_vae.txt (the tables, also printed).
Run: ``python benchmarks/bench_vae.py`` (``XREG_EDU_QUICK=1`` for a smaller sweep).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from xreg_edu.evaluate import assd, folding_percentage, group_dice
from xreg_edu.spatial import warp_labels
from xreg_edu.vae.data import make_group, split_slices
from xreg_edu.vae.inference import register
from xreg_edu.vae.train import load_pretrained

QUICK = os.environ.get("XREG_EDU_QUICK", "0") not in ("", "0")
OUT = Path(__file__).resolve().parent / "results"
XCOREG = dict(method="xcoreg", transform="svf", num_classes=4)      # and L = 32 bins (ObjectiveOptions default)


def run_xcoreg(group, iterations):
    import xreg_edu

    t0 = time.perf_counter()
    res = xreg_edu.register_group(group, seed=0, schedule=xreg_edu.ScheduleOptions(iterations=iterations), **XCOREG)
    seconds = time.perf_counter() - t0
    disp = res.points - xreg_edu.spatial.identity_grid(group.shape, group.spacing)
    return res.points, disp, seconds


def metrics(labels, points, disp, spacing, seconds):
    wl = warp_labels(labels, points, spacing)
    return {"dsc": float(group_dice(wl)), "assd": float(assd(wl, spacing)),
            "folding": float(folding_percentage(disp, spacing).mean()), "seconds": seconds}


def main():
    torch.set_num_threads(int(os.environ.get("XREG_EDU_THREADS", "1")))  # 1 thread: fastest on a busy 2-core box
    model = load_pretrained("CD")
    _, test = split_slices("myops_cmr", size=model.train_info.get("size", 64))
    iters = 60 if QUICK else 150
    rows = {"None": [], "X-CoReg": [], "BIGR-lite CD": []}
    test_slices = test[:4] if QUICK else test
    for i, s in enumerate(test_slices):
        group, _ = make_group(s, 3, seed=5000 + i)
        grid = torch.zeros(3, group.dim, *group.shape)
        ident = grid + __import__("xreg_edu").spatial.identity_grid(group.shape, group.spacing)
        rows["None"].append(metrics(group.labels, ident, grid, group.spacing, 0.0))
        pts, disp, sec = run_xcoreg(group, iters)
        rows["X-CoReg"].append(metrics(group.labels, pts, disp, group.spacing, sec))
        res = register(model, group)
        rows["BIGR-lite CD"].append(metrics(group.labels, res.points, res.displacement, group.spacing, res.seconds))
    table = {}
    for name, r in rows.items():
        table[name] = {k: [float(np.mean([x[k] for x in r])), float(np.std([x[k] for x in r]))]
                       for k in ("dsc", "assd", "folding", "seconds")}
    # timing versus N (same groups for both methods)
    sizes = [2, 4, 8, 16, 32] if QUICK else [2, 4, 8, 16, 32, 64, 128]
    timing = []
    for n in sizes:
        group, _ = make_group(test[0], n, seed=7000 + n)
        register(model, group)  # warm-up
        vae = min(register(model, group).seconds for _ in range(3))
        rec = {"n": n, "vae_seconds": vae, "vae_dsc": float(group_dice(register(model, group).warped_labels)),
               "dsc_before": float(group_dice(group.labels))}
        if n <= 32:
            pts, disp, sec = run_xcoreg(group, iters)
            rec.update(xcoreg_seconds=sec, xcoreg_dsc=float(group_dice(warp_labels(group.labels, pts, group.spacing))),
                       speedup=sec / vae)
        timing.append(rec)
    # VAE Dice before/after versus N on the held-out patients (the groups of tests/test_vae.py)
    by_n = []
    for n, groups in ((3, None), (10, 4), (60, 2), (120, 1)):
        sl = test if groups is None else test[:groups]
        b, a, f = [], [], []
        for i, s in enumerate(sl):
            group, _ = make_group(s, n, seed=1000 + i)
            res = register(model, group)
            b.append(float(group_dice(group.labels)))
            a.append(float(group_dice(res.warped_labels)))
            f.append(float(folding_percentage(res.displacement, group.spacing).max()))
        by_n.append({"n": n, "groups": len(sl), "dsc_before": float(np.mean(b)), "dsc_after": float(np.mean(a)),
                     "max_folding_percent": max(f)})
    result = {"device": "cpu", "threads": torch.get_num_threads(), "quick": QUICK, "xcoreg": {**XCOREG,
              "iterations": iters}, "groups_n3": len(test_slices), "accuracy_n3": table, "timing": timing, "dice_vs_n": by_n,
              "model": {"variant": model.config.variant, "train": model.train_info}}
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_vae.json").write_text(json.dumps(result, indent=1))

    lines = []

    def emit(text=""):
        print(text)
        lines.extend(str(text).split("\n"))

    emit(f"\nAccuracy on {len(test_slices)} held-out myops_cmr groups (N = 3, SVF misalignment), mean ± std")
    emit(f"{'method':<14} {'DSC':>13} {'ASSD (mm)':>13} {'% |J|<=0':>10} {'time (s)':>10}")
    for name, t in table.items():
        emit(f"{name:<14} {t['dsc'][0]:.3f} ± {t['dsc'][1]:.3f} {t['assd'][0]:6.2f} ± {t['assd'][1]:4.2f} "
              f"{t['folding'][0]:10.4f} {t['seconds'][0]:10.3f}")
    emit("\nBIGR-lite CD on held-out groups: groupwise Dice before -> after, versus N")
    emit(f"{'N':>4} {'groups':>6} {'before':>7} {'after':>7} {'max % |J|<=0':>13}")
    for r in by_n:
        emit(f"{r['n']:>4} {r['groups']:>6} {r['dsc_before']:7.3f} {r['dsc_after']:7.3f} {r['max_folding_percent']:13.4f}")
    emit("\nInference time per group versus N")
    emit(f"{'N':>4} {'VAE (s)':>9} {'X-CoReg (s)':>12} {'speed-up':>9} {'DSC none':>9} {'DSC VAE':>8} {'DSC X-CoReg':>12}")
    for r in timing:
        emit(f"{r['n']:>4} {r['vae_seconds']:9.4f} {r.get('xcoreg_seconds', float('nan')):12.3f} "
              f"{r.get('speedup', float('nan')):9.1f} {r['dsc_before']:9.3f} {r['vae_dsc']:8.3f} "
              f"{r.get('xcoreg_dsc', float('nan')):12.3f}")

    (OUT / "bench_vae.txt").write_text("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ns = [r["n"] for r in timing]
    ax[0].loglog(ns, [r["vae_seconds"] for r in timing], "o-", label="BIGR-lite CD (one forward pass)")
    xs = [r for r in timing if "xcoreg_seconds" in r]
    ax[0].loglog([r["n"] for r in xs], [r["xcoreg_seconds"] for r in xs], "s-", label=f"X-CoReg ({iters} its)")
    ax[0].set_xlabel("group size N")
    ax[0].set_ylabel("seconds per group (CPU)")
    ax[0].legend()
    ax[1].plot(ns, [r["dsc_before"] for r in timing], "k--", label="none")
    ax[1].plot(ns, [r["vae_dsc"] for r in timing], "o-", label="BIGR-lite CD")
    ax[1].plot([r["n"] for r in xs], [r["xcoreg_dsc"] for r in xs], "s-", label="X-CoReg")
    ax[1].set_xscale("log")
    ax[1].set_xlabel("group size N")
    ax[1].set_ylabel("groupwise Dice")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(OUT / "bench_vae.png", dpi=100)


if __name__ == "__main__":
    main()
