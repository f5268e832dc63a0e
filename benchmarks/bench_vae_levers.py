"""Issue 9's levers on the encoder's cross-sequence agreement, each measured on the VALIDATION patients.

Every row trains BIGR-lite CD with :func:`xreg_edu.vae.train.train` (stage A: distil the X-CoReg EM teacher of the
aligned training slices; stage B: heads on the MAP-ELBO alone, encoder frozen unless anchored) and reports the
experts' cross-sequence pair agreement on the aligned validation slices (Case3021–3025) and the groupwise Dice of
the validation groups (:func:`xreg_edu.vae.data.heldout_groups` with ``part="val"``). The test patients are never
used here: this is where the recipe of the shipped weights is chosen.

Rows: the previous recipe (300 distillation steps); longer distillation; teacher classes merged to what N − 1
sequences can tell apart (K = 4, 3; :func:`xreg_edu.vae.teacher.merge_plan`); a smaller field of view (dilated
encoder, no pooling) against the U-Net; an alternating teacher/student round
(:func:`xreg_edu.vae.teacher.refine_with_student`); the encoder anchored by the distillation loss while the heads train.

Writes benchmarks/results/bench_vae_levers.json. Run: ``python benchmarks/bench_vae_levers.py`` (about 20 min on one
thread; ``XREG_EDU_QUICK=1``: two rows, a few steps).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from xreg_edu.evaluate import group_dice
from xreg_edu.vae.data import heldout_groups, split_slices
from xreg_edu.vae.inference import register
from xreg_edu.vae.model import BIGRConfig
from xreg_edu.vae.teacher import refine_with_student, teacher_posteriors
from xreg_edu.vae.train import agreement, train

QUICK = os.environ.get("XREG_EDU_QUICK", "0") not in ("", "0")
OUT = Path(__file__).resolve().parent / "results"
STEPS = 250                      # stage-B steps of every row (the shipped recipe)
#: (name, lever, options)
ROWS = [
    ("previous recipe (distil 300)", "baseline", dict(channels=5, distill=300)),
    ("distil 2000", "longer distillation", dict(channels=5, distill=2000)),
    ("distil 2000, K 5 -> 4 merged", "(a) merged teacher classes", dict(channels=4, distill=2000)),
    ("distil 2000, K 5 -> 3 merged", "(a) merged teacher classes", dict(channels=3, distill=2000)),
    ("distil 2000, dilated encoder", "(c) field of view (smaller: no pooling)", dict(channels=5, distill=2000,
                                                                                   encoder="dilated")),
    ("K 3 merged + 1 teacher/student round", "(b) alternating", dict(channels=3, distill=2000, rounds=1)),
    ("K 3 merged, anchored encoder", "(d) encoder anchored (weight 0.3)", dict(channels=3, distill=2000, anchor=0.3)),
]


def run_row(opts, slices, val_slices, val_groups, teachers):
    cfg = BIGRConfig(variant="CD", channels=opts["channels"], encoder=opts.get("encoder", "unet"))
    teacher = teachers[opts["channels"]]
    distill = 20 if QUICK else opts["distill"]
    steps = 10 if QUICK else STEPS
    t0 = time.perf_counter()
    model, _ = train(cfg, slices=slices, teacher=teacher, distill_steps=distill, steps=steps, seed=0,
                     anchor=opts.get("anchor", 0.0), progress=False)
    for _ in range(opts.get("rounds", 0)):
        teacher = refine_with_student(model, slices, teacher)
        model, _ = train(cfg, slices=slices, teacher=teacher, distill_steps=distill // 2, steps=steps, seed=0,
                         encoder_state=model.encoder.state_dict(), progress=False)
    seconds = time.perf_counter() - t0
    dice = [float(group_dice(register(model, g).warped_labels)) for g, _ in val_groups]
    return {"agreement_val": agreement(model, val_slices), "dice_val": float(np.mean(dice)), "per_group_dice": dice,
            "train_seconds": seconds}


def main():
    torch.set_num_threads(int(os.environ.get("XREG_EDU_THREADS", "1")))
    t_start = time.perf_counter()
    slices = split_slices("myops_cmr", 64, "train")
    val_slices = split_slices("myops_cmr", 64, "val")
    val_groups = heldout_groups(part="val")
    rows = ROWS[:2] if QUICK else ROWS
    teachers, plans = {}, {}
    for k in sorted({r[2]["channels"] for r in rows}):
        teachers[k], _, plans[k] = teacher_posteriors(slices, k=5, classes=k)
    none = [float(group_dice(g.labels)) for g, _ in val_groups]
    out = []
    for name, lever, opts in rows:
        r = run_row(opts, slices, val_slices, val_groups, teachers)
        out.append({"name": name, "lever": lever, **opts, "merge_plan": plans[opts["channels"]], **r})
        print(f"{name:<40} agreement {r['agreement_val']:.3f}  Dice {np.mean(none):.3f} -> {r['dice_val']:.3f}  "
              f"({r['train_seconds']:.0f} s)", flush=True)
    result = {"quick": QUICK, "threads": torch.get_num_threads(), "loadavg": list(os.getloadavg()),
              "protocol": {"part": "val", "groups": len(val_groups), "function": "xreg_edu.vae.data.heldout_groups",
                           "stage_b_steps": STEPS, "seed": 0},
              "dice_none_val": float(np.mean(none)), "rows": out, "bench_seconds": time.perf_counter() - t_start}
    OUT.mkdir(exist_ok=True)
    (OUT / ("bench_vae_levers_quick.json" if QUICK else "bench_vae_levers.json")).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
