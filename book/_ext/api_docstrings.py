"""Docstring conventions of xreg_edu for the API reference (book/api.md).

The docstrings write set sizes and norms as ``|Omega|``, ``|M|``: plain notation, never reStructuredText
substitutions, so the pipes are escaped before autodoc parses the text. Short cross-references (``ImageGroup``)
resolve to the one documented object of that name.
"""
from __future__ import annotations

import re

_PIPES = re.compile(r"(?<![\\`|])\|([^\s|`][^|`\n]*?)\|(?![|_`])")


def _escape_pipes(app, what, name, obj, options, lines) -> None:
    in_literal = False
    for i, line in enumerate(lines):
        if line.count("``") % 2:
            in_literal = not in_literal
        if "``" not in line and not in_literal:
            lines[i] = _PIPES.sub(r"\\|\1\\|", line)
        else:  # outside the ``inline literals`` of the line only
            parts = line.split("``")
            lines[i] = "``".join(p if k % 2 else _PIPES.sub(r"\\|\1\\|", p) for k, p in enumerate(parts))


def setup(app) -> dict:
    app.connect("autodoc-process-docstring", _escape_pipes)
    app.connect("missing-reference", _resolve_short_names)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def _resolve_short_names(app, env, node, contnode):
    """A docstring's ``:class:`ImageGroup``` names the object where it is defined (``xreg_edu.group``) but the
    reference page documents it where it is exported. Resolve such a reference when exactly one documented
    ``xreg_edu`` object (or module) ends with the same name; anything else stays a nitpicky warning."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not re.fullmatch(r"[\w.]+", target):
        return None
    last = target.rsplit(".", 1)[-1]
    domain = env.get_domain("py")
    if node.get("reftype") == "mod":
        names = [m for m in domain.modules if m.startswith("xreg_edu") and (m == target or m.endswith("." + last))]
    else:
        names = [n for n, obj in domain.objects.items() if n.startswith("xreg_edu") and n.rsplit(".", 1)[-1] == last
                 and obj.objtype != "module" and not obj.aliased]
    if len(names) != 1:
        return None
    from sphinx.util.nodes import make_refnode

    name = names[0]
    if node.get("reftype") == "mod":
        docname, anchor = domain.modules[name].docname, domain.modules[name].node_id
    else:
        docname, anchor = domain.objects[name].docname, domain.objects[name].node_id
    return make_refnode(app.builder, node["refdoc"], docname, anchor, contnode, name)
