"""Benchmark: how the default schedule of a full-size 2-D slice was chosen (issue 11's 2-D time target).

Selection data only: open_ms **patient19 and patient26** (the benchmarks report patient07, which takes no part in the
choice), the axial slice of ``bench_vs_elastix`` (218 x 182 at 1 mm), T1/T2/FLAIR, ``--seeds`` seeded rigid
misalignments per patient and protocol (easy ±15°/±12 mm, the one of ``bench_vs_elastix``; hard ±30°/±30 mm), X-CoReg
rigid with every option at its default but the schedule, the random start of the posterior seeded by the group's
seed (as ``bench_rigid_table``). Candidates: the previous default (a half-resolution level, then full resolution on
10 iterations at a quarter of the step), three-level pyramids (quarter, half, full) with refinement budgets
``(half, full)``, and two levels whose coarse stage has a budget (``iterations``) and whose full-resolution stage
refines on 5 iterations at 1/8 or 1/16 of the step (``refine_step``). The rule: the candidate with the smallest
median CPU time whose median gRE is no worse than the previous default's and whose success count (gRE < 2 mm) is no lower, on both protocols. Declared history: a first
run (10 seeds, the posterior start not seeded per group, three-level candidates only) compared the easy protocol's
gRE alone and picked a three-level pyramid; on patient07 with the posterior start seeded per group that pyramid
failed 4 of 20 easy groups, so the candidates, the seeding and the rule (both protocols) were changed to the ones
here, and the three-level pyramids now lose groups at the hard protocol on the selection patients too.
One thread, a warm-up registration first; time = CPU seconds of the registration call.

Usage: ``python benchmarks/bench_schedule_2d.py [--seeds 20] [--quick]``. Writes
``benchmarks/results/bench_schedule_2d.json`` and ``.png``.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_vs_elastix as V  # noqa: E402

PATIENTS = ("patient19", "patient26")
PROTOCOLS = {"easy": dict(max_angle_deg=15.0, max_translation_mm=12.0),
             "hard": dict(max_angle_deg=30.0, max_translation_mm=30.0)}
PREVIOUS = "pyramid 2, refine 10"
CANDIDATES = {PREVIOUS: dict(pyramid=2, refine_iterations=10),
              **{f"pyramid 3, refine {a},{b}": dict(pyramid=3, refine_iterations=(a, b)) for a, b in ((5, 5), (10, 5))},
              **{f"pyramid 2, coarse {i}, refine 5 at 1/{round(1 / f)}": dict(pyramid=2, iterations=i,
                                                                                refine_iterations=5, refine_step=f)
                 for i, f in ((300, 0.0625), (60, 0.0625), (50, 0.0625), (50, 0.125))}}


def choose(summary: dict) -> str:
    """The rule of the module docstring applied to ``summary[candidate][protocol]``."""
    ref = summary[PREVIOUS]
    ok = [c for c, s in summary.items()
          if all(s[p]["gre_mm"]["median"] <= ref[p]["gre_mm"]["median"] and s[p]["successes"] >= ref[p]["successes"]
                 for p in PROTOCOLS)]
    return min(ok, key=lambda c: summary[c]["easy"]["cpu_s"]["median"])


def plot(out):
    plt = C.plot_style()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, p in zip(axes, PROTOCOLS):
        for c, s in out["summary"].items():
            ax.scatter(s[p]["cpu_s"]["median"], s[p]["gre_mm"]["median"], s=40,
                       marker="*" if c == out["chosen"] else "o", label=c)
        ax.set(xlabel="median CPU s", ylabel="median gRE (mm)", title=f"{p} protocol (patients 19, 26)")
    axes[1].legend(fontsize=9, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    import xreg_edu as xr
    from xreg_edu.evaluate import group_registration_error
    from xreg_edu.simulate import misalign
    torch.set_num_threads(1)
    seeds = 2 if a.quick else a.seeds
    t_start, out = time.time(), {"description": __doc__, "quick": a.quick, "seeds": seeds, "patients": PATIENTS,
                                 "protocols": PROTOCOLS, "candidates": CANDIDATES, "machine_start": C.machine(1)}
    groups = []
    for patient in PATIENTS:
        g, fg = V.load("2d_full", patient)
        groups += [(p, patient, s, *misalign(g, "rigid", seed=s, **PROTOCOLS[p]), fg)
                   for p in PROTOCOLS for s in range(seeds)]
    xr.register_group(groups[0][3], schedule=xr.ScheduleOptions(iterations=2))      # warm-up
    rows = []
    for name, kw in CANDIDATES.items():
        for p, patient, seed, obs, mis, fg in groups:
            r, sec, cpu, _ = C.measure(lambda: xr.register_group(obs, seed=seed, schedule=xr.ScheduleOptions(**kw)))
            rows.append({"candidate": name, "protocol": p, "patient": patient, "seed": seed, "cpu_s": cpu,
                         "wall_s": sec, "gre_mm": float(group_registration_error(mis.true_points(r.points), fg)),
                         "gre_start_mm": float(group_registration_error(mis.points, fg)),
                         "iterations": [s["iterations"] for s in r.stages]})
        print(name, "done", flush=True)
    summary = {}
    for name in CANDIDATES:
        summary[name] = {}
        for p in PROTOCOLS:
            sel = [r for r in rows if r["candidate"] == name and r["protocol"] == p]
            summary[name][p] = {"cpu_s": C.stats([r["cpu_s"] for r in sel]),
                                "gre_mm": C.stats([r["gre_mm"] for r in sel]),
                                "successes": int(sum(r["gre_mm"] < 2 for r in sel)), "groups": len(sel),
                                "worse_than_start": int(sum(r["gre_mm"] > r["gre_start_mm"] for r in sel))}
    out.update(rows=rows, summary=summary, chosen=choose(summary))
    print(f"{'candidate':24s} " + "  ".join(f"{p}: CPU s  gRE mm  ok" for p in PROTOCOLS))
    for name, s in summary.items():
        print(f"{name:24s} " + "  ".join(f"   {s[p]['cpu_s']['median']:6.3f} {s[p]['gre_mm']['median']:6.3f} "
                                         f"{s[p]['successes']:2d}/{s[p]['groups']}" for p in PROTOCOLS))
    print("chosen:", out["chosen"])
    C.finish("bench_schedule_2d", out, plot, 1, t_start)


if __name__ == "__main__":
    main()
