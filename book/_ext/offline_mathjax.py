"""Serve MathJax from the built website itself, so that ``_build/html`` opened from disk renders every equation.

At build time the official ``mathjax`` npm package (version and sha256 pinned below) is fetched once with
``npm pack`` into ``_build/.vendor`` (or taken from ``$XREG_EDU_MATHJAX_TGZ``, a file made by ``npm pack``), its
``es5`` folder is copied to ``_static/mathjax`` and every page, with math or without (sidebar titles carry math
too), loads ``_static/mathjax/tex-mml-chtml.js``. Nothing of MathJax is committed to the repository.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

MATHJAX_VERSION = "3.2.2"
MATHJAX_SHA256 = "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"  # mathjax-3.2.2.tgz
ENTRY = "tex-mml-chtml.js"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tarball(vendor: Path) -> Path:
    given = os.environ.get("XREG_EDU_MATHJAX_TGZ")
    if given:
        return Path(given)
    tgz = vendor / f"mathjax-{MATHJAX_VERSION}.tgz"
    if tgz.is_file():
        return tgz
    npm = shutil.which("npm")
    if npm is None:
        raise ExtensionError(
            f"offline_mathjax: MathJax {MATHJAX_VERSION} is fetched with npm, and no `npm` is in PATH. Install "
            f"Node.js/npm (e.g. `apt-get install -y npm`) or set XREG_EDU_MATHJAX_TGZ to the file that "
            f"`npm pack mathjax@{MATHJAX_VERSION}` writes.")
    vendor.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=vendor) as tmp:
        done = subprocess.run([npm, "pack", f"mathjax@{MATHJAX_VERSION}", "--pack-destination", tmp, "--silent"],
                              capture_output=True, text=True, timeout=600)
        got = Path(tmp) / tgz.name
        if done.returncode != 0 or not got.is_file():
            raise ExtensionError(f"offline_mathjax: `npm pack mathjax@{MATHJAX_VERSION}` failed "
                                 f"(exit {done.returncode}): {done.stderr.strip()[-500:]}")
        os.replace(got, tgz)  # never a partial file under the final name
    return tgz


def vendor_mathjax(vendor: Path) -> Path:
    """Folder holding ``mathjax/<es5 files>`` for ``html_static_path``; fetched and hash-checked when missing."""
    root = vendor / f"mathjax-{MATHJAX_VERSION}"
    if (root / "mathjax" / ENTRY).is_file():
        return root
    tgz = _tarball(vendor)
    digest = _sha256(tgz)
    if digest != MATHJAX_SHA256:
        raise ExtensionError(f"offline_mathjax: {tgz} has sha256 {digest}, expected {MATHJAX_SHA256} "
                             f"(mathjax {MATHJAX_VERSION}); delete it to fetch it again.")
    vendor.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=vendor) as tmp:
        with tarfile.open(tgz) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/es5/") and m.isfile()]
            tar.extractall(tmp, members=members, filter="data")
        staged = Path(tmp) / "root"
        staged.mkdir()
        os.replace(Path(tmp) / "package" / "es5", staged / "mathjax")
        if root.exists():
            shutil.rmtree(root)
        os.replace(staged, root)
    return root


def _config_inited(app: Sphinx, config) -> None:
    vendor = Path(app.outdir).parent / ".vendor"  # _build/.vendor next to _build/html
    static = vendor_mathjax(vendor)
    config.html_static_path = [*config.html_static_path, str(static)]
    config.mathjax_path = f"mathjax/{ENTRY}"  # relative paths are relative to _static


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _config_inited)
    app.set_html_assets_policy("always")  # MathJax on every page: titles in the sidebar carry math too
    return {"parallel_read_safe": True, "parallel_write_safe": True}
