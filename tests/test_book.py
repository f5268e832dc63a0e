"""Static checks of the book sources: clean notebooks, numbered equations, chapter structure.

No chapter is executed here (``make chapters`` runs them with nbmake); these checks read the files only.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import colab  # noqa: E402  the table-of-contents walk of the Colab converter

# Equations of part I (the talk's eq. 1-6) must always be there; part II's only once a chapter defines one of them.
PART_I_LABELS = ["eq-mi", "eq-tc", "eq-iuz", "eq-iuz-ci", "eq-xmetric", "eq-xcoreg"]
PART_II_LABELS = ["eq-imaging", "eq-equivariance", "eq-elbo"]


def _toc_files() -> list[Path]:
    # XREG_EDU_TOC: check another table of contents (e.g. a partial one while chapters are written)
    toc = yaml.safe_load(Path(os.environ.get("XREG_EDU_TOC", ROOT / "_toc.yml")).read_text())
    found = [toc["root"]] + colab.toc_entries(toc)
    paths = []
    for f in found:
        matches = [p for p in (ROOT / f"{f}.ipynb", ROOT / f"{f}.md", ROOT / f) if p.is_file()]
        assert matches, f"_toc.yml lists {f!r} but no {f}.ipynb / {f}.md exists"
        paths.append(matches[0])
    return paths


TOC_FILES = _toc_files()
CHAPTERS = [p for p in TOC_FILES if p.suffix == ".ipynb"]


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _markdown(path: Path) -> str:
    if path.suffix == ".ipynb":
        return "\n\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "markdown")
    return path.read_text()


def _all_text(path: Path) -> str:
    if path.suffix == ".ipynb":
        return "\n\n".join("".join(c["source"]) for c in _cells(path))
    return path.read_text()


BOOK_TEXT = {p: _all_text(p) for p in TOC_FILES}
_DEF_PATTERNS = [
    re.compile(r"\$\$\s*\((eq-[\w-]+)\)"),                 # $$ ... $$ (eq-mi)
    re.compile(r"^:label:\s*(eq-[\w-]+)\s*$", re.M),        # ```{math} :label: eq-mi
    re.compile(r"^\((eq-[\w-]+)\)=\s*$", re.M),             # (eq-mi)= target
]
_REF_PATTERN = re.compile(r"\{(?:eq|math:numref|numref|ref)\}`(?:[^`<]*<)?(eq-[\w-]+)>?`")


def _definitions() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path, text in BOOK_TEXT.items():
        for pat in _DEF_PATTERNS:
            for label in pat.findall(text):
                out.setdefault(label, []).append(path.name)
    return out


def _references() -> dict[str, int]:
    out: dict[str, int] = {}
    for text in BOOK_TEXT.values():
        for label in _REF_PATTERN.findall(text):
            out[label] = out.get(label, 0) + 1
    return out


def test_toc_lists_chapters():
    assert CHAPTERS, "_toc.yml lists no notebook chapter"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_notebook_stored_without_outputs(path):
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] != "code":
            continue
        assert cell.get("outputs", []) == [], f"{path.name} cell {i} has stored outputs: clear them"
        assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count: clear it"


@pytest.mark.parametrize("label", PART_I_LABELS + PART_II_LABELS)
def test_equation_defined_once_and_referenced(label):
    defs, refs = _definitions(), _references()
    if label in PART_II_LABELS and not any(lab in defs for lab in PART_II_LABELS):
        pytest.skip("part II chapters are not in the book yet")
    assert label in defs, f"equation label {label!r} is defined nowhere in the book"
    assert len(defs[label]) == 1, f"equation label {label!r} is defined more than once: {defs[label]}"
    assert refs.get(label, 0) >= 1, f"equation {label!r} is never referenced with {{eq}}`{label}`"


def test_every_equation_reference_resolves():
    defs = _definitions()
    dangling = sorted(set(_references()) - set(defs))
    assert not dangling, f"{{eq}} references to undefined labels: {dangling}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_structure(path):
    md = _markdown(path)
    assert re.search(r"learning objectives", md, re.I), f"{path.name}: no learning objectives"
    exercises = re.findall(r"^`{3,}\{exercise\}.*?^:label:\s*([\w-]+)", md, re.M | re.S)
    assert len(exercises) >= 2, f"{path.name}: {len(exercises)} exercises, need at least 2"
    solutions = re.findall(r"^`{3,}\{solution(?:-start)?\}\s*([\w-]+)\s*\n:class:\s*dropdown", md, re.M)
    missing = [e for e in exercises if e not in solutions]
    assert not missing, f"{path.name}: exercises without a dropdown solution: {missing}"
    assert re.search(r"^#+\s*References\s*$", md, re.M), f"{path.name}: no References section"
    assert re.search(r"\{cite:[pt]\}`", md), f"{path.name}: cites nothing with {{cite:p}} / {{cite:t}}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_first_code_cell_installs_in_colab(path):
    first = next(c for c in _cells(path) if c["cell_type"] == "code")
    src = "".join(first["source"])
    assert "google.colab" in src and "pip" in src, f"{path.name}: first code cell must install the package in Colab"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_literalincludes_point_at_real_objects(path):
    md = _markdown(path)
    for m in re.finditer(r"\{literalinclude\}\s*(\S+)\s*\n((?::[\w-]+:.*\n)*)", md):
        target = (path.parent / m.group(1)).resolve()
        assert target.is_file(), f"{path.name}: literalinclude of missing file {m.group(1)}"
        obj = re.search(r":pyobject:\s*(\S+)", m.group(2))
        if obj:
            name = obj.group(1).split(".")[-1]
            assert re.search(rf"^\s*(?:def|class)\s+{re.escape(name)}\b", target.read_text(), re.M), \
                f"{path.name}: {m.group(1)} has no object {obj.group(1)}"


# ---------------------------------------------------------------------------------------------- one preamble
def _first_code(path: Path) -> str:
    return "".join(next(c for c in _cells(path) if c["cell_type"] == "code")["source"])


def test_every_chapter_has_the_same_preamble():
    first = {p.name: _first_code(p) for p in CHAPTERS}
    reference = first[CHAPTERS[0].name]
    assert "QUICK = xr.setup_chapter(" in reference, "the preamble must end with QUICK = xr.setup_chapter(...)"
    differ = [name for name, src in first.items() if src != reference]
    assert not differ, f"first code cell differs from {CHAPTERS[0].name}'s in: {differ}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_preamble_work_is_not_repeated(path):
    later = [c for c in _cells(path) if c["cell_type"] == "code"][1:]
    for i, cell in enumerate(later, start=2):
        src = "".join(cell["source"])
        code = "\n".join(line.split("#", 1)[0] for line in src.splitlines())   # comments may mention them
        for bad in (r"set_num_threads\(", r"\btorch\.manual_seed\(", r"\bcuda\.manual_seed", r"np\.random\.seed\(",
                    r"\brandom\.seed\(", r"XREG_EDU_QUICK", r"google\.colab", r"setup_chapter\("):
            assert not re.search(bad, code), f"{path.name} code cell {i} repeats the preamble's work: {bad!r}"


# ---------------------------------------------------------------------------------------------- figures
def _figure_pattern() -> re.Pattern:
    """Calls that draw a figure in a chapter: pyplot, the library's plotting functions, sweeps."""
    import xreg_edu.plotting as plotting

    names = "|".join(n for n in plotting.__all__ if n.startswith(("show_", "plot_")))
    return re.compile(rf"\bplt\.(?:subplots|figure|show|imshow|plot)\(|\b(?:{names})\(|\bsweep\(|"
                      rf"\bsmall_multiples\(|\.savefig\(")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_figure_cell_has_alt_text(path):
    pattern = _figure_pattern()
    missing = []
    for cell in _cells(path):
        if cell["cell_type"] == "code" and pattern.search("".join(cell["source"])):
            alt = cell.get("metadata", {}).get("mystnb", {}).get("image", {}).get("alt", "")
            if len(alt.strip()) < 20:
                missing.append(cell.get("id"))
    assert not missing, (f"{path.name}: figure cells without alt text (metadata mystnb.image.alt): "
                         f"cell ids {missing}")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_small_fonts_or_wide_literal_figures(path):
    from xreg_edu._env import PAGE_WIDTH

    code = "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code")
    small = [m.group(0) for m in re.finditer(r"fontsize\s*=\s*(\d+(?:\.\d+)?)", code) if float(m.group(1)) < 9]
    wide = [m.group(0) for m in re.finditer(r"(?<!page_)figsize\s*=\s*\(\s*(\d+(?:\.\d+)?)\s*,", code)
            if float(m.group(1)) > PAGE_WIDTH]
    assert not small, f"{path.name}: fonts under 9 pt: {small}"
    assert not wide, f"{path.name}: figures wider than {PAGE_WIDTH} in (wrap in xr.plotting.page_figsize): {wide}"


# ---------------------------------------------------------------------------------------------- launch paths
def test_repository_address_only_in_config():
    """The repository address is written once, in _config.yml; the Colab copies and binder read it from there."""
    import subprocess

    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    host_path = url.split("://", 1)[1]
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    found = []
    for f in files:
        if f == "_config.yml" or not (ROOT / f).is_file():
            continue
        text = (ROOT / f).read_text(errors="ignore")
        if f.endswith(".ipynb") and Path(ROOT / f) in CHAPTERS:
            # the preamble's Colab install line is the one copy: the Colab converter replaces it with the pinned
            # install read from _config.yml, and tests/test_colab.py checks that it names the same address
            pip = re.search(r"^\s*%pip install .*$", _first_code(ROOT / f), re.M)
            if pip:
                text = text.replace(json.dumps(pip.group(0).strip())[1:-1], "", 1)
        if host_path in text:
            found.append(f)
    assert not found, f"the repository address {url} is also written in: {found} (read it from _config.yml)"


def test_binder_installs_cpu_torch_and_the_package():
    reqs = (ROOT / "binder" / "requirements.txt").read_text()
    assert re.search(r"^--extra-index-url https://download\.pytorch\.org/whl/cpu\s*$", reqs, re.M), \
        "binder/requirements.txt must take torch from the CPU wheel index"
    assert re.search(r"^torch==[\d.]+\+cpu\s*$", reqs, re.M), "binder must pin a +cpu torch build"
    post = (ROOT / "binder" / "postBuild").read_text()
    assert re.search(r"pip install .*--no-deps .*-e \.|pip install .*-e \. .*--no-deps", post), \
        "binder/postBuild must install the package itself"
    assert os.access(ROOT / "binder" / "postBuild", os.X_OK), "binder/postBuild must be executable"


# ---------------------------------------------------------------------------------------------- appendix pages
def test_datasets_page_maps_datasets_to_chapters(tmp_path):
    from xreg_edu.datasets.cards import chapter_usage

    def nb(path, code):
        path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": [code], "metadata": {}, "outputs": []},
                                              {"cell_type": "markdown", "source": ['load_dataset("oasis")']}]}))

    nb(tmp_path / "01_a.ipynb", 'g = xr.load_dataset("open_ms", size=64)\nh = vdata.split_slices("myops_cmr")')
    nb(tmp_path / "02_b.ipynb", "x = xr.load_dataset('open_ms')\nname = 'cine_cmr'\ny = f(\"not_a_dataset\")")
    usage = chapter_usage(tmp_path)
    assert usage["open_ms"] == ["01_a", "02_b"] and usage["myops_cmr"] == ["01_a"]
    assert usage["cine_cmr"] == [] and usage["oasis"] == []          # a bare string or prose is no use
    page = (ROOT / "book" / "datasets.md").read_text()
    real = chapter_usage()
    assert real["open_ms"], "no chapter loads open_ms?"
    for name, stems in real.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        for stem in stems:
            assert f"({stem}.ipynb)" in row, f"datasets.md: {name} row lacks chapter {stem}"


def test_instructor_page_tables():
    import sys

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import course_tables

    text = (ROOT / "book" / "instructors.md").read_text()
    for table in course_tables.TABLES:
        assert f"```{{course-table}} {table}" in text, f"instructors.md does not show the {table} table"
    rows = [r for r in course_tables.exercises() if r.startswith("| ") and r[2].isdigit()]
    n_ex = sum(len(re.findall(r"^`{3,}\{exercise\}", _markdown(p), re.M)) for p in CHAPTERS)
    assert len(rows) == n_ex, (len(rows), n_ex)
    times = json.loads((ROOT / "benchmarks" / "results" / "chapter_times.json").read_text())
    assert [r["chapter"] for r in times["chapters"]] == [p.stem for p in CHAPTERS], \
        "chapter_times.json is out of date: run `make timing`"
    assert all(r["seconds"] > 0 and len(r["load_before"]) == 3 for r in times["chapters"])


# ---------------------------------------------------------------------------------------------- preamble at run time
def test_show_versions_and_figure_style(capsys, monkeypatch, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    import xreg_edu as xr
    from xreg_edu._env import FIGURE_STYLE, PAGE_WIDTH

    monkeypatch.setenv("XREG_EDU_DATA", str(tmp_path / "cache"))
    old_threads = torch.get_num_threads()
    try:
        quick = xr.setup_chapter(seed=3, threads=1)
        out = capsys.readouterr().out
        for key, value in (("torch", torch.__version__), ("device", "cpu" if not torch.cuda.is_available() else ""),
                           ("threads", "1"), ("data cache (XREG_EDU_DATA)", str(tmp_path / "cache"))):
            assert re.search(rf"^{re.escape(key)}\s+.*{re.escape(value)}", out, re.M), f"show_versions: no {key}"
        assert quick is xr.widgets.is_quick()
        assert torch.get_num_threads() == 1
        a = torch.rand(3)
        torch.manual_seed(3)
        assert torch.equal(a, torch.rand(3)), "setup_chapter did not seed torch"
        assert plt.rcParams["figure.dpi"] >= 150 and plt.rcParams["savefig.dpi"] >= 150
        sizes = [v for k, v in FIGURE_STYLE.items() if "size" in k]
        assert sizes and min(sizes) >= 9
        # the library's figures: at most PAGE_WIDTH wide, no text under 9 pt
        fig = xr.widgets.small_multiples(lambda **p: {"img": torch.rand(8, 8).numpy(), "score": 1.0},
                                         {"a": [1, 2, 3, 4, 5, 6], "b": [1, 2]}, quick=False)
        group = torch.rand(7, 1, 16, 16)
        figs = [fig, xr.plotting.show_group(group, labels=(group > 0.5).long()), xr.plotting.show_registration(group, group)]
        for f in figs:
            assert f.get_size_inches()[0] <= PAGE_WIDTH + 1e-6, f.get_size_inches()
            small = [t.get_text() for t in f.findobj(matplotlib.text.Text) if t.get_text() and t.get_fontsize() < 9]
            assert not small, f"text under 9 pt: {small[:3]}"
            plt.close(f)
    finally:
        torch.set_num_threads(old_threads)
        matplotlib.rcParams.update(matplotlib.rcParamsDefault)
