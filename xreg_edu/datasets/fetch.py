"""Fetch registered files into the cache with a sha256 check; a local mirror is looked in first.

Folders:
    ``XREG_EDU_DATA``: the cache (default ``pooch.os_cache("xreg_edu")``). Files keep their registry paths below it.
    ``XREG_EDU_MIRROR``: an optional read-only folder with the same layout (CI: ``../shared/data``). A file found
        there is hash-checked and then copied into the cache, so nothing is downloaded.
Order for each file: embedded copy in an installed package (ICBM152 in nilearn) -> cache -> mirror -> download
(pooch, pinned URL). A file is only ever placed under its final name after its size and sha256 were verified.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .._files import atomic_path
from .errors import (HashMismatchError, MissingFileError, NoNetworkError, TruncatedDownloadError)
from .registry import RemoteFile, get_spec

__all__ = ["data_dir", "mirror_dir", "fetch", "fetch_file", "file_sha256"]


def data_dir() -> Path:
    """The cache folder: ``$XREG_EDU_DATA`` or ``pooch.os_cache("xreg_edu")``."""
    env = os.environ.get("XREG_EDU_DATA")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("xreg_edu"))


def mirror_dir() -> Path | None:
    """The mirror folder ``$XREG_EDU_MIRROR`` (None when unset or empty)."""
    env = os.environ.get("XREG_EDU_MIRROR")
    return Path(env).expanduser() if env else None


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mismatch(path: Path, rf: RemoteFile, actual: str, where: str) -> HashMismatchError:
    return HashMismatchError(
        f"sha256 mismatch for {where} file {path}\n  expected {rf.sha256}\n  actual   {actual}\n"
        f"The file is corrupt or a different version. Delete it and fetch again "
        f"(python data_scripts/fetch_data.py NAME, or fetch(name, force=True)); for a mirror file, "
        f"replace it with a fresh copy from {rf.url}")


def _verify(path: Path, rf: RemoteFile, where: str) -> None:
    actual = file_sha256(path)
    if actual != rf.sha256:
        raise _mismatch(path, rf, actual, where)


def _embedded(rf: RemoteFile) -> Path | None:
    """Path of the embedded copy if the package is installed and the bytes match; else None."""
    if not rf.embedded:
        return None
    package, rel = rf.embedded.split(":", 1)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if path.is_file() and file_sha256(path) == rf.sha256:
        return path
    return None


def _copy_verified(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` through a temporary file in the destination folder and an atomic rename."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def _download(rf: RemoteFile, dest: Path, progressbar: bool) -> None:
    """Download ``rf.url`` with pooch into a private temporary folder, verify size + sha256, then rename."""
    import pooch
    import requests

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
    try:
        logger = pooch.get_logger()
        level = logger.level
        logger.setLevel("WARNING")  # our own size + sha256 checks follow; pooch's "hash is ..." note is noise
        try:
            got = Path(pooch.retrieve(rf.url, known_hash=None, fname=dest.name, path=tmpdir,
                                      progressbar=progressbar))
        except (requests.exceptions.RequestException, OSError) as err:
            raise NoNetworkError(
                f"could not download {rf.url} ({type(err).__name__}: {err}) and the file is neither in the "
                f"cache ({dest}) nor in a mirror folder. Set XREG_EDU_MIRROR to a folder that holds "
                f"'{rf.path}' (e.g. a copy of shared/data), or connect to the internet and try again.") from err
        finally:
            logger.setLevel(level)
        size = got.stat().st_size
        if size < rf.size:
            raise TruncatedDownloadError(
                f"truncated download of {rf.url}: got {size} of {rf.size} bytes; nothing was written to {dest}. "
                f"Check the connection and fetch again.")
        actual = file_sha256(got)
        if actual != rf.sha256:
            raise HashMismatchError(
                f"sha256 mismatch for the download of {rf.url} (intended for {dest})\n  expected {rf.sha256}\n"
                f"  actual   {actual}\nNothing was written. The server returned different bytes; fetch again or "
                f"use a mirror (XREG_EDU_MIRROR).")
        os.replace(got, dest)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def fetch_file(rf: RemoteFile, *, force: bool = False, progressbar: bool = False) -> Path:
    """Local, verified path of one registered file (embedded -> cache -> mirror -> download).

    Args:
        rf: the registry entry.
        force: delete a cached copy first (re-copy from the mirror or re-download).
        progressbar: show pooch's per-file download bar.
    Raises:
        HashMismatchError: a cached or mirror copy has the wrong sha256 (path, both hashes, what to do).
        TruncatedDownloadError / HashMismatchError: a download was short / different (nothing kept).
        MissingFileError: the mirror is set but lacks the file, and the download failed.
        NoNetworkError: no mirror is set and the download failed.
    """
    embedded = _embedded(rf)
    if embedded is not None:
        return embedded
    dest = data_dir() / rf.path
    if force and dest.exists():
        dest.unlink()
    if dest.is_file():
        _verify(dest, rf, "cached")
        return dest
    mirror = mirror_dir()
    if mirror is not None:
        src = mirror / rf.path
        if src.is_file():
            _verify(src, rf, "mirror")
            _copy_verified(src, dest)
            return dest
    try:
        _download(rf, dest, progressbar)
    except NoNetworkError as err:
        if mirror is not None:
            raise MissingFileError(
                f"{mirror / rf.path} is missing from the mirror (XREG_EDU_MIRROR={mirror}) and the download "
                f"failed ({err.__cause__}). Put the file there (source: {rf.url}), fix XREG_EDU_MIRROR, or "
                f"connect to the internet.") from err
        raise
    return dest


def fetch(name: str, *, force: bool = False, progressbar: bool = False) -> list[Path]:
    """Verified local paths of every file of dataset ``name`` (registry order)."""
    return [fetch_file(rf, force=force, progressbar=progressbar) for rf in get_spec(name).files]
