"""Environment switches shared by the library, the chapters and CI."""
from __future__ import annotations

import os


def env_flag(name: str) -> bool:
    """True when the environment variable ``name`` is set to anything but '', '0', 'false' or 'no'."""
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no")


def is_quick() -> bool:
    """True under ``XREG_EDU_QUICK=1`` (CI and nbmake): iteration counts shrink, the method never changes."""
    return env_flag("XREG_EDU_QUICK")
