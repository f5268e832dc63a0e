"""Benchmark: sparse 4x4-tap joint-histogram MI vs the dense O(M·L²) weight-matrix MI (official style).

Times MI = H(X) + H(Y) - H(X, Y) from a B-spline Parzen joint histogram, forward and forward+backward (gradient
w.r.t. one image's intensities), at 128², 256² and 128³ voxels for L = 32 and 64, for both implementations in the
same run; warm-up then the median of repeats (interleaved). Prints a table and writes ``benchmarks/results/bench_density.json``.

The dense reference builds ``W = β(s[:, None] - centres[None, :])`` ([M, L+4]) for each image and ``Wxᵀ Wy``.
When its weight matrices would exceed ``--dense-chunk-mb`` it is evaluated in sample chunks; for the backward
pass it then recomputes each chunk's weights (checkpointing), i.e. 2 forwards + 1 backward - flagged
``dense_mode = "chunked"`` in the JSON.

Usage: ``python benchmarks/bench_density.py [--device cuda] [--threads N] [--repeats R] [--quick]``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from xreg_edu import density as D


def mi_from_hist(h):
    p = h / h.sum()
    return D.entropy(p.sum(1)) + D.entropy(p.sum(0)) - D.entropy(p)


def sparse_mi(x, y, bins):
    return mi_from_hist(D.joint_histogram(x, y, bins))


def _dense_hist_chunks(x, y, bins, chunk):
    h = None
    for i in range(0, x.numel(), chunk):
        part = D.dense_weights(x[i:i + chunk], bins, lo=x_lo_hi[0], hi=x_lo_hi[1]).T @ \
            D.dense_weights(y[i:i + chunk], bins, lo=y_lo_hi[0], hi=y_lo_hi[1])
        h = part if h is None else h + part
    return h


def dense_mi(x, y, bins, chunk=None):
    """MI from dense weight matrices; ``chunk``: samples per chunk (None = all at once)."""
    if chunk is None or chunk >= x.numel():
        return mi_from_hist(D.dense_joint_histogram(x, y, bins))
    # chunked: every chunk must use the global (detached) range of the whole sample
    global x_lo_hi, y_lo_hi
    x_lo_hi = torch.aminmax(x.detach())
    y_lo_hi = torch.aminmax(y.detach())
    if not x.requires_grad:
        return mi_from_hist(_dense_hist_chunks(x, y, bins, chunk))
    with torch.no_grad():                       # pass 1: the histogram
        h = _dense_hist_chunks(x, y, bins, chunk)
    hg = h.clone().requires_grad_(True)
    mi = mi_from_hist(hg)
    return _ChunkedMI(mi, hg, x, y, bins, chunk)


class _ChunkedMI:
    """MI value whose ``backward`` recomputes the dense weights chunk by chunk (checkpointing)."""

    def __init__(self, mi, hg, x, y, bins, chunk):
        self.mi, self.hg, self.x, self.y, self.bins, self.chunk = mi, hg, x, y, bins, chunk

    def backward(self):
        (g,) = torch.autograd.grad(self.mi, self.hg)
        for i in range(0, self.x.numel(), self.chunk):
            part = D.dense_weights(self.x[i:i + self.chunk], self.bins, lo=x_lo_hi[0], hi=x_lo_hi[1]).T @ \
                D.dense_weights(self.y[i:i + self.chunk], self.bins, lo=y_lo_hi[0], hi=y_lo_hi[1])
            (part * g).sum().backward()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit_interleaved(fns, device, repeats, warmup=1):
    """Median wall time of each function; the functions are run in turn within every repeat, so that a change of
    machine load affects all of them alike (fair ratios on a shared machine)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dense-chunk-mb", type=float, default=256.0,
                    help="max MB of one dense weight matrix before chunking")
    ap.add_argument("--quick", action="store_true", help="2-D sizes only, 3 repeats")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_density.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats = 3 if args.quick else args.repeats
    sizes = [(128, 128), (256, 256)] + ([] if args.quick else [(128, 128, 128)])
    gen = torch.Generator().manual_seed(0)
    rows = []
    header = (f"{'size':>12} {'L':>3} | {'sparse fwd':>10} {'sparse f+b':>10} | {'dense fwd':>10} {'dense f+b':>10} |"
              f" {'x fwd':>6} {'x f+b':>6} | {'|ΔMI|':>8}")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"load avg {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")
    print(header)
    print("-" * len(header))
    for shape in sizes:
        M = 1
        for n in shape:
            M *= n
        z = torch.randn(2, M, generator=gen)
        x = z[0].to(device)
        y = (0.7 * z[0] + 0.5 * z[1]).to(device)
        for L in (32, 64):
            w_mb = M * (L + 4) * 4 / 2 ** 20
            chunk = None if w_mb <= args.dense_chunk_mb else max(1, int(M * args.dense_chunk_mb / w_mb))
            xg = x.clone().requires_grad_(True)

            def s_fwd():
                with torch.no_grad():
                    sparse_mi(x, y, L)

            def s_fb():
                xg.grad = None
                sparse_mi(xg, y, L).backward()

            def d_fwd():
                with torch.no_grad():
                    dense_mi(x, y, L, chunk)

            def d_fb():
                xg.grad = None
                dense_mi(xg, y, L, chunk).backward()

            big = M > 10 ** 6
            t = timeit_interleaved({"sparse_fwd": s_fwd, "sparse_fwd_bwd": s_fb, "dense_fwd": d_fwd,
                                    "dense_fwd_bwd": d_fb}, device, max(3, repeats // 2) if big else repeats)
            with torch.no_grad():
                diff = abs(float(sparse_mi(x, y, L)) - float(dense_mi(x, y, L, chunk)))
            row = {"shape": list(shape), "voxels": M, "bins": L, **{k: v * 1e3 for k, v in t.items()},
                   "speedup_fwd": t["dense_fwd"] / t["sparse_fwd"],
                   "speedup_fwd_bwd": t["dense_fwd_bwd"] / t["sparse_fwd_bwd"],
                   "abs_mi_difference": diff, "dense_mode": "full" if chunk is None else f"chunked({chunk})"}
            rows.append(row)
            print(f"{'x'.join(map(str, shape)):>12} {L:>3} | {row['sparse_fwd']:>8.2f}ms {row['sparse_fwd_bwd']:>8.2f}ms"
                  f" | {row['dense_fwd']:>8.2f}ms {row['dense_fwd_bwd']:>8.2f}ms |"
                  f" {row['speedup_fwd']:>5.1f}x {row['speedup_fwd_bwd']:>5.1f}x | {diff:>8.1e}"
                  + ("" if chunk is None else "  (dense chunked)"), flush=True)
    out = {"benchmark": "joint-histogram MI, sparse 4x4 taps vs dense O(M L^2)", "unit": "ms (median)",
           "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "python": sys.version.split()[0], "platform": platform.platform(),
           "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
           "repeats": repeats, "rows": rows}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    at64 = [r["speedup_fwd_bwd"] for r in rows if r["bins"] == 64]
    print(f"min speed-up at L = 64 (fwd+bwd): {min(at64):.1f}x (target >= 4x)")


if __name__ == "__main__":
    main()
