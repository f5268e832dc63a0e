"""Hostile inputs and faults (issue 13): one row per case, each must give a clear, specific error.

Add a case by appending ``pytest.param(call, ExpectedError, "message regex", id="itemN-what")`` to ``CASES``:
``call`` is a zero-argument function (it may build its inputs itself, e.g. from the ``Ctx`` fixtures passed to it
when it takes one argument). Cases that need more than "raises with this message" (partial files, exit codes,
printed text) are the functions further down, still one per issue-13 item.
"""
from __future__ import annotations

import inspect

import pytest
import torch

import xreg_edu as xr


def _rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g).to(dtype)


CASES: list = []

# ---- info / evaluate / datasets / io (H3) ----

# ---- engine (register_group, options, objectives) ----


@pytest.mark.parametrize("call, error, message", CASES)
def test_hostile_input_gives_a_clear_error(call, error, message, tmp_path):
    with pytest.raises(error, match=message):
        call(tmp_path) if inspect.signature(call).parameters else call()
