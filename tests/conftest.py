"""Shared test helpers: real images come through the project's own registry (mirror first, else download)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lets test modules share helpers (e.g. real_slice)


def open_ms_file(modality: str, patient: str = "patient07") -> Path:
    """Path of one open_ms volume (FLAIR, T1, T1POST, T2, GOLD_STANDARD), fetched and sha256-checked."""
    from xreg_edu.datasets import fetch

    matches = [p for p in fetch("open_ms") if p.parent.name == patient and p.name.startswith(f"{modality}_")]
    if len(matches) != 1:
        raise FileNotFoundError(f"open_ms has no unique {patient}/{modality} file (found {matches})")
    return matches[0]


@pytest.fixture
def one_thread_full_budget(monkeypatch):
    """Registration tests: full iteration budgets (known answers need them) and one thread (small tensors gain
    nothing from two, and a busy shared CI machine makes OpenMP spin)."""
    monkeypatch.delenv("XREG_EDU_QUICK", raising=False)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
