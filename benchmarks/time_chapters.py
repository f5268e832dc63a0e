"""Wall-clock time of every chapter, executed alone in a fresh kernel as a course machine would run it.

Quick mode (``XREG_EDU_QUICK=1``) and static figures (``XREG_EDU_STATIC=1``), 2 torch threads (the chapters'
preamble), chapters in table-of-contents order. Writes ``benchmarks/results/chapter_times.json`` (read by the
book's instructor page) with the load average before and after each chapter: on a shared machine the times are
upper bounds, and the JSON says so rather than hiding it.

    python benchmarks/time_chapters.py [--full] [--only 01_why_groupwise ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "chapter_times.json"


def chapters() -> list[Path]:
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").is_file()]


def run(path: Path, timeout: int) -> dict:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    error = None
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
                       ).execute()
    except Exception as err:  # the chapter failed: report it with the time it took, never a made-up number
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        error = f"{type(err).__name__}: " + " | ".join(lines[-3:])[:400]
    seconds = time.perf_counter() - t0
    return {"chapter": path.stem, "seconds": round(seconds, 1), "ok": error is None, "error": error,
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="full iteration counts (default: quick mode, as in CI)")
    ap.add_argument("--only", nargs="*", help="chapter file stems to time (default: all)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = ap.parse_args(argv)
    os.environ["XREG_EDU_QUICK"] = "0" if args.full else "1"
    os.environ["XREG_EDU_STATIC"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    todo = [p for p in chapters() if not args.only or p.stem in args.only]
    rows = []
    for path in todo:
        rows.append(run(path, args.timeout))
        print(f"{rows[-1]['chapter']:<28} {rows[-1]['seconds']:7.1f} s  load {rows[-1]['load_before'][0]:.1f}"
              f"{'' if rows[-1]['ok'] else '  FAILED ' + rows[-1]['error']}", flush=True)
    import torch

    if args.only and OUT.is_file():  # re-timed chapters replace their rows, the others stay
        old = {r["chapter"]: r for r in json.loads(OUT.read_text())["chapters"]}
        old.update({r["chapter"]: r for r in rows})
        rows = [old[p.stem] for p in chapters() if p.stem in old]
    result = {
        "what": "wall-clock seconds per chapter, each in a fresh kernel, figures static",
        "mode": "full" if args.full else "quick (XREG_EDU_QUICK=1)",
        "torch_threads": 2,
        "cpu_count": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "note": "load averages were recorded around each chapter; the machine was shared, so times are upper bounds",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "chapters": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, OUT)
    print(f"wrote {OUT}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
