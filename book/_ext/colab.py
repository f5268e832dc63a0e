"""Colab-ready copies of the chapters: MyST rewritten into the Markdown/HTML that Colab renders.

``convert(path, book)`` returns a notebook in which

* ``$$ ... $$ (label)`` gets ``\\tag{n}`` (the website's number) and an anchor, ``{eq}`label``` becomes ``(n)``;
* ``{cite:p}`` / ``{cite:t}`` become author-year text, ``{bibliography}`` the formatted list of the chapter's works;
* theorem-like blocks (``prf:*``, admonitions) become quotes, ``{exercise}`` a numbered quote and every solution a
  ``<details>`` block (code cells of a gated solution become Colab forms: hidden until opened);
* ``{literalinclude}`` is replaced by the included code, ``{ref}`` / ``{prf:ref}`` / ``{doc}`` by text and links;
* the first code cell installs the package pinned to the release tag or commit of the build, from the repository
  address in ``_config.yml`` (the only place it is written).

As a Sphinx extension it writes ``_build/html/_colab/<page>.ipynb`` after every build (checking its equation numbers
against Sphinx's) and points the Colab launch button at them: publish ``_build/html`` (e.g. to the ``gh-pages``
branch named by ``colab_branch`` in ``_config.yml``) and the button opens these copies.
"""
from __future__ import annotations

import ast
import copy
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COLAB_DIR = "_colab"
PRF_NAMES = {"proposition": "Proposition", "definition": "Definition", "lemma": "Lemma", "theorem": "Theorem",
             "algorithm": "Algorithm", "remark": "Remark", "corollary": "Corollary", "example": "Example",
             "conjecture": "Conjecture", "axiom": "Axiom", "criterion": "Criterion", "observation": "Observation",
             "property": "Property", "assumption": "Assumption", "notation": "Notation"}
ADMONITIONS = {"note", "tip", "warning", "important", "hint", "caution", "attention", "danger", "error", "seealso"}
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|:{3,})\{(?P<name>[\w:-]+)\}[ \t]*(?P<arg>.*?)\s*$")
_ROLE = re.compile(r"\{(?P<role>[\w:-]+)\}`(?P<body>[^`]*)`")
_EQ_LABEL = re.compile(r"\$\$(?P<body>(?:(?!\$\$).)+?)\$\$[ \t]*\((?P<label>[\w-]+)\)", re.S)
_TARGET = re.compile(r"^\((?P<label>[\w-]+)\)=[ \t]*$", re.M)


class ConversionError(ValueError):
    """A MyST construct the converter does not know: add a rule rather than let raw syntax reach Colab."""


# ------------------------------------------------------------------------------------------------ book context
@dataclass
class Book:
    """What a chapter's conversion needs from the whole book: numbers, titles, references, the pinned install."""

    root: Path
    repo_url: str
    ref: str
    site_url: str
    chapters: list[Path]
    equations: dict[str, tuple[str, int]] = field(default_factory=dict)   # label -> (docname, number)
    numbered: dict[str, tuple[str, str]] = field(default_factory=dict)    # exercise/prf label -> (docname, text)
    titles: dict[str, str] = field(default_factory=dict)                  # docname -> title
    bib: dict = field(default_factory=dict)

    def docname(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).with_suffix("").as_posix()

    def page_url(self, docname: str, anchor: str = "") -> str:
        return f"{self.site_url}{docname}.html" + (f"#{anchor}" if anchor else "")


def repository(root: Path = ROOT) -> dict:
    """The ``repository`` section of ``_config.yml``: the one place that names the repository address."""
    return yaml.safe_load((root / "_config.yml").read_text())["repository"]


def pinned_ref(root: Path = ROOT) -> str:
    """Release tag of HEAD if it has one, else the commit hash (``XREG_EDU_REF`` overrides, e.g. outside git)."""
    env = os.environ.get("XREG_EDU_REF")
    if env:
        return env
    for cmd in (["git", "describe", "--tags", "--exact-match", "HEAD"], ["git", "rev-parse", "HEAD"]):
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    raise ConversionError(f"no git commit found in {root} to pin the Colab install to; set XREG_EDU_REF "
                          f"to a release tag or commit of the repository")


def _site_url(repo_url: str) -> str:
    m = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(?:\.git)?/?", repo_url)
    if not m:
        raise ConversionError(f"repository.url {repo_url!r} in _config.yml is not a https://github.com/ORG/REPO "
                              f"address; Colab opens notebooks from GitHub only")
    return f"https://{m.group(1)}.github.io/{m.group(2)}/"


def toc_entries(toc: dict) -> list[str]:
    """Every ``file:`` of a parsed ``_toc.yml`` below its root, in reading order (the root page not included)."""
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk({k: v for k, v in toc.items() if k != "root"})
    return files


def _toc_chapters(root: Path) -> list[Path]:
    files = toc_entries(yaml.safe_load((root / "_toc.yml").read_text()))
    return [root / f"{f}.ipynb" for f in files if (root / f"{f}.ipynb").is_file()]


def _markdown_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]


def _load_bib(root: Path) -> dict:
    from pybtex.database import parse_file

    cfg = yaml.safe_load((root / "_config.yml").read_text())
    entries = {}
    for bibfile in cfg.get("bibtex_bibfiles", []):
        entries.update(parse_file(str(root / bibfile)).entries)
    return entries


def load_book(root: Path = ROOT, ref: str | None = None) -> Book:
    """Scan the book once: titles and the equation, exercise and theorem numbers the website shows."""
    repo_url = repository(root)["url"].rstrip("/")
    book = Book(root=root, repo_url=repo_url, ref=ref or pinned_ref(root), site_url=_site_url(repo_url),
                chapters=_toc_chapters(root), bib=_load_bib(root))
    # Numbers run through the whole book in table-of-contents order (sphinx-multitoc-numbering): equations
    # (1)...(10) as in the talk, exercises, and each kind of theorem-like block separately.
    equation, counters = 0, {}
    for path in book.chapters:
        doc = book.docname(path)
        text = "\n\n".join(_markdown_cells(path))
        title = re.search(r"^#\s+(.+)$", text, re.M)
        book.titles[doc] = title.group(1).strip() if title else doc
        for m in _EQ_LABEL.finditer(text):
            equation += 1
            book.equations[m.group("label")] = (doc, equation)
        lines = text.splitlines()
        for i, line in enumerate(lines):
            m = _FENCE.match(line)
            if not m or not (m["name"] == "exercise" or m["name"].startswith("prf:")):
                continue
            kind = "Exercise" if m["name"] == "exercise" else PRF_NAMES.get(m["name"][4:])
            if kind is None or m["name"] == "prf:proof":
                continue
            counters[kind] = counters.get(kind, 0) + 1
            for opt in lines[i + 1:i + 6]:
                lab = re.match(r"^:label:\s*([\w-]+)", opt)
                if lab:
                    book.numbered[lab.group(1)] = (doc, f"{kind} {counters[kind]}")
    return book


# ------------------------------------------------------------------------------------------------ citations
def _last_names(entry) -> list[str]:
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    return [" ".join(p.last_names).replace("{", "").replace("}", "") for p in people]


def _authors(entry) -> str:
    names = _last_names(entry)
    if len(names) >= 3:
        return f"{names[0]} et al."
    return " and ".join(names) or entry.fields.get("title", "?")


def cite(book: Book, keys: str, textual: bool) -> str:
    parts = []
    for key in (k.strip() for k in keys.split(",")):
        if key not in book.bib:
            raise ConversionError(f"citation key {key!r} is not in the bibliography")
        e = book.bib[key]
        year = e.fields.get("year", "n.d.")
        parts.append(f"{_authors(e)} ({year})" if textual else f"{_authors(e)}, {year}")
    return ", ".join(parts) if textual else "(" + "; ".join(parts) + ")"


def _clean(text: str) -> str:
    return re.sub(r"[{}]", "", text).replace("\\&", "&").replace("--", "–")


def bibliography(book: Book, keys: list[str]) -> str:
    rows = []
    for key in sorted(dict.fromkeys(keys), key=lambda k: (_last_names(book.bib[k]) or [k])[0]):
        e = book.bib[key]
        f = e.fields
        venue = f.get("journal") or f.get("booktitle") or f.get("publisher") or f.get("howpublished") or ""
        if not venue and f.get("eprint"):
            venue = f"arXiv:{f['eprint']}"
        people = e.persons.get("author", [])
        authors = ", ".join(" ".join([*p.first_names, *p.middle_names, *p.last_names]) for p in people)
        line = f"- {_clean(authors)} ({f.get('year', 'n.d.')}). {_clean(f.get('title', ''))}."
        if venue:
            line += f" *{_clean(venue)}*."
        if f.get("doi"):
            line += f" <https://doi.org/{f['doi']}>"
        elif f.get("url"):
            line += f" <{f['url']}>"
        rows.append(line)
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------ markdown
def _roles(book: Book, doc: str, text: str, cited: list[str]) -> str:
    def repl(m: re.Match) -> str:
        role, body = m["role"], m["body"]
        if role in ("cite:p", "cite:t", "cite", "cite:ps", "cite:ts"):
            cited.extend(k.strip() for k in body.split(","))
            return cite(book, body, textual=role.startswith("cite:t"))
        explicit = re.fullmatch(r"(?P<text>.*?)\s*<(?P<label>[^>]+)>", body)
        label = explicit["label"] if explicit else body
        if role == "eq":
            if label not in book.equations:
                raise ConversionError(f"{doc}: {{eq}}`{label}` names no numbered equation")
            where, n = book.equations[label]
            href = f"#{label}" if where == doc else book.page_url(where, f"equation-{label}")
            return f"[({n})]({href})"
        if role in ("ref", "prf:ref", "numref"):
            if label in book.numbered:
                where, text_ = book.numbered[label]
                href = f"#{label}" if where == doc else book.page_url(where, label)
                return f"[{explicit['text'] if explicit else text_}]({href})"
            return f"[{explicit['text'] if explicit else label}](#{label})"
        if role == "doc":
            target = (Path(doc).parent / label).as_posix()
            title = explicit["text"] if explicit else book.titles.get(target, label)
            return f"[{title}]({book.page_url(target)})"
        if role == "math":
            return f"${body}$"
        raise ConversionError(f"{doc}: no Colab rule for the role {{{role}}}")

    return _ROLE.sub(repl, text)


def _math(book: Book, doc: str, text: str) -> str:
    def eq(m: re.Match) -> str:
        where, n = book.equations[m["label"]]
        assert where == doc, (m["label"], where, doc)
        return f'<a id="{m["label"]}"></a>\n\n$${m["body"].rstrip()} \\tag{{{n}}}$$'

    text = _EQ_LABEL.sub(eq, text)
    text = _TARGET.sub(lambda m: f'<a id="{m["label"]}"></a>', text)
    # amsmath environments written without $$ (the MyST amsmath extension): give them delimiters
    out, pos = [], 0
    for m in re.finditer(r"\$\$.*?\$\$|^\\begin\{(?P<env>[\w*]+)\}.*?^\\end\{(?P=env)\}[ \t]*$", text, re.S | re.M):
        out.append(text[pos:m.start()])
        out.append(m.group(0) if m.group(0).startswith("$$") else f"$$\n{m.group(0)}\n$$")
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line.strip() else ">" for line in text.strip("\n").splitlines())


def _options(lines: list[str]) -> tuple[dict, list[str]]:
    opts, i = {}, 0
    while i < len(lines) and re.match(r"^:[\w-]+:", lines[i]):
        key, _, value = lines[i][1:].partition(":")
        opts[key] = value.strip()
        i += 1
    return opts, lines[i:]


def _include(book: Book, doc: str, arg: str, opts: dict) -> str:
    path = (book.root / doc).parent / arg
    if not path.is_file():
        raise ConversionError(f"{doc}: literalinclude of a missing file {arg}")
    source = path.read_text()
    if "pyobject" in opts:
        tree = ast.parse(source)
        node = _find(tree, opts["pyobject"].split("."))
        if node is None:
            raise ConversionError(f"{doc}: {arg} has no object {opts['pyobject']}")
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        source = "\n".join(source.splitlines()[start - 1:node.end_lineno])
    unknown = set(opts) - {"pyobject", "language", "caption", "linenos", "dedent"}
    if unknown:
        raise ConversionError(f"{doc}: no Colab rule for literalinclude options {sorted(unknown)}")
    rel = path.resolve().relative_to(book.root).as_posix()
    where = f"`{rel}`" + (f", `{opts['pyobject']}`" if "pyobject" in opts else "")
    return f"From {where}:\n\n```{opts.get('language', 'python')}\n{source.rstrip()}\n```"


def _find(tree, names):
    node = tree
    for name in names:
        node = next((n for n in getattr(node, "body", []) if isinstance(n, (ast.FunctionDef, ast.ClassDef,
                     ast.AsyncFunctionDef)) and n.name == name), None)
        if node is None:
            return None
    return node


@dataclass
class _State:
    gated: str | None = None   # label of an open {solution-start}, whose cells follow until {solution-end}
    cited: list[str] = field(default_factory=list)
    all_cited: list[str] = field(default_factory=list)


def _directives(book: Book, doc: str, text: str, state: _State) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        fence, name, arg = m["fence"], m["name"], m["arg"]
        close = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        j = i + 1
        depth = 0
        while j < len(lines):
            if _FENCE.match(lines[j]) and _FENCE.match(lines[j])["fence"] == fence:
                depth += 1
            elif close.match(lines[j]):
                if depth == 0:
                    break
                depth -= 1
            j += 1
        if j >= len(lines):
            raise ConversionError(f"{doc}: the {{{name}}} block opened with {fence} is never closed")
        opts, body_lines = _options(lines[i + 1:j])
        body = _directives(book, doc, "\n".join(body_lines), state).strip("\n")
        out.append(_render(book, doc, name, arg, opts, body, state))
        i = j + 1
    return "\n".join(out)


def _render(book: Book, doc: str, name: str, arg: str, opts: dict, body: str, state: _State) -> str:
    label = opts.get("label")
    anchor = f'<a id="{label}"></a>\n\n' if label else ""
    if name == "exercise":
        head = book.numbered[label][1] if label in book.numbered else "Exercise"
        return anchor + _quote(f"**{head}**" + (f" ({arg})" if arg else "") + "\n\n" + body)
    if name in ("solution", "solution-start"):
        target = book.numbered.get(arg, (doc, arg))[1]
        summary = f"<summary>Solution to {target} (click to show)</summary>"
        if name == "solution-start":
            state.gated = target
            return (f"<details>{summary}\n\n{body}\n\n</details>\n\n*The code cells below, up to the end of "
                    f"the solution, are hidden as forms: double-click one to show its code.*")
        return f"<details>{summary}\n\n{body}\n\n</details>"
    if name == "solution-end":
        state.gated = None
        return "*(end of the solution)*"
    if name == "prf:proof":
        return _quote("**Proof.** " + body + " ∎")
    if name.startswith("prf:"):
        kind = PRF_NAMES.get(name[4:])
        if kind is None:
            raise ConversionError(f"{doc}: no Colab rule for {{{name}}}")
        head = book.numbered[label][1] if label in book.numbered else kind
        return anchor + _quote(f"**{head}**" + (f" ({arg})" if arg else "") + "\n\n" + body)
    if name == "admonition":
        return anchor + _quote(f"**{arg}**\n\n{body}")
    if name in ADMONITIONS:
        return anchor + _quote(f"**{name.capitalize()}**" + (f" {arg}" if arg else "") + f"\n\n{body}")
    if name == "literalinclude":
        return _include(book, doc, arg, opts)
    if name == "bibliography":
        keys = state.all_cited if "filter" in opts or not state.cited else state.cited
        return bibliography(book, keys)
    if name in ("math",):
        return anchor + f"$$\n{body}\n$$"
    if name in ("code", "code-block", "code-cell"):
        return f"```{arg}\n{body}\n```"
    raise ConversionError(f"{doc}: no Colab rule for the directive {{{name}}}")


def convert_markdown(book: Book, doc: str, text: str, state: _State) -> str:
    """One markdown cell: math first (labels), then directives, then roles."""
    text = _math(book, doc, text)
    text = _directives(book, doc, text, state)
    return _roles(book, doc, text, state.cited)


# ------------------------------------------------------------------------------------------------ notebook
def _install_cell(book: Book, cell: dict, doc: str) -> dict:
    src = "".join(cell["source"])
    pinned = f'%pip install -q "xreg_edu @ git+{book.repo_url}@{book.ref}"'
    source = f"%env XREG_EDU_SOURCE={book.repo_url}@{book.ref}"  # xr.datasets.benchmark_result downloads from it
    new, n = re.subn(r"^(?P<indent>[ \t]*)%pip install .*$", lambda m: f"{m['indent']}{pinned}\n{m['indent']}{source}",
                     src, flags=re.M)
    if n != 1:
        raise ConversionError(f"{doc}: the first code cell must hold one `%pip install` line to pin, found {n}")
    cell = copy.deepcopy(cell)
    cell["source"] = new.splitlines(keepends=True)
    return cell


def convert(path: Path, book: Book) -> dict:
    """The Colab copy of one chapter notebook (a new notebook dict; outputs cleared)."""
    path = Path(path)
    doc = book.docname(path)
    nb = json.loads(path.read_text())
    state = _State()
    # every citation of the chapter, for a {bibliography} that filters by document
    for text in _markdown_cells(path):
        state.all_cited.extend(k.strip() for m in _ROLE.finditer(text) if m["role"].startswith("cite")
                               for k in m["body"].split(","))
    cells = []
    first_code = True
    for cell in nb["cells"]:
        cell = copy.deepcopy(cell)
        if cell["cell_type"] == "markdown":
            text = convert_markdown(book, doc, "".join(cell["source"]), state)
            cell["source"] = text.splitlines(keepends=True)
        elif cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            if first_code:
                cell = _install_cell(book, cell, doc)
                first_code = False
            elif state.gated:
                src = "".join(cell["source"])
                cell["source"] = (f"#@title Solution to {state.gated} (double-click to show the code)\n"
                                  + src).splitlines(keepends=True)
                cell["metadata"]["cellView"] = "form"
        cells.append(cell)
    intro = {
        "cell_type": "markdown", "id": "colab-intro", "metadata": {},
        "source": [f"*Colab copy of [{book.titles.get(doc, doc)}]({book.page_url(doc)}) from the book's source at "
                   f"`{book.ref}`. The first code cell installs `xreg_edu` at that version; the datasets download "
                   f"from their pinned public sources, sha256-checked (`xr.datasets`).*"],
    }
    at = 1 if cells and cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ") else 0
    nb["cells"] = [*cells[:at], intro, *cells[at:]]  # under the chapter's title
    nb.setdefault("metadata", {})["colab"] = {"provenance": [], "toc_visible": True}
    return nb


def write_all(book: Book, outdir: Path) -> list[Path]:
    """Write the Colab copy of every chapter under ``outdir/<docname>.ipynb`` (atomically)."""
    written = []
    for path in book.chapters:
        target = outdir / f"{book.docname(path)}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".ipynb.tmp")
        tmp.write_text(json.dumps(convert(path, book), indent=1, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
        written.append(target)
    return written


# ------------------------------------------------------------------------------------------------ sphinx
def _check_numbers(app, book: Book) -> None:
    """The copies' equation numbers must be the website's: compare with Sphinx's math domain."""
    from sphinx.errors import ExtensionError

    numbers = app.env.toc_fignumbers  # docname -> figtype -> node id -> number tuple (what the pages print)
    for label, (doc, n) in book.equations.items():
        if doc not in app.env.found_docs:  # a partial build (--toc): that chapter is not on this website
            continue
        shown = numbers.get(doc, {}).get("displaymath", {}).get(f"equation-{label}")
        if shown is None or ".".join(map(str, shown)) != str(n):
            raise ExtensionError(f"colab: equation {label} is ({n}) in the Colab copy of {doc} but {shown} on the "
                                 f"website; the converter's numbering rule is out of date")


def _build_finished(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    book = load_book(Path(app.srcdir))
    _check_numbers(app, book)
    write_all(book, Path(app.outdir) / COLAB_DIR)


def _colab_button(app, pagename, templatename, context, doctree) -> None:
    """Point the theme's Colab launch button at the published Colab copy of the page."""
    for group in context.get("header_buttons", []):
        if group.get("label") != "launch-buttons":
            continue
        for button in group.get("buttons", []):
            if button.get("text") == "Colab":
                colab, rest = button["url"].split("/github/", 1)
                org, repo = rest.split("/")[:2]
                button["url"] = (f"{colab}/github/{org}/{repo}/blob/{app.config.colab_branch}/{COLAB_DIR}/"
                                 f"{pagename}.ipynb")


def setup(app) -> dict:
    app.add_config_value("colab_branch", "gh-pages", "html")
    app.connect("build-finished", _build_finished)
    app.connect("html-page-context", _colab_button, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
