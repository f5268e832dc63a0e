"""Real-data registry: every dataset's files, hashes, pinned URLs, terms and citations, plus loaders.

    >>> from xreg_edu.datasets import list_datasets, load_dataset, dataset_card
    >>> group = load_dataset("icbm152")          # embedded in nilearn: no mirror, no network needed
    >>> group.images.shape                      # [3, 1, 128, 128]: T1, T2_simulated, PD_simulated

Files are fetched with pooch into ``$XREG_EDU_DATA`` (default: the user cache); ``$XREG_EDU_MIRROR`` is looked in
first. Every file's sha256 is checked. Submodules load lazily (importing this package is cheap).
"""
from __future__ import annotations

import importlib

from .errors import (CacheNotWritableError, DatasetError, GroupMismatchError, HashMismatchError, MissingFileError,
                     NoNetworkError, TruncatedDownloadError, UnknownDatasetError, UnreadableFileError)
# eager (stdlib + registry only): the function ``fetch`` must win over the submodule of the same name
from .fetch import data_dir, fetch, fetch_file, mirror_dir

_LAZY = {
    "list_datasets": "loaders", "load_dataset": "loaders",
    "dataset_card": "cards", "render_cards": "cards",
    "get_spec": "registry", "REGISTRY": "registry",
    "benchmark_result": "results",
}

__all__ = sorted(list(_LAZY) + ["fetch", "fetch_file", "data_dir", "mirror_dir",
    "DatasetError", "UnknownDatasetError", "MissingFileError", "HashMismatchError", "TruncatedDownloadError",
    "NoNetworkError", "CacheNotWritableError", "UnreadableFileError", "GroupMismatchError"])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xreg_edu.datasets' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
