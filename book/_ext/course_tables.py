"""Tables of the instructor page, computed when the book is built (never typed by hand).

``{course-table} chapter-times``  seconds per chapter from ``benchmarks/results/chapter_times.json``
                                  (written by ``benchmarks/time_chapters.py``; a missing file is a build warning,
                                  an error under ``-W``);
``{course-table} exercises``      every exercise of the chapters with its kind and effort, read from the notebooks;
``{course-table} data``           download size of the datasets the chapters load.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from docutils.statemachine import StringList
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
_EXERCISE = re.compile(r"^(`{3,})\{exercise\}\s*(?P<title>.*?)\s*\n:label:\s*(?P<label>[\w-]+)", re.M)


def _chapters() -> list[Path]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import colab

    return colab._toc_chapters(ROOT)


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def chapter_times() -> list[str]:
    path = ROOT / "benchmarks" / "results" / "chapter_times.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make timing` (benchmarks/time_chapters.py)")
    data = json.loads(path.read_text())
    rows = ["| chapter | seconds | load average (1 min) before | ran |", "|---|---:|---:|---|"]
    for r in data["chapters"]:
        rows.append(f"| [{r['chapter']}]({r['chapter']}.ipynb) | {r['seconds']:.0f} | {r['load_before'][0]:.1f} | "
                    f"{'yes' if r['ok'] else 'FAILED: ' + (r['error'] or '')} |")
    total = sum(r["seconds"] for r in data["chapters"])
    rows += ["", f"Total {total / 60:.1f} min; {data['mode']}, {data['torch_threads']} torch threads on a "
                 f"{data['cpu_count']}-CPU {data['machine']} machine, Python {data['python']}, torch {data['torch']}, "
                 f"{data['date']}. {data['note'].capitalize()}."]
    return rows


def exercises() -> list[str]:
    """Kind (derivation / code / both) and effort (lines of the solution): * <= 8, ** <= 20, *** more."""
    rows = ["| chapter | exercise | kind | solution lines | effort |", "|---|---|---|---:|---|"]
    for path in _chapters():
        cells = _cells(path)
        text = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        for m in _EXERCISE.finditer(text):
            label = m["label"]
            sol = re.search(rf"^(`{{3,}})\{{solution\}}\s*{re.escape(label)}\s*\n(?P<body>.*?)^\1\s*$", text,
                            re.M | re.S)
            if sol:
                body = sol["body"]
            else:  # gated: from {solution-start} to {solution-end}, code cells included
                joined = "\n".join("".join(c["source"]) if c["cell_type"] == "markdown" else
                                   "```python\n" + "".join(c["source"]) + "\n```" for c in cells)
                gated = re.search(rf"\{{solution-start\}}\s*{re.escape(label)}\s*\n(?P<body>.*?)\{{solution-end\}}",
                                  joined, re.S)
                if not gated:
                    raise ExtensionError(f"{path.name}: exercise {label} has no solution")
                body = gated["body"]
            lines = [ln for ln in body.splitlines() if ln.strip() and not ln.startswith(":class:")]
            code = "```" in body
            maths = "$" in re.sub(r"```.*?```", "", body, flags=re.S)
            kind = "code + derivation" if code and maths else ("code" if code else "derivation")
            effort = "★" if len(lines) <= 8 else ("★★" if len(lines) <= 20 else "★★★")
            rows.append(f"| {int(path.stem[:2])} | {m['title'] or label} | {kind} | {len(lines)} | {effort} |")
    rows += ["", "Effort is the length of the published solution (★ up to 8 lines, ★★ up to 20, ★★★ more); "
                 "kind says whether the solution computes (code), derives (maths) or both."]
    return rows


def data() -> list[str]:
    import sys

    sys.path.insert(0, str(ROOT))
    from xreg_edu.datasets.cards import chapter_usage
    from xreg_edu.datasets.registry import REGISTRY

    used = {k: v for k, v in chapter_usage(ROOT / "book").items() if v}
    rows = ["| dataset | files | download (MB) | chapters |", "|---|---:|---:|---|"]
    total = 0
    for name, stems in used.items():
        spec = REGISTRY[name]
        size = sum(f.size for f in spec.files if not f.embedded)
        total += size
        rows.append(f"| `{name}` | {len(spec.files)} | {size / 1e6:.1f} | "
                    + ", ".join(str(int(s[:2])) for s in stems) + " |")
    rows += ["", f"The chapters download {total / 1e6:.0f} MB of data in all (sha256-checked, cached in "
                 f"`XREG_EDU_DATA`); with `XREG_EDU_MIRROR` pointing at a copy, nothing is downloaded."]
    return rows


TABLES = {"chapter-times": chapter_times, "exercises": exercises, "data": data}


class CourseTable(SphinxDirective):
    required_arguments = 1

    def run(self):
        name = self.arguments[0]
        if name not in TABLES:
            raise self.error(f"course-table: unknown table {name!r}; one of {sorted(TABLES)}")
        if name == "chapter-times":
            self.env.note_dependency(str(ROOT / "benchmarks" / "results" / "chapter_times.json"))
        for path in _chapters():
            self.env.note_dependency(str(path))
        try:
            rows = TABLES[name]()
        except FileNotFoundError as err:
            logger.warning(f"course-table {name}: {err}", location=(self.env.docname, self.lineno))
            rows = [f"*(table missing: {err})*"]
        content = StringList(rows, source=f"course-table {name}")
        from docutils import nodes

        box = nodes.container(classes=["course-table"])
        self.state.nested_parse(content, self.content_offset, box)
        return [box]


def setup(app) -> dict:
    app.add_directive("course-table", CourseTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
