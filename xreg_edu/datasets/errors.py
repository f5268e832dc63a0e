"""Specific exceptions for data problems: each says what went wrong, where, and what to do."""
from __future__ import annotations

__all__ = [
    "DatasetError", "UnknownDatasetError", "MissingFileError", "HashMismatchError", "TruncatedDownloadError",
    "NoNetworkError", "CacheNotWritableError", "UnreadableFileError", "GroupMismatchError",
]


class DatasetError(Exception):
    """Base class of every data error raised by :mod:`xreg_edu.datasets` and :mod:`xreg_edu.io`."""


class UnknownDatasetError(DatasetError, ValueError):
    """The dataset name is not registered (the message lists the valid names)."""


class MissingFileError(DatasetError, FileNotFoundError):
    """A file that should exist is absent (the message gives the path and what to do)."""


class HashMismatchError(DatasetError, OSError):
    """A file's sha256 differs from the registry (message: path, expected and actual hash, what to do)."""


class TruncatedDownloadError(HashMismatchError):
    """A download ended early; nothing was written under the final file name."""


class NoNetworkError(DatasetError, ConnectionError):
    """The file is neither cached nor in a mirror, and it could not be downloaded."""


class CacheNotWritableError(DatasetError, PermissionError):
    """The download cache cannot be written (the message names the folder and ``XREG_EDU_DATA``)."""


class UnreadableFileError(DatasetError, OSError):
    """A file exists but cannot be read as an image (the message gives the path)."""


class GroupMismatchError(DatasetError, ValueError):
    """Images cannot form one group (different shapes, dimensionality or spacing, N < 2, non-finite values)."""
