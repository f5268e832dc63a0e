"""The Colab copies of the chapters (book/_ext/colab.py): no MyST syntax left, numbers as on the website, the
solutions hidden, the install pinned to this commit at the address of _config.yml."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import colab  # noqa: E402

BOOK = colab.load_book(ROOT)
CONFIG_URL = colab.repository(ROOT)["url"].rstrip("/")

# What MyST leaves behind when a rule is missing: roles, directive fences, targets, directive options, labels.
MYST = [
    (re.compile(r"\{[\w:-]+\}`"), "role"),
    (re.compile(r"^ {0,3}(?:`{3,}|:{3,})\s*\{[\w:-]+\}", re.M), "directive"),
    (re.compile(r"^\([\w-]+\)=\s*$", re.M), "target"),
    (re.compile(r"^>?\s*:(?:label|class|pyobject|language|filter|list|all|nonumber|caption):", re.M), "option"),
    (re.compile(r"\$\$\s*\([\w-]+\)"), "equation label"),
]


def _markdown(nb: dict) -> str:
    return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.fixture(scope="module")
def copies():
    return {p.name: colab.convert(p, BOOK) for p in BOOK.chapters}


def test_every_chapter_is_converted(copies):
    assert len(copies) == 10, sorted(copies)


@pytest.mark.parametrize("name", [p.name for p in BOOK.chapters])
def test_no_myst_syntax_left(copies, name):
    # plain code blocks (included library code) may hold Sphinx roles in docstrings: not MyST to render
    text = re.sub(r"^ {0,3}(`{3,})[\w-]*\n.*?^ {0,3}\1\s*$", "", _markdown(copies[name]), flags=re.M | re.S)
    left = [(what, text[max(0, m.start() - 30):m.end() + 30]) for pat, what in MYST for m in pat.finditer(text)]
    assert not left, f"{name}: MyST left in the Colab copy: {left[:5]}"


@pytest.mark.parametrize("name", [p.name for p in BOOK.chapters])
def test_solutions_hidden_and_numbers_kept(copies, name):
    src = (ROOT / "book" / name).read_text()
    text = _markdown(copies[name])
    n_solutions = len(re.findall(r"\{solution(?:-start)?\}", src))
    assert text.count("<details>") == text.count("</details>") == n_solutions, name
    assert len(re.findall(r"<summary>Solution to Exercise \d+", text)) == n_solutions
    labels = [lab for lab, (doc, _) in BOOK.equations.items() if doc == f"book/{Path(name).stem}"]
    for label in labels:
        n = BOOK.equations[label][1]
        assert f'<a id="{label}"></a>' in text and f"\\tag{{{n}}}$$" in text, f"{name}: {label} not numbered ({n})"


@pytest.mark.parametrize("name", [p.name for p in BOOK.chapters])
def test_install_pinned_at_config_address(copies, name):
    nb = copies[name]
    first = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    m = re.search(r'%pip install -q "xreg_edu @ git\+(?P<url>\S+)@(?P<ref>[^"]+)"', first)
    assert m, f"{name}: first code cell does not install a pinned xreg_edu:\n{first}"
    assert m["url"] == CONFIG_URL
    assert m["ref"] == BOOK.ref and (re.fullmatch(r"[0-9a-f]{40}", m["ref"]) or re.fullmatch(r"v?\d[\w.]*", m["ref"]))
    assert f"%env XREG_EDU_SOURCE={CONFIG_URL}@{BOOK.ref}" in first   # benchmark JSON of the same release
    assert "QUICK = xr.setup_chapter(" in first
    # the source preamble (the only other copy of the address) names the same repository
    source_first = "".join(next(c for c in json.loads((ROOT / "book" / name).read_text())["cells"]
                                if c["cell_type"] == "code")["source"])
    urls = re.findall(r"git\+(https://[^\"'@\s]+)", source_first)
    assert all(u.rstrip("/") == CONFIG_URL for u in urls), f"{name}: preamble installs from {urls}, not {CONFIG_URL}"


def test_equation_numbers_match_the_built_website():
    html = ROOT / "_build" / "html"
    if not (html / "index.html").is_file():
        pytest.skip("no built website (make book)")
    for label, (doc, n) in BOOK.equations.items():
        page = (html / f"{doc}.html").read_text()
        m = re.search(rf'id="equation-{re.escape(label)}">.*?<span class="eqno">\((\d+)\)', page, re.S)
        assert m and int(m.group(1)) == n, f"{label}: website ({m and m.group(1)}) vs Colab copy ({n})"
    for label, (doc, text) in BOOK.numbered.items():
        page = (html / f"{doc}.html").read_text()
        assert text in page, f"{label}: '{text}' not on the website page {doc}"


# ------------------------------------------------------------------------------------------------ known answers
def _tiny_book(tmp_path: Path, cells: list[dict]) -> tuple[colab.Book, Path]:
    (tmp_path / "book").mkdir(parents=True)
    (tmp_path / "xreg_edu").mkdir()
    (tmp_path / "xreg_edu" / "m.py").write_text("import os\n\n\ndef f(x):\n    return x + 1\n\n\ndef g():\n    pass\n")
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "book" / "ch.ipynb"
    path.write_text(json.dumps(nb))
    book = colab.Book(root=tmp_path, repo_url="https://github.com/o/r", ref="v1.0", site_url="https://o.github.io/r/",
                      chapters=[path], bib=BOOK.bib)
    return book, path


def _md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)}


def _code(text):
    return {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "source": text.splitlines(keepends=True)}


def test_known_answer_conversion(tmp_path):
    cells = [
        _md("# Title"),
        _code('import sys\nif "google.colab" in sys.modules:\n    %pip install -q "git+https://x/y"\nimport xreg_edu as xr'),
        _md("$$ a = b $$ (eq-a)\n\nBy {eq}`eq-a` and {cite:t}`luo2023xmetric` {cite:p}`luo2023xmetric`.\n\n"
            "```{prf:proposition} Nice\n:label: prop-a\n\nTrue.\n```\n\n```{prf:proof}\nObvious.\n```\n\n"
            "````{exercise} Try\n:label: ex-a\n\nDo it.\n````\n\n````{solution} ex-a\n:class: dropdown\n\n"
            "```python\nprint(1)\n```\n````\n\nSee {prf:ref}`prop-a` and {ref}`ex-a`.\n\n"
            "```{literalinclude} ../xreg_edu/m.py\n:pyobject: f\n```"),
        _md("````{exercise} Gated\n:label: ex-b\n\nMore.\n````\n\n```{solution-start} ex-b\n:class: dropdown\n```\n\nText."),
        _code("print(2)"),
        _md("```{solution-end}\n```"),
        _code("print(3)"),
    ]
    book, path = _tiny_book(tmp_path, cells)
    book = colab.Book(**{**book.__dict__, "equations": {"eq-a": ("book/ch", 7)},
                         "numbered": {"prop-a": ("book/ch", "Proposition 2"), "ex-a": ("book/ch", "Exercise 3"),
                                      "ex-b": ("book/ch", "Exercise 4")}})
    nb = colab.convert(path, book)
    src = ["".join(c["source"]) for c in nb["cells"]]
    assert src[0] == "# Title" and src[1].startswith("*Colab copy of")
    assert '%pip install -q "xreg_edu @ git+https://github.com/o/r@v1.0"' in src[2]
    md = src[3]
    assert '<a id="eq-a"></a>\n\n$$ a = b \\tag{7}$$' in md
    assert "By [(7)](#eq-a) and Luo and Zhuang (2023) (Luo and Zhuang, 2023)." in md
    assert "> **Proposition 2** (Nice)\n>\n> True." in md
    assert "> **Proof.** Obvious. ∎" in md
    assert "> **Exercise 3** (Try)\n>\n> Do it." in md
    assert ("<details><summary>Solution to Exercise 3 (click to show)</summary>\n\n```python\nprint(1)\n```\n\n"
            "</details>") in md
    assert "See [Proposition 2](#prop-a) and [Exercise 3](#ex-a)." in md
    assert "From `xreg_edu/m.py`, `f`:\n\n```python\ndef f(x):\n    return x + 1\n```" in md
    # gated solution: the code until {solution-end} becomes a hidden Colab form, later code does not
    assert nb["cells"][5]["metadata"].get("cellView") == "form"
    assert src[5].startswith("#@title Solution to Exercise 4")
    assert "cellView" not in nb["cells"][7]["metadata"] and src[7] == "print(3)"


def test_unknown_construct_is_an_error(tmp_path):
    book, path = _tiny_book(tmp_path, [_code('%pip install -q "git+https://x/y"'), _md("```{mystery}\nx\n```")])
    with pytest.raises(colab.ConversionError, match="mystery"):
        colab.convert(path, book)
    book, path = _tiny_book(tmp_path / "b", [_code('%pip install -q "git+https://x/y"'), _md("{weird}`x`")])
    with pytest.raises(colab.ConversionError, match="weird"):
        colab.convert(path, book)


# ------------------------------------------------------------------------------------------------ benchmark JSON
def test_benchmark_result_in_checkout_and_by_source(tmp_path, monkeypatch):
    from xreg_edu.datasets import MissingFileError, benchmark_result, results

    name = "bench_rigid_table.json"
    assert benchmark_result(name) == json.loads((ROOT / "benchmarks" / "results" / name).read_text())
    with pytest.raises(ValueError, match="name="):
        benchmark_result("../secrets.json")

    monkeypatch.setattr(results, "CHECKOUT_RESULTS", tmp_path / "none")     # an installed package, no checkout
    monkeypatch.setenv("XREG_EDU_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("XREG_EDU_SOURCE", raising=False)
    with pytest.raises(MissingFileError, match="XREG_EDU_SOURCE"):
        benchmark_result(name)

    monkeypatch.setenv("XREG_EDU_SOURCE", "https://github.com/o/r@0123abc")
    calls = []

    def fake_retrieve(url, known_hash, fname, path, progressbar):
        calls.append(url)
        out = Path(path) / fname
        out.write_text('{"ok": 1}' if "good" not in calls else "<html>proxy error</html>")
        return str(out)

    import pooch

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    assert benchmark_result(name) == {"ok": 1}
    assert calls == [f"https://raw.githubusercontent.com/o/r/0123abc/benchmarks/results/{name}"]
    assert benchmark_result(name) == {"ok": 1} and len(calls) == 1          # cached under the commit
    calls.append("good")
    with pytest.raises(json.JSONDecodeError):
        benchmark_result("other.json")                                       # an error page is never kept
    assert not (tmp_path / "cache" / "benchmarks" / "0123abc" / "other.json").exists()
