"""Benchmark: iterative deformable groupwise registration of real multi-sequence cardiac MR (MyoPS test patients).

Protocol: the 12 MyoPS test patients (Case3026-Case3037, the card's ``test_subjects``), bSSFP (C0), LGE and T2 of
the two short-axis slices with the largest labelled area each (2-D, ``--size`` pixels over the loader's cardiac
crop). On top of the organisers' alignment, every image gets a seeded random cubic B-spline FFD (control spacing a
quarter of the field of view, control displacements U(±``--magnitude``) mm, group mean zero). APE, CTE and X-CoReg
register each group with an FFD and, separately, with an SVF (``register_group`` defaults of each kind, identical
for every method; no mask). Expert labels (LV myocardium, LV and RV blood pools) are warped into the common space:
groupwise Dice per structure, ASSD (mm), % of pixels with det J <= 0 (mean over the images), paired Wilcoxon p of
the mean Dice against X-CoReg with the same transform, and against no registration. To explain CTE's behaviour,
CTE's own objective (``cte_loss``) is evaluated on the true correction (the observed images warped by the exact
inverse of the simulated FFD, so interpolated twice like every result), the misaligned start and every method's
result: whether CTE's optimum is the true alignment is then a measured fact, not a guess.

Writes ``benchmarks/results/bench_deformable_myops.json`` and ``.png``.

Usage: ``python benchmarks/bench_deformable_myops.py [--size 80] [--magnitude 10] [--quick]``
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import _common as C  # noqa: E402

METHODS = ("ape", "cte", "xcoreg")
LABELS = {"ape": "APE", "cte": "CTE", "xcoreg": "X-CoReg"}
TRANSFORMS = ("ffd", "svf")
STRUCTURES = {1: "LV myocardium", 2: "LV blood pool", 3: "RV blood pool"}


def test_groups(size: int, slices_per_patient: int, patients=None):
    """[(name, aligned 2-D ImageGroup)] for the test patients' most-labelled slices, rank-major."""
    import xreg_edu as xr

    spec = xr.datasets.get_spec("myops_cmr")
    per_patient = []
    for p in (patients or spec.extra["test_subjects"]):
        vol = xr.load_dataset("myops_cmr", dim=3, size=size, subjects=p)
        area = (vol.labels[0, 0] > 0).flatten(1).sum(1)
        per_patient.append([])
        for k in torch.argsort(area, descending=True)[:slices_per_patient].tolist():
            g = replace(vol, images=vol.images[:, :, k].contiguous(), labels=vol.labels[:, :, k].contiguous(),
                        spacing=tuple(vol.spacing[1:]), affines=None,
                        meta={**vol.meta, "slice_index": k})
            per_patient[-1].append((f"{p}/slice{k}", g))
    # the most-labelled slice of every patient first, then the second ones
    return [pp[i] for i in range(slices_per_patient) for pp in per_patient if i < len(pp)]


def evaluate(labels, spacing, disp=None):
    from xreg_edu import evaluate as ev
    per = ev.group_dice(labels, classes=list(STRUCTURES), per_class=True)
    row = {"dice": ev.group_dice(labels, classes=list(STRUCTURES)),
           **{f"dice_{c}": per[c] for c in STRUCTURES}, "assd": ev.assd(labels, spacing, classes=list(STRUCTURES))}
    if disp is not None:
        row["folding_pct"] = float(ev.folding_percentage(disp, spacing).mean())
        row["mean_disp_mm"] = float(disp.norm(dim=1).mean())
    return row


def cte_loss(images: torch.Tensor) -> float:
    """CTE's objective (spec §6.3, ``L = sum_j H(T | u_j)``, nats) of a fixed group ``[N, 1, H, W]``: the images
    normalised as ``register_group`` does, over the central box of the grid (the same pixels for every group state,
    away from the zero padding a warp brings in at the border)."""
    from xreg_edu.groupwise.api import _normalise
    from xreg_edu.groupwise.objectives import CTE
    from xreg_edu.groupwise.objectives.base import GroupSample

    shape = tuple(images.shape[2:])
    box = torch.zeros(shape, dtype=torch.bool)
    box[tuple(slice(n // 8, n - n // 8) for n in shape)] = True
    values = _normalise(images.detach(), None).flatten(1)
    sample = GroupSample(values, box.flatten(), box.flatten().nonzero()[:, 0], shape)
    with torch.no_grad():
        return float(CTE().loss(sample))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=100, help="iterations per stage (same for every method)")
    ap.add_argument("--magnitude", type=float, default=10.0, help="FFD control displacement range (mm)")
    ap.add_argument("--slices", type=int, default=2, help="slices per test patient (12 patients)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 groups, 48 px, 30 iterations: a smoke test")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="wall-time budget: start no new group after it (the JSON records how many ran)")
    ap.add_argument("--name", default="bench_deformable_myops")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from xreg_edu.simulate import misalign
    from xreg_edu.spatial import warp

    extra = {"iterations": args.iterations}
    patients = None
    if args.quick:
        args.size, args.slices, args.name = 48, 1, args.name + "_quick"
        patients, extra = ["Case3026", "Case3027"], {"iterations": 30}
    t_start = time.time()
    out = {"benchmark": "bench_deformable_myops", "protocol": {
        "data": "MyoPS test patients Case3026-Case3037, C0/LGE/T2, 2-D short-axis slices",
        "size_px": args.size, "slices_per_patient": args.slices, "misalignment": "random cubic B-spline FFD, control "
        "spacing = FOV/4, control displacements U(±magnitude) mm, group mean zero", "magnitude_mm": args.magnitude, "max_minutes": args.max_minutes,
        "settings": f"register_group defaults per transform kind except iterations={extra['iterations']} "
                    "(same for every method), no mask",
        "dice": "groupwise mean over ordered pairs of the mean Dice of the 3 structures",
        "p": "paired two-sided Wilcoxon over groups of the mean Dice",
        "cte_loss": "CTE's objective (nats) of the group state (start; truth = the observed images warped by the "
                    "inverse of the simulated FFD; each result), images normalised as register_group does, central "
                    "3/4 box of the grid"},
        "machine_start": C.machine(args.threads), "structures": STRUCTURES}
    groups = test_groups(args.size, args.slices, patients)
    configs = [f"{m}-{t}" for t in TRANSFORMS for m in METHODS]
    rows = {"none": [], **{c: [] for c in configs}}
    for gi, (name, g) in enumerate(groups):
        if args.max_minutes is not None and time.time() - t_start > 60 * args.max_minutes:
            print(f"time budget of {args.max_minutes} min reached after {gi} groups", flush=True)
            groups = groups[:gi]
            break
        obs, mis = misalign(g, "ffd", seed=gi, magnitude_mm=args.magnitude)
        rows["none"].append({"group": name, **evaluate(obs.labels, g.spacing),
                             "true_disp_mm": float(mis.displacement.norm(dim=1).mean()),
                             "cte_loss": cte_loss(obs.images), "cte_loss_truth": cte_loss(warp(obs.images, mis.correction(),
                                                                                 g.spacing))})
        line = [f"{name}: none {rows['none'][-1]['dice']:.3f}"]
        for c in configs:
            m, t = c.split("-")
            r, wall, cpu, mb = C.measure(lambda: C.register(obs, m, t, seed=gi, **extra))
            if isinstance(r, Exception):
                row = {"error": f"{type(r).__name__}: {r}", "dice": float("nan")}
            else:
                row = evaluate(r.apply_labels(obs.labels), g.spacing, r.displacement())
                row.update(iterations=r.iterations, cte_loss=cte_loss(r.warped))
            row.update(group=name, wall_s=wall, cpu_s=cpu, peak_mb=mb)
            rows[c].append(row)
            line.append(f"{c} {row['dice']:.3f}")
        print(" | ".join(line), flush=True)

    summ = {}
    for c, rs in rows.items():
        s = {k: C.stats([r.get(k, float("nan")) for r in rs])
             for k in ("dice", *[f"dice_{i}" for i in STRUCTURES], "assd", "folding_pct", "mean_disp_mm", "cpu_s",
                       "cte_loss", "cte_loss_truth")
             if any(k in r for r in rs)}
        if c != "none":
            t = c.split("-")[1]
            s["p_vs_xcoreg"] = None if c.startswith("xcoreg") else C.paired_p(
                [r["dice"] for r in rs], [r["dice"] for r in rows[f"xcoreg-{t}"]])
            s["p_vs_none"] = C.paired_p([r["dice"] for r in rs], [r["dice"] for r in rows["none"]])
            s["better_than_none"] = int(sum(a["dice"] > b["dice"] for a, b in zip(rs, rows["none"])))
        summ[c] = s
    out.update(groups=[n for n, _ in groups], per_group=rows, summary=summ, machine_end=C.machine(args.threads),
               total_wall_s=time.time() - t_start)
    print(f"\n| config | Dice | myo | LV | RV | ASSD (mm) | folding % | p vs X-CoReg | p vs none |")
    for c, s in summ.items():
        f = (lambda k: f"{s[k]['mean']:.3f} ± {s[k]['sd']:.3f}" if k in s and s[k]["mean"] is not None else "—")
        p1, p0 = s.get("p_vs_xcoreg"), s.get("p_vs_none")
        print(f"| {c} | {f('dice')} | {f('dice_1')} | {f('dice_2')} | {f('dice_3')} | {f('assd')} | "
              f"{f('folding_pct')} | {'—' if p1 is None else f'{p1:.2g}'} | {'—' if p0 is None else f'{p0:.2g}'} |")
    C.write(args.name, out)  # the numbers first: a plotting error must not lose them
    path = C.write(args.name, out, plot(rows, configs))
    print(f"wrote {path} and .png in {out['total_wall_s']:.0f} s")
    return 0


def plot(rows, configs):
    plt = C.plot_style()
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.4))
    names = ["none"] + configs
    for ax, key, lab in ((axes[0], "dice", "groupwise Dice (3 structures)"), (axes[1], "assd", "ASSD (mm)")):
        data = [[r[key] for r in rows[n] if key in r and np.isfinite(r[key])] for n in names]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(names) + 1), [n.replace("xcoreg", "X-CoReg").replace("ape", "APE")
                                                 .replace("cte", "CTE") for n in names], rotation=45, ha="right")
        ax.set_ylabel(lab)
    fig.suptitle(f"MyoPS test patients, {len(rows['none'])} groups, random FFD misalignment")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
