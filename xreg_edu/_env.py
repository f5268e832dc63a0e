"""Environment switches shared by the library, the chapters and CI."""
from __future__ import annotations

import os


def env_flag(name: str) -> bool:
    """True when the environment variable ``name`` is set to anything but '', '0', 'false' or 'no'."""
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no")


def is_quick() -> bool:
    """True under ``XREG_EDU_QUICK=1`` (CI and nbmake): iteration counts shrink, the method never changes."""
    return env_flag("XREG_EDU_QUICK")


def show_versions() -> dict:
    """Print (and return) what a chapter's results depend on: versions, device, threads, data folders, switches."""
    import platform
    import sys

    import numpy
    import torch

    from . import __version__
    from .datasets.fetch import data_dir, mirror_dir

    info = {
        "xreg_edu": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "data cache (XREG_EDU_DATA)": str(data_dir()),
        "mirror (XREG_EDU_MIRROR)": str(mirror_dir() or "-"),
        "quick (XREG_EDU_QUICK)": is_quick(),
        "static (XREG_EDU_STATIC)": env_flag("XREG_EDU_STATIC"),
    }
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}}  {value}", file=sys.stdout)
    return info


# Figures of the book: >= 150 dpi and no text under 9 pt. Figures up to PAGE_WIDTH inches wide are shown at
# their physical size on the website's content column (740 px = 7.7 in at a 1280 px window, measured by
# tests/test_book_html.py), so 9 pt stays 9 pt; the 0.9 in margin absorbs labels that the tight bounding box adds.
FIGURE_STYLE = {
    "figure.dpi": 150,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "figure.titlesize": 11,
}
PAGE_WIDTH = 6.8  # inches


def setup_chapter(seed: int = 0, threads: int = 2) -> bool:
    """The one preamble of every chapter: threads, seeds, figure style, a version print-out; returns quick mode.

    Args:
        seed: seeds ``random``, NumPy and torch (CPU and CUDA).
        threads: torch intra-op threads (2: the CI machine's cores; results do not depend on it).

    Matplotlib gets ``FIGURE_STYLE`` (150 dpi, fonts of 9-11 pt) after its notebook backend is active.

    Returns:
        :func:`~xreg_edu.widgets.is_quick` -- True under ``XREG_EDU_QUICK=1`` (fewer iterations, never another method).
    """
    import random

    import numpy
    import torch

    torch.set_num_threads(int(threads))
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)
    import matplotlib.pyplot as plt  # first: activating the inline backend would reset figure.dpi

    plt.rcParams.update(FIGURE_STYLE)
    show_versions()
    return is_quick()
