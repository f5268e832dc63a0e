"""Learning-based groupwise baselines (APE / CTE / X-metric networks) on the shared held-out MyoPS groups.

Rows None, APE, CTE, X-CoReg (networks) of the talk's MS-CMRSeg table, evaluated on
``xreg_edu.vae.data.heldout_groups()`` (test patients Case3026-3037, N = 3 bSSFP/LGE/T2, native alignment + seeded
15 mm SVF misalignment; the same groups as ``bench_vae.py``): groupwise DSC (mean, myocardium, LV, RV), ASSD (mm),
folding %, #Params, inference time, paired Wilcoxon p vs None, and every per-group value (so ``bench_vae.py`` can
test Ours-CD against these rows on the same groups). The talk's numbers (spec §8.5) are printed beside ours.
Also writes each network's held-out numbers into its ``xreg_edu/weights/regnet_*.json`` (the .pt is untouched,
its sha256 stays valid).

    python benchmarks/bench_regnet.py        # -> benchmarks/results/bench_regnet.json + .png
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xreg_edu._files import atomic_path  # noqa: E402
from xreg_edu.vae import regnet as R  # noqa: E402
from xreg_edu.vae.data import HELDOUT, heldout_groups  # noqa: E402
from xreg_edu.vae.networks import count_parameters  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
ROWS = {"None": None, "APE": "ape", "CTE": "cte", "X-CoReg": "xmetric"}
#: the talk's MS-CMRSeg deep table (spec §8.5): DSC mean ± sd, ASSD mean ± sd (mm), #Params (M)
TALK = {"None": {"dice": (0.722, 0.104), "assd": (3.86, 1.43), "params_m": None},
        "APE": {"dice": (0.746, 0.101), "assd": (3.48, 1.36), "params_m": 0.154},
        "CTE": {"dice": (0.766, 0.100), "assd": (3.15, 1.32), "params_m": 0.154},
        "X-CoReg": {"dice": (0.757, 0.107), "assd": (3.31, 1.40), "params_m": 0.154}}
CLASSES = {1: "myocardium", 2: "LV", 3: "RV"}


def _summary(values) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": float(np.nanmean(a)), "sd": float(np.nanstd(a, ddof=1))}


def _update_weights_json(loss: str, held_out: dict) -> None:
    from xreg_edu.vae.weights import meta_path, read_meta

    path = R.pretrained_path(loss)
    meta = read_meta(path)
    meta["held_out"] = held_out
    with atomic_path(meta_path(path)) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1) + "\n")


def main() -> dict:
    from scipy.stats import wilcoxon

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    groups = [g for g, _ in heldout_groups()]
    rows, per_group = {}, {}
    for name, loss in ROWS.items():
        model = None if loss is None else R.load_pretrained(loss)
        res = [R.evaluate_group(model, g) for g in groups]
        per_group[name] = {"dice": [r["dice"] for r in res], "assd": [r["assd"] for r in res],
                           "folding_percent": [r["folding_percent"] for r in res],
                           **{f"dice_{c}": [r["dice_per_class"].get(k, float("nan")) for r in res]
                              for k, c in CLASSES.items()},
                           "seconds": [r["seconds"] for r in res]}
        pg = per_group[name]
        rows[name] = {"dice": _summary(pg["dice"]), **{f"dice_{c}": _summary(pg[f"dice_{c}"]) for c in CLASSES.values()},
                      "assd": _summary(pg["assd"]), "folding_percent": _summary(pg["folding_percent"]),
                      "params": None if model is None else count_parameters(model),
                      "inference_seconds_median": float(np.median(pg["seconds"])) if model is not None else None,
                      "talk": TALK[name]}
        if model is not None:
            rows[name]["train"] = {k: model.meta[k] for k in ("command", "sha256")}
            rows[name]["train"]["seconds"] = model.meta["train"]["seconds"]
    for name in list(ROWS)[1:]:
        diff = np.subtract(per_group[name]["dice"], per_group["None"]["dice"])
        rows[name]["dice_gain_vs_none"] = _summary(diff)
        rows[name]["groups_improved"] = int((diff > 0).sum())
        rows[name]["wilcoxon_p_vs_none"] = float(wilcoxon(per_group[name]["dice"], per_group["None"]["dice"]).pvalue)
    result = {"protocol": {"heldout_groups": dict(HELDOUT), "groups": len(groups), "n": 3,
                           "subjects": "test patients Case3026-3037 (vae.data.patient_split()['test'])"},
              "rows": rows, "per_group": per_group,
              "machine": {"threads": torch.get_num_threads(), "loadavg": list(os.getloadavg()),
                          "torch": torch.__version__, "python": platform.python_version(),
                          "cpu_count": os.cpu_count(), "time_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())},
              "note": "networks trained without labels (similarity + smoothness only); the machine was shared, "
                      "so timings carry the recorded load"}
    OUT.mkdir(parents=True, exist_ok=True)
    with atomic_path(OUT / "bench_regnet.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
    for name, loss in ROWS.items():
        if loss is not None:
            r = rows[name]
            _update_weights_json(loss, {"groups": len(groups), "protocol": "xreg_edu.vae.data.heldout_groups()",
                                        "dice": r["dice"], "dice_none": rows["None"]["dice"],
                                        **{f"dice_{c}": r[f"dice_{c}"] for c in CLASSES.values()},
                                        "assd": r["assd"], "folding_percent": r["folding_percent"],
                                        "wilcoxon_p_vs_none": r["wilcoxon_p_vs_none"]})
    _plot(result)
    print(f"{'method':10s} {'DSC ours':>14s} {'DSC talk':>14s} {'myo':>6s} {'LV':>6s} {'RV':>6s} "
          f"{'ASSD ours':>12s} {'ASSD talk':>12s} {'fold%':>6s} {'params':>7s} {'p vs None':>9s}")
    for name, r in rows.items():
        t = TALK[name]
        p = r.get("wilcoxon_p_vs_none")
        print(f"{name:10s} {r['dice']['mean']:.3f} ± {r['dice']['sd']:.3f}  {t['dice'][0]:.3f} ± {t['dice'][1]:.3f} "
              f"{r['dice_myocardium']['mean']:6.3f} {r['dice_LV']['mean']:6.3f} {r['dice_RV']['mean']:6.3f} "
              f"{r['assd']['mean']:5.2f} ± {r['assd']['sd']:4.2f} {t['assd'][0]:5.2f} ± {t['assd'][1]:4.2f} "
              f"{r['folding_percent']['mean']:6.3f} {r['params'] or '-':>7} {'-' if p is None else f'{p:.2g}':>9}")
    return result


def _plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ROWS)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=150)
    for ax, key, label in ((axes[0], "dice", "groupwise DSC"), (axes[1], "assd", "ASSD (mm)")):
        data = [result["per_group"][n][key] for n in names]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), [n if n == "None" else f"{n}\n(network)" for n in names])
        talk = [TALK[n][key][0] for n in names]
        ax.plot(range(1, len(names) + 1), talk, "r*", ms=10, label="talk (MS-CMRSeg)")
        ax.set_ylabel(label, fontsize=10)
        ax.tick_params(labelsize=9)
        ax.legend(fontsize=9)
    fig.suptitle(f"Learning-based baselines on {result['protocol']['groups']} held-out MyoPS groups (N = 3)",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(OUT / "bench_regnet.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
