"""The repository's committed benchmark results (``benchmarks/results/*.json``), wherever a chapter runs.

In a checkout (or an editable install) the file is read from ``benchmarks/results/``. Elsewhere -- the Colab copies
of the chapters, whose first cell sets ``XREG_EDU_SOURCE=<repository URL>@<tag or commit>`` -- the file of exactly
that release is downloaded once with pooch from the repository's raw files into ``$XREG_EDU_DATA/benchmarks/<ref>/``
(the commit pins the content; the JSON is parsed before it is kept).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from .errors import MissingFileError, NoNetworkError
from .fetch import data_dir

__all__ = ["benchmark_result"]

CHECKOUT_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _source() -> tuple[str, str, str] | None:
    value = os.environ.get("XREG_EDU_SOURCE", "").strip()
    if not value:
        return None
    m = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?@([\w./-]+)", value)
    if not m:
        raise ValueError(f"XREG_EDU_SOURCE={value!r} must be https://github.com/ORG/REPO@TAG_OR_COMMIT")
    return m.group(1), m.group(2), m.group(3)


def benchmark_result(name: str) -> dict:
    """The parsed JSON of ``benchmarks/results/<name>`` (e.g. ``"bench_rigid_table.json"``).

    Raises:
        ValueError: ``name`` is not a plain ``*.json`` file name.
        MissingFileError: not in this checkout and no ``XREG_EDU_SOURCE`` to download it from (says what to set).
        NoNetworkError: the download failed.
    """
    if not re.fullmatch(r"[\w.-]+\.json", name):
        raise ValueError(f"name={name!r}: give the file name inside benchmarks/results, e.g. 'bench_rigid_table.json'")
    local = CHECKOUT_RESULTS / name
    if local.is_file():
        return json.loads(local.read_text())
    source = _source()
    if source is None:
        raise MissingFileError(
            f"benchmarks/results/{name} is not in this installation (it ships with the repository, not the "
            f"package). Run from a checkout, or set XREG_EDU_SOURCE=https://github.com/ORG/REPO@COMMIT (the Colab "
            f"copies of the chapters set it) to download the file of that release.")
    org, repo, ref = source
    dest = data_dir() / "benchmarks" / ref / name
    if not dest.is_file():
        import pooch
        import requests

        url = f"https://raw.githubusercontent.com/{org}/{repo}/{ref}/benchmarks/results/{name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=dest.parent) as tmp:
            try:
                got = Path(pooch.retrieve(url, known_hash=None, fname=name, path=tmp, progressbar=False))
            except (requests.exceptions.RequestException, OSError) as err:
                raise NoNetworkError(f"could not download {url} ({type(err).__name__}: {err}); connect to the "
                                     f"internet or run from a checkout of the repository") from err
            json.loads(got.read_text())  # a proxy's error page never lands under the final name
            os.replace(got, dest)
    return json.loads(dest.read_text())
