"""Committed weights are checked before loading (xreg_edu.vae.weights): corrupted, truncated, empty or random files,
and missing or mismatching JSON sidecars, are clear errors; every committed weight file verifies."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from xreg_edu._files import file_sha256
from xreg_edu.vae.weights import load_weights, meta_path, save_weights

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "xreg_edu" / "weights"


@pytest.fixture
def saved(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {"a.weight": torch.randn(64, 64, generator=g), "b.bias": torch.randn(16, generator=g)}
    path = save_weights(state, tmp_path / "net.pt", {"command": "python -m x --seed 0", "config": {"k": 5},
                                                    "held_out": {"dice": [0.7, 0.8]}})
    return state, path


def test_round_trip_and_sidecar(saved):
    state, path = saved
    loaded, meta = load_weights(path)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert meta["sha256"] == file_sha256(path) and meta["bytes"] == os.path.getsize(path)
    assert meta["command"] == "python -m x --seed 0" and meta["held_out"] == {"dice": [0.7, 0.8]}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def _flip(path: Path, count: int = 64, at: int | None = None):
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if at is None else at
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip64", "flip1_tensor_data", "truncate", "empty", "random"])
def test_damaged_file_is_a_clear_error(saved, damage):
    _, path = saved
    size = path.stat().st_size
    if damage == "flip64":
        _flip(path, 64)
    elif damage == "flip1_tensor_data":
        _flip(path, 1, at=size - 2000)  # inside the float data: torch.load would succeed with wrong weights
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(os.urandom(size))
    with pytest.raises(ValueError, match=r"(?=.*net\.pt)(?=.*(sha256|bytes))(?=.*restore it)"):
        load_weights(path)


def test_missing_or_mismatching_sidecar(saved, tmp_path):
    _, path = saved
    meta = json.loads(meta_path(path).read_text())
    meta["sha256"] = "0" * 64
    meta_path(path).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="sha256 of weights .*net.pt"):
        load_weights(path)
    meta_path(path).write_text("{not json")
    with pytest.raises(ValueError, match="net.json is not valid JSON"):
        load_weights(path)
    meta_path(path).write_text(json.dumps({"command": "x"}))
    with pytest.raises(ValueError, match="keys"):
        load_weights(path)
    meta_path(path).unlink()
    with pytest.raises(FileNotFoundError, match="no sidecar net.json"):
        load_weights(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(tmp_path / "absent.pt")


def test_save_refuses_incomplete_meta_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="command"):
        save_weights({"w": torch.zeros(2)}, tmp_path / "m.pt", {"config": {}})
    with pytest.raises(TypeError):
        save_weights({"w": torch.zeros(2)}, tmp_path / "m.pt", {"command": "c", "config": {}, "bad": {1, 2}.__iter__()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("pt", sorted(WEIGHTS_DIR.glob("*.pt")), ids=lambda p: p.name)
def test_committed_weights_verify(pt):
    _, meta = load_weights(pt)
    assert meta["command"] and meta["config"]
