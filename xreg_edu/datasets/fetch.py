"""Fetch registered files into the cache with a sha256 check; a local mirror is looked in first.

Folders:
    ``XREG_EDU_DATA``: the cache (default ``pooch.os_cache("xreg_edu")``). Files keep their registry paths below it.
    ``XREG_EDU_MIRROR``: an optional read-only folder with the same layout (CI: ``../shared/data``). A file found
        there is hash-checked and then copied into the cache, so nothing is downloaded.
Order for each file: embedded copy in an installed package (ICBM152 in nilearn) -> cache -> mirror -> download
(pooch, pinned URL). A file is only ever placed under its final name after its size and sha256 were verified.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

from .._files import apply_umask, atomic_path, file_sha256
from .errors import (CacheNotWritableError, HashMismatchError, MissingFileError, NoNetworkError,
                     TruncatedDownloadError)
from .registry import RemoteFile, get_spec

__all__ = ["data_dir", "mirror_dir", "fetch", "fetch_file", "file_sha256"]

DOWNLOAD_RETRIES = 2        # pooch retries a failed or corrupt download this many times (waiting 1 s, 2 s, ...)
ORPHAN_AGE_S = 60.0         # an unlocked temporary download folder older than this is a leftover (SIGKILL)

try:  # advisory locks mark the temporary folders of live downloads (any process)
    import fcntl
except ImportError:  # pragma: no cover - Windows: age-based cleanup only
    fcntl = None


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


def _unwritable(folder: Path, err: OSError) -> CacheNotWritableError:
    return CacheNotWritableError(
        f"cannot write to the dataset cache folder {folder} ({type(err).__name__}: {err}). Set XREG_EDU_DATA to a "
        f"writable folder (now {os.environ.get('XREG_EDU_DATA') or 'unset, default ' + str(data_dir())}), "
        f"or fix the folder's permissions.")


def _clean_orphans(folder: Path) -> None:
    """Remove temporary ``.download-*`` folders left by killed downloads (their lock is free, or, without a lock
    file, they are older than ``ORPHAN_AGE_S``); live downloads of other processes hold their lock."""
    for d in folder.glob(".download-*"):
        lock = d / ".lock"
        try:
            if fcntl is not None and lock.is_file():
                with open(lock, "rb") as f:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)   # raises while the owner is alive
            elif time.time() - d.stat().st_mtime < ORPHAN_AGE_S:
                continue
        except OSError:
            continue
        shutil.rmtree(d, ignore_errors=True)


class _CountingDownloader:
    """pooch's HTTP downloader that remembers how many bytes the last attempt wrote (to tell short from corrupt)."""

    def __init__(self, progressbar: bool):
        import pooch

        self.inner = pooch.HTTPDownloader(progressbar=progressbar)
        self.received = None

    def __call__(self, url, output_file, pooch_obj, check_only=False):
        self.received = None
        try:
            return self.inner(url, output_file, pooch_obj, check_only=check_only)
        finally:
            if isinstance(output_file, (str, os.PathLike)) and os.path.exists(output_file):
                self.received = os.path.getsize(output_file)


def _pooch_download(rf: RemoteFile, tmpdir: Path, dest: Path, progressbar: bool) -> None:
    """pooch fetches ``rf.url`` into ``tmpdir`` (sha256 check, retries, temporary file then move); the verified
    file is then renamed onto ``dest``."""
    import pooch
    import requests

    downloader = _CountingDownloader(progressbar)
    store = pooch.create(path=tmpdir, base_url="", registry={dest.name: f"sha256:{rf.sha256}"},
                         urls={dest.name: rf.url}, retry_if_failed=DOWNLOAD_RETRIES)
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel("WARNING")  # pooch's "Downloading ..." notes are noise here
    try:
        got = Path(store.fetch(dest.name, downloader=downloader))
    except (ValueError, requests.exceptions.RequestException, OSError) as err:
        received = downloader.received or 0
        cut = isinstance(err, requests.exceptions.ChunkedEncodingError)   # body shorter than Content-Length
        if (cut or received) and received < rf.size:
            raise TruncatedDownloadError(
                f"truncated download of {rf.url}: got {received} of {rf.size} bytes ({type(err).__name__}: {err}); "
                f"nothing was written to {dest}. Check the connection and fetch again.") from err
        if isinstance(err, ValueError):
            raise HashMismatchError(
                f"sha256 mismatch for the download of {rf.url} (intended for {dest})\n  expected {rf.sha256}\n"
                f"  ({err})\nNothing was written. The server returned different bytes; fetch again or use a "
                f"mirror (XREG_EDU_MIRROR).") from err
        raise NoNetworkError(
            f"could not download {rf.url} ({type(err).__name__}: {err}) and the file is neither in the "
            f"cache ({dest}) nor in a mirror folder. Set XREG_EDU_MIRROR to a folder that holds "
            f"'{rf.path}' (e.g. a copy of shared/data), or connect to the internet and try again.") from err
    finally:
        logger.setLevel(level)
    apply_umask(got)                     # pooch's temporary file is private (0600)
    os.replace(got, dest)


def _download(rf: RemoteFile, dest: Path, progressbar: bool) -> None:
    """Download into a private ``.download-*`` folder beside ``dest``, locked while it runs (so that orphans of
    killed downloads can be told from live ones and removed)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _clean_orphans(dest.parent)
        tmpdir = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
    except OSError as err:
        raise _unwritable(dest.parent, err) from err
    try:
        with open(tmpdir / ".lock", "wb") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            _pooch_download(rf, tmpdir, dest, progressbar)
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
        CacheNotWritableError: the cache folder (``XREG_EDU_DATA``) cannot be written.
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
            try:
                with atomic_path(dest) as tmp:
                    shutil.copyfile(src, tmp)
            except OSError as err:
                raise _unwritable(dest.parent, err) from err
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
