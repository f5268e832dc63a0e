"""Safe files: atomic writes (complete under the final name or absent, never partial), modes that respect the
umask, sha256 digests. Generic: the dataset cache, the CLI outputs and weight loaders share them."""
from __future__ import annotations

import hashlib
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "file_sha256", "umask", "apply_umask"]


def umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: ``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)   # elsewhere: set and restore (not atomic with respect to other threads)
    os.umask(old)
    return old


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have (0666 / 0777 minus the umask).

    Files made by ``tempfile`` (and pooch, which uses it) are private (0600 / 0700); call this before moving them
    to their final, shared name.
    """
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~umask())


@contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``dest`` (same suffixes, so writers pick the right format); on success it is
    renamed onto ``dest`` with ``os.replace``, on any error (or Ctrl-C) it is removed.

    The temporary file is created with mode 0666 minus the umask (as ``open`` would), so the final file is as
    readable as any other file the user writes.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(dest.suffixes[-2:]) if dest.name.endswith(".nii.gz") else dest.suffix
    while True:
        tmp = str(dest.parent / f".{dest.name}.{secrets.token_hex(6)}.tmp{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

