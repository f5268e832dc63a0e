"""Benchmark: spatiotemporal (groupwise) motion correction of a perfusion series and of a cine series, every slice.

- **Perfusion (the talk's experiment):** the QPerf arterial-input-function series (``qperf``, subject ``aif``: 99
  frames, 64 x 64, one LV/RV blood-pool mask for the series). All frames are registered at once by X-CoReg.
- **Perfusion, myocardial crops:** the QPerf ``rest`` (68 frames, 51 x 51) and ``stress`` (59 frames, 40 x 40)
  series, Gd concentration maps that the QPerf pipeline has probably motion-corrected already and that have no
  masks: a control (registration should change little), read out in the central box of the field of view.
- **Cine:** every slice of ``cine_cmr`` (10 slices x 17 phases, one label map per slice, classes undocumented
  upstream; the heart ROI is every non-zero label). All 17 frames of each slice are registered at once.

The label map of a series belongs to one frame, which the providers did not record: it is found as the frame with
the largest I(U_j; Z) (chapter 5). Read-outs, before and after: the time-intensity curve of each region (before:
the mask on the fixed image grid; after: the mask carried into the common space by that frame's transform), its
total variation (sum of |frame-to-frame change|, lower = less motion-induced jitter), the mean over frames of
I(U_j; Z) with the carried label map (agreement of every frame with the labelled anatomy), and the temporal
standard deviation inside the ROI, and the pixel-wise total variation (mean over the ROI's pixels of the total
variation of each pixel's own time curve, the read-out that needs no region to be drawn). Per-frame Dice needs a label map per frame, which neither dataset has.

Writes ``benchmarks/results/bench_motion.json`` and ``.png``.

Usage: ``python benchmarks/bench_motion.py [--transform ffd] [--iterations 40] [--quick]``
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def pixel_tv(series: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over the ``mask`` pixels of the total variation of each pixel's time curve; ``series [T, H, W]``."""
    return float((series[1:] - series[:-1]).abs().sum(0)[mask].mean())


def central_box(shape) -> torch.Tensor:
    """``[H, W]`` bool: the middle half of the field of view along each axis (away from the warp's border)."""
    box = torch.zeros(shape, dtype=torch.bool)
    box[tuple(slice(n // 4, n - n // 4) for n in shape)] = True
    return box


def correct(frames, labels, regions: dict, transform: str, iterations: int, seed: int = 0):
    """Register a series; returns the before/after read-outs (curves per region, agreement, temporal std).

    ``labels`` (one label map of the series, ``[T, 1, H, W]``) may be None: the read-outs are then those of the
    central box of the field of view (``regions`` is ignored), and no frame is matched to a label map.
    """
    from xreg_edu import info
    ref, agree_before, k = None, None, None
    if labels is not None:
        k = int(labels.max()) + 1
        z = info.labels_to_posterior(labels[0, 0], num_classes=k)
        agree_before = info.x_metric_terms(frames.images, z, bins=32)
        ref = int(agree_before.argmax())
    r, wall, cpu, mb = C.measure(lambda: C.register(frames, "xcoreg", transform, seed=seed, iterations=iterations))
    if isinstance(r, Exception):
        return {"error": f"{type(r).__name__}: {r}", "ref_frame": ref}
    out = {"ref_frame": ref, "frames": frames.images.shape[0], "cpu_s": cpu, "wall_s": wall, "peak_mb": mb,
           "iterations": r.iterations, "curves": {}}
    if labels is None:
        box = central_box(frames.shape)
        masks = {"central box": (box, box)}
    else:
        carried = r.apply_labels(labels)[ref, 0]
        zc = info.labels_to_posterior(carried, num_classes=k)
        out.update(agreement_before=agree_before.tolist(),
                   agreement_after=info.x_metric_terms(r.warped, zc, bins=32).tolist())
        masks = {name: (torch.isin(labels[0, 0], torch.tensor(c)), torch.isin(carried, torch.tensor(c)))
                 for name, c in regions.items()}
    for name, (before_mask, after_mask) in masks.items():
        cb = frames.images[:, 0][:, before_mask].mean(1)
        ca = r.warped[:, 0][:, after_mask].mean(1)
        out["curves"][name] = {
            "before": cb.tolist(), "after": ca.tolist(),
            "tv_before": float((cb[1:] - cb[:-1]).abs().sum()), "tv_after": float((ca[1:] - ca[:-1]).abs().sum()),
            "pixel_tv_before": pixel_tv(frames.images[:, 0], before_mask),
            "pixel_tv_after": pixel_tv(r.warped[:, 0], after_mask),
            "tstd_before": float(frames.images[:, 0][:, before_mask].std(0).mean()),
            "tstd_after": float(r.warped[:, 0][:, after_mask].std(0).mean())}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--transform", default="ffd")
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--cine-size", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 cine slices, 30 perfusion frames, 15 iterations")
    ap.add_argument("--name", default="bench_motion")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import xreg_edu as xr

    slices = range(10)
    frames_sel = None
    if args.quick:
        args.iterations, args.name, slices, frames_sel = 15, args.name + "_quick", range(2), list(range(0, 99, 3))
    t_start = time.time()
    out = {"benchmark": "bench_motion", "protocol": {
        "method": "xcoreg", "transform": args.transform, "iterations": args.iterations,
        "reference_frame": "argmax_j I(U_j; Z) of the series' label map",
        "tv": "sum over frames of |curve(t+1) - curve(t)|", "tstd": "mean over the ROI of the std over frames",
        "frame_dice": "not computed: one label map per series, not per frame"},
        "machine_start": C.machine(args.threads)}
    kw = {} if frames_sel is None else {"frames": frames_sel}
    perf = xr.load_dataset("qperf", subjects="aif", size=None, **kw)
    labels = perf.meta["series_labels"][:len(perf)]
    out["perfusion"] = {"series": "qperf aif", "shape": list(perf.shape),
                        **correct(perf, labels, {"LV blood pool": [1], "RV blood pool": [2]}, args.transform,
                                  args.iterations)}
    print("perfusion:", {k: v for k, v in out["perfusion"]["curves"].items()} if "curves" in out["perfusion"]
          else out["perfusion"], flush=True)
    # the two myocardial crops: no masks, already processed by QPerf (probably motion-corrected): a control
    out["perfusion_crops"] = {}
    for series in ("rest", "stress"):
        g = xr.load_dataset("qperf", subjects=series, size=None,
                            **({} if frames_sel is None else {"frames": list(range(0, 59, 3))}))
        res = {"series": f"qperf {series}", "shape": list(g.shape), **correct(g, None, {}, args.transform,
                                                                            args.iterations)}
        out["perfusion_crops"][series] = res
        c = res.get("curves", {}).get("central box", {})
        print(f"perfusion {series}: pixel TV {c.get('pixel_tv_before', float('nan')):.4f} -> "
              f"{c.get('pixel_tv_after', float('nan')):.4f}", flush=True)
    cine = {}
    for s in slices:
        g = xr.load_dataset("cine_cmr", dim=2, size=args.cine_size, slice_index=s)
        res = correct(g, g.meta["slice_labels"], {"heart ROI": list(range(1, 6))}, args.transform, args.iterations)
        cine[str(s)] = res
        c = res.get("curves", {}).get("heart ROI", {})
        print(f"cine slice {s}: ref {res['ref_frame']} TV {c.get('tv_before', float('nan')):.4f} -> "
              f"{c.get('tv_after', float('nan')):.4f}", flush=True)
    out["cine"] = cine
    C.finish(args.name, out, plot, args.threads, t_start)
    return 0


def plot(out):
    plt = C.plot_style()
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.3))
    perf = out["perfusion"]
    for name, ls in (("LV blood pool", "-"), ("RV blood pool", "--")):
        c = perf["curves"][name]
        axes[0].plot(c["before"], ls, color="tab:gray", label=f"{name}, before")
        axes[0].plot(c["after"], ls, color="tab:blue", label=f"{name}, after")
    axes[0].set_xlabel("frame")
    axes[0].set_ylabel("mean intensity")
    axes[0].set_title("perfusion (QPerf AIF series)")
    axes[0].legend(fontsize=9)
    cine = {s: r for s, r in out["cine"].items() if "curves" in r}
    s0 = next(iter(cine))
    c = cine[s0]["curves"]["heart ROI"]
    axes[1].plot(c["before"], "o-", color="tab:gray", label="before")
    axes[1].plot(c["after"], "s-", color="tab:blue", label="after")
    axes[1].set_xlabel("cardiac phase")
    axes[1].set_ylabel("mean intensity, heart ROI")
    axes[1].set_title(f"cine, slice {s0}")
    axes[1].legend(fontsize=9)
    xs = [int(s) for s in cine]
    axes[2].plot(xs, [cine[s]["curves"]["heart ROI"]["tv_before"] for s in cine], "o-", color="tab:gray",
                 label="before")
    axes[2].plot(xs, [cine[s]["curves"]["heart ROI"]["tv_after"] for s in cine], "s-", color="tab:blue",
                 label="after")
    axes[2].set_xlabel("cine slice")
    axes[2].set_ylabel("total variation of the curve")
    axes[2].legend(fontsize=9)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
