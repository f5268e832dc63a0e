"""Hostile inputs and faults (issue 13): one row per case, each must give a clear, specific error.

Add a case by appending ``pytest.param(call, ExpectedError, "message regex", id="itemN-what")`` to ``CASES``:
``call`` takes no argument, or one ``ctx`` with ``ctx.tmp`` (a fresh folder) and ``ctx.monkeypatch``.
Command-line cases go to ``CLI_CASES``: ``pytest.param(argv(ctx, files), exit_status, "stderr regex", id=...)``;
each must fail before any registration runs and print one line, no traceback. Cases that need more than that
(partial files, file modes, correct answers) are the functions further down, one per issue-13 item.
"""
from __future__ import annotations

import contextlib
import importlib
import errno
import functools
import hashlib
import http.server
import inspect
import json
import math
import os
import re
import stat
import threading
import time
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import xreg_edu as xr
from xreg_edu import info
from xreg_edu.cli import MANIFEST, main
from xreg_edu.datasets import CacheNotWritableError, TruncatedDownloadError, UnreadableFileError
from xreg_edu.datasets.registry import RemoteFile

fetch_mod = importlib.import_module("xreg_edu.datasets.fetch")   # the module (the package exports a function)


def _rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g).to(dtype)


CASES: list = []

# ---- info / evaluate / datasets / io (H3) ----
_PAYLOAD = bytes(range(256)) * 40                       # 10240 bytes served by the local HTTP server
_SHA = hashlib.sha256(_PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/cut``: announces 10240 bytes, sends 1000 and hangs up; ``/flaky``: like /cut on the first request only;
    anything else: the whole payload."""
    hits: dict = {}

    def do_GET(self):
        n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        cut = self.path == "/cut" or (self.path == "/flaky" and n == 1)
        self.send_response(200)
        self.send_header("Content-Length", str(len(_PAYLOAD)))
        self.end_headers()
        self.wfile.write(_PAYLOAD[:1000] if cut else _PAYLOAD)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _http():
    handler = type("H", (_Handler,), {"hits": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def _isolated(ctx, cache=None):
    ctx.monkeypatch.setenv("XREG_EDU_DATA", str(cache or ctx.tmp / "cache"))
    ctx.monkeypatch.delenv("XREG_EDU_MIRROR", raising=False)
    ctx.monkeypatch.setattr(fetch_mod, "DOWNLOAD_RETRIES", 0, raising=False)


def _fetch_cut(ctx):
    _isolated(ctx)
    with _http() as (base, _):
        fetch_mod.fetch_file(RemoteFile("demo/cut.bin", _SHA, len(_PAYLOAD), f"{base}/cut"))


def _fetch_into_unwritable_cache(ctx):
    (ctx.tmp / "a_file").write_text("x")
    _isolated(ctx, cache=ctx.tmp / "a_file" / "cache")
    with _http() as (base, _):
        fetch_mod.fetch_file(RemoteFile("demo/x.bin", _SHA, len(_PAYLOAD), f"{base}/x"))


def _complex_nifti(ctx, loader):
    z = (np.random.default_rng(0).random((8, 9, 4)) * (1 + 1j)).astype(np.complex64)
    paths = []
    for k, arr in enumerate((z.real.copy(), z)):
        paths.append(ctx.tmp / f"c{k}.nii.gz")
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(paths[-1]))
    if loader == "io":
        xr.load_nifti_group(paths)
    else:
        from xreg_edu.datasets.loaders import _nib_tensor_order
        _nib_tensor_order(paths[1], canonical=False)


_GROUP3 = _rand(3, 1, 16, 16)
_FIELD = _rand(3, 2, 16, 16)
_POST = torch.softmax(_rand(4, 16, 16) * 4, 0)

CASES += [
    pytest.param(_fetch_cut, TruncatedDownloadError,
                 r"truncated download .* of 10240 bytes .*IncompleteRead\(1000 bytes read",
                 id="item5-download-cut-short-with-content-length"),
    pytest.param(_fetch_into_unwritable_cache, CacheNotWritableError,
                 r"cannot write to the dataset cache.*XREG_EDU_DATA",
                 id="item5-unwritable-cache-names-XREG_EDU_DATA"),
    pytest.param(lambda: info.gaussian_total_correlation(torch.ones(3, 1, 8, 8)), ValueError,
                 r"image\(s\) \[0, 1, 2\] are constant \(zero variance\)", id="item11-gaussian-tc-constant"),
    pytest.param(lambda: info.total_correlation(torch.cat([_GROUP3[:2], torch.full((1, 1, 16, 16), 0.3)]),
                                                method="gaussian"), ValueError,
                 r"image\(s\) \[2\] are constant", id="item11-gaussian-tc-one-constant-image"),
    pytest.param(lambda: info.gaussian_total_correlation(_rand(3, 1, 1, 1)), ValueError,
                 r"needs at least 2 voxels .* got 1", id="item11-gaussian-tc-1x1"),
    pytest.param(lambda: info.mutual_information(_GROUP3[:1], _GROUP3[1:2], mask=torch.full((16, 16), math.nan)),
                 ValueError, r"mask contains .*non-finite value", id="item11-nan-mask-mi"),
    pytest.param(lambda: info.x_metric(_GROUP3, _POST, mask=torch.full((16, 16), math.nan)),
                 ValueError, r"mask contains .*non-finite value", id="item11-nan-mask-x-metric"),
    pytest.param(lambda: xr.group_registration_error(_FIELD, mask=torch.full((16, 16), math.nan)),
                 ValueError, r"mask contains .*non-finite value", id="item11-nan-mask-gre"),
    pytest.param(lambda: xr.load_dataset("open_ms", size=32, slice_index=0), ValueError,
                 r"slice_index=0 lies outside the anatomy .* slices \d+\.\.\d+ hold anatomy",
                 id="item11-load-dataset-slice-outside-anatomy"),
    pytest.param(functools.partial(_complex_nifti, loader="io"), UnreadableFileError,
                 r"c1.nii.gz holds complex voxels .* magnitude", id="item11-complex-nifti-io"),
    pytest.param(functools.partial(_complex_nifti, loader="datasets"), UnreadableFileError,
                 r"c1.nii.gz holds complex voxels .* magnitude", id="item11-complex-nifti-loaders"),
    pytest.param(lambda: xr.group_registration_error(_FIELD, mask=-torch.rand(16, 16)), ValueError,
                 r"mask has 256 negative weight\(s\) .* weights >= 0", id="item12-gre-negative-weight-mask"),
    pytest.param(lambda: xr.group_warping_index(_FIELD, mask=torch.rand(16, 16) - 0.5), ValueError,
                 r"mask has \d+ negative weight", id="item12-gwi-negative-weight-mask"),
]

# ---- engine (register_group, options, objectives) ----
_G = _rand(3, 1, 48, 48)                    # errors below are raised before any optimisation
_RG = xr.register_group


def _maps(*shape, low=0.0):
    return _rand(*shape, seed=1) + low


CASES += [
    pytest.param(lambda: _RG(_G, schedule=xr.ScheduleOptions(sample_rate=1e-9)), ValueError,
                 r"sample_rate=1e-09 samples .* the histograms need >= 256", id="item11-sample-rate-one-voxel"),
    pytest.param(lambda: _RG(_G, schedule=xr.ScheduleOptions(pyramid=3, sample_rate=0.05)), ValueError,
                 r"coarsest stage.*ScheduleOptions\(sample_rate >= ", id="item11-sample-rate-coarse-pyramid"),
    pytest.param(lambda: xr.ConvergenceOptions(tol=float("nan")), ValueError, r"tol must be a finite number >= 0",
                 id="item11-tol-nan"),
    pytest.param(lambda: _RG(_G, objective=xr.ObjectiveOptions(prior=_maps(4, 24, 24))), ValueError,
                 r"prior of shape \(4, 24, 24\) is not on the images' grid \(48, 48\): resample it",
                 id="item11-atlas-prior-wrong-size"),
    pytest.param(lambda: _RG(_G, objective=xr.ObjectiveOptions(prior=_maps(4, 48, 48, low=-0.5))), ValueError,
                 r"prior holds negative values", id="item11-atlas-prior-negative"),
    pytest.param(lambda: _RG(_G, objective=xr.ObjectiveOptions(prior=torch.zeros(4, 48, 48))), ValueError,
                 r"prior sums to 0 over the classes at 2304 voxel", id="item11-atlas-prior-all-zero"),
    pytest.param(lambda: _RG(_G, objective=xr.ObjectiveOptions(prior=_maps(4, 48))), ValueError,
                 r"prior must have shape \[K = 4, \*S\]", id="item12-atlas-prior-wrong-rank"),
    pytest.param(lambda: _RG(_G, objective=xr.ObjectiveOptions(prior=_maps(4, 1, 48, 48))), ValueError,
                 r"prior of shape \(4, 1, 48, 48\) is not on the images' grid", id="item12-atlas-prior-3d-for-2d"),
    pytest.param(lambda: _RG(_G, transform=xr.TransformLevel("svf", velocity_spacing=0)), ValueError,
                 r"velocity_spacing must be a positive finite spacing", id="item12-velocity-spacing-zero"),
    pytest.param(lambda: _RG(_G, transform=xr.TransformLevel("ffd", control_spacing=0.0)), ValueError,
                 r"control_spacing must be a positive finite spacing", id="item12-control-spacing-zero"),
    pytest.param(lambda: xr.ConvergenceOptions(window=0), ValueError, r"window must be an integer >= 1",
                 id="item12-window-zero"),
    pytest.param(lambda: xr.ConvergenceOptions(check_every=0), ValueError, r"check_every must be an integer >= 1",
                 id="item12-check-every-zero"),
    pytest.param(lambda: _RG(_G, num_classes=1000), ValueError,
                 r"with num_classes=1000 use fewer classes or a smaller min_prob", id="item12-many-classes"),
    pytest.param(lambda: _RG(_G, seed=2 ** 70), ValueError, r"seed must be an integer in \[0, 2\*\*63\)",
                 id="item12-seed-too-large"),
    pytest.param(lambda: _RG(_G, seed=-1), ValueError, r"seed must be an integer", id="item12-seed-negative"),
    pytest.param(lambda: xr.ScheduleOptions(step_size=float("inf")), ValueError,
                 r"step_size must be a finite number > 0", id="item12-step-size-inf"),
    pytest.param(lambda: xr.ScheduleOptions(step_size=(1.0, float("nan"))), ValueError,
                 r"step_size must be a finite number > 0", id="item12-step-size-nan-per-level"),
    pytest.param(lambda: _RG(_G, objective=xr.ObjectiveOptions(init_posterior=torch.full((4, 48, 48), math.nan))),
                 ValueError, r"init_posterior contains 9216 non-finite", id="item12-posterior-nan"),
    pytest.param(lambda: _RG(_G, iterations=5), TypeError,
                 r"no longer takes iterations=: pass schedule=xr.ScheduleOptions\(iterations=...\)",
                 id="api-former-keyword"),
    pytest.param(lambda: _RG(_G, schedule={"iterations": 5}), TypeError, r"schedule must be a ScheduleOptions",
                 id="api-options-wrong-type"),
    pytest.param(lambda: xr.TransformLevel("rigid", alpha=0.1), ValueError,
                 r"alpha applies to ffd / svf / dense levels only", id="api-level-field-not-used"),
]


# ---- VAE weights (issue 13 item 7): the sha256 recorded beside each file is checked before torch.load ----
def _shipped_weights_copy(ctx, damage):
    """A copy of the shipped BIGR-lite CD weights (+ JSON) in ctx.tmp with ``damage(bytes) -> bytes`` applied."""
    from xreg_edu.vae.train import pretrained_path
    src = pretrained_path("CD")
    dest = ctx.tmp / src.name
    dest.write_bytes(damage(src.read_bytes()))
    (ctx.tmp / src.with_suffix(".json").name).write_bytes(src.with_suffix(".json").read_bytes())
    return dest


def _flip64(b: bytes) -> bytes:
    mid = len(b) // 2
    return b[:mid] + bytes(x ^ 0xFF for x in b[mid:mid + 64]) + b[mid + 64:]


def _load_damaged(damage):
    from xreg_edu.vae.weights import load_weights
    return lambda ctx: load_weights(_shipped_weights_copy(ctx, damage))


CASES += [
    pytest.param(_load_damaged(_flip64), ValueError, r"sha256 of weights .* records", id="item7-weights-64-flipped-bytes"),
    pytest.param(_load_damaged(lambda b: b[: len(b) // 3]), ValueError, r"have \d+ bytes but .* records",
                 id="item7-weights-truncated"),
    pytest.param(_load_damaged(lambda b: b""), ValueError, r"have 0 bytes but .* records", id="item7-weights-empty"),
    pytest.param(_load_damaged(lambda b: os.urandom(len(b))), ValueError, r"sha256 of weights .* records",
                 id="item7-weights-random-bytes"),
]


@pytest.mark.parametrize("call, error, message", CASES)
def test_hostile_input_gives_a_clear_error(call, error, message, tmp_path, monkeypatch):
    ctx = types.SimpleNamespace(tmp=tmp_path, monkeypatch=monkeypatch)
    with pytest.raises(error, match=message):
        call(ctx) if inspect.signature(call).parameters else call()


# ---- engine: correctness cases (register_group) ----
@pytest.fixture(scope="module")
def _brain():
    """Real T1/T2/FLAIR slice group (48 x 48), rigidly misaligned with a known answer, and its brain mask."""
    from xreg_edu.simulate import misalign
    g = xr.load_dataset("open_ms", size=48, modalities=["T1", "T2", "FLAIR"])
    obs, mis = misalign(g, "rigid", seed=3, max_angle_deg=10.0, max_translation_mm=8.0)
    return obs, mis, g.images.mean(0)[0] > 0.02


def test_item11_huge_float64_values_register_as_unit_scale(_brain):
    """float64 x 1e300 once overflowed the z-scoring to an identity result; now it registers as the unit-scale group."""
    obs, mis, fg = _brain
    opts = dict(schedule=xr.ScheduleOptions(iterations=40), seed=0)
    ref = xr.register_group(obs.images.double(), spacing=obs.spacing, **opts)
    big = xr.register_group(obs.images.double() * 1e300, spacing=obs.spacing, **opts)
    assert torch.allclose(big.points, ref.points, atol=1e-6)
    before = float(xr.group_registration_error(mis.points, fg))
    assert float(xr.group_registration_error(mis.true_points(big.points), fg)) < 0.5 * before


def test_item12_requires_grad_inputs_register(_brain):
    """Inputs that require grad (e.g. from a network) once crashed with "backward through the graph a second time"."""
    obs, _, _ = _brain
    opts = dict(spacing=obs.spacing, schedule=xr.ScheduleOptions(iterations=10), seed=0)
    ref = xr.register_group(obs.images, **opts)
    leaf = obs.images.clone().requires_grad_(True)
    r = xr.register_group(leaf * 1.0, **opts)
    assert r.history == ref.history and not r.warped.requires_grad


# ---- command line (H3): output folder, affines, options, datasets ----
_AFF = np.diag([2.0, 2.0, 3.0, 1.0])


def _rotz(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    r = np.eye(4)
    r[:2, :2] = [[c, -s], [s, c]]
    return r


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real T1/T2/FLAIR slice group (32 x 32, 2 mm), rigidly misaligned, as 2-D NIfTI files; plus T2 copies with a
    36 mm shift and a 30 degree rotation in their affine (same grid), and a second group named X, Y."""
    from xreg_edu.simulate import misalign
    g = xr.load_dataset("open_ms", size=32, modalities=["T1", "T2", "FLAIR"])
    obs, _ = misalign(g, "rigid", seed=2, max_angle_deg=8.0, max_translation_mm=6.0)
    folder = tmp_path_factory.mktemp("nifti")
    aff = _AFF.copy()
    aff[:2, :2] *= g.spacing[0] / 2.0
    out = {}
    for j, name in enumerate(["T1", "T2", "FLAIR"]):
        out[name] = str(folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(obs.images[j, 0].numpy(), aff), out[name])
    shifted = aff.copy()
    shifted[0, 3] += 36.0
    for key, a in (("T2_shift36mm", shifted), ("T2_rot30", _rotz(30) @ aff)):
        out[key] = str(folder / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(obs.images[1, 0].numpy(), a), out[key])
    for name, j in (("X", 0), ("Y", 2)):
        out[name] = str(folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(obs.images[j, 0].numpy(), aff), out[name])
    out["dir"] = folder
    return out


def _group(files, *names):
    return [files[n] for n in (names or ("T1", "T2", "FLAIR"))]


_FAST = ["--iterations", "4"]


def _unwritable_dir(ctx) -> Path:
    if os.geteuid() != 0:
        d = ctx.tmp / "locked"
        d.mkdir()
        d.chmod(0o555)
        return d
    if _cannot_write("/sys"):
        return Path("/sys")                                            # root: a read-only file system
    pytest.skip("running as root without a read-only folder")


def _cannot_write(folder) -> bool:
    try:
        os.rmdir(os.path.join(folder, ".xreg_probe"))
    except OSError:
        pass
    try:
        os.mkdir(os.path.join(folder, ".xreg_probe"))
    except OSError:
        return True
    os.rmdir(os.path.join(folder, ".xreg_probe"))
    return False


def _a_file(ctx) -> Path:
    p = ctx.tmp / "o"
    p.write_text("not a folder")
    return p


def _non_empty(ctx, name="notes.txt") -> Path:
    d = ctx.tmp / "prev"
    d.mkdir()
    (d / name).write_text("keep me")
    return d


def _reg(*extra):
    return lambda ctx, f: ["register", *_group(f), *_FAST, *extra]


CLI_CASES = [
    pytest.param(lambda ctx, f: ["register", *_group(f), "-o", str(_a_file(ctx))], 2,
                 r"output .*/o is a file, not a folder", id="item3-output-is-a-file"),
    pytest.param(lambda ctx, f: ["register", *_group(f), "-o", str(_a_file(ctx) / "sub" / "out")], 2,
                 r"cannot be created: .*/o is a file, not a folder", id="item3-output-below-a-file"),
    pytest.param(lambda ctx, f: ["register", *_group(f), "-o", str(_unwritable_dir(ctx) / "out")], 2,
                 r"output .* is not writable", id="item3-output-not-writable"),
    pytest.param(lambda ctx, f: ["register", *_group(f), "-o", str(_non_empty(ctx))], 2,
                 r"is not empty .* pass --overwrite", id="item2-non-empty-output-refused"),
    pytest.param(lambda ctx, f: ["register", *_group(f), "-o", str(_non_empty(ctx)), "--overwrite"], 2,
                 r"--overwrite replaces xreg-edu outputs only, but .* also holds \['notes.txt'\]",
                 id="item2-overwrite-keeps-foreign-files"),
    pytest.param(lambda ctx, f: ["register", *_group(f, "T1", "T2_shift36mm"), "-o", str(ctx.tmp / "o")], 2,
                 r"different affine .* up to 36 mm apart .*--resample", id="item6-affine-shift-36mm"),
    pytest.param(lambda ctx, f: ["register", *_group(f, "T1", "T2", "T2_rot30"), "-o", str(ctx.tmp / "o")], 2,
                 r"T2_rot30.nii.gz has the grid of .* but a different affine", id="item6-affine-rotation-30deg"),
    pytest.param(lambda ctx, f: ["register", *_group(f), "-o", str(ctx.tmp / "o"), "--device", "cuda"], 2,
                 r"--device cuda: CUDA is not available here .* use --device cpu", id="item12-device-cuda-no-cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    pytest.param(lambda ctx, f: ["register", *_group(f), "-o", str(ctx.tmp / "o"), "--device", "tpu9"], 2,
                 r"invalid --device 'tpu9'", id="item12-device-unknown"),
    pytest.param(lambda ctx, f: ["register", *_group(f), "-o", str(ctx.tmp / "o"), "--transform", "ffd",
                                 "--control-spacing", "0"], 2,
                 r"invalid --control-spacing 0.0 \(mm between control points; must be a finite number > 0",
                 id="item12-control-spacing-zero"),
    pytest.param(lambda ctx, f: ["register", *_group(f), "-o", str(ctx.tmp / "o"), "--step-size", "inf"], 2,
                 r"invalid --step-size inf", id="item12-step-size-inf"),
    pytest.param(lambda ctx, f: ["datasets", "brainweb_slices"] if _cli_unwritable_cache(ctx) else [], 2,
                 r"brainweb_slices: cannot write to the dataset cache .* Set XREG_EDU_DATA",
                 id="item5-datasets-unwritable-cache"),
]


def _cli_unwritable_cache(ctx) -> bool:
    (ctx.tmp / "a_file").write_text("x")
    _isolated(ctx, cache=ctx.tmp / "a_file" / "cache")
    return True


@pytest.mark.parametrize("argv, status, message", CLI_CASES)
def test_cli_refuses_before_registering(argv, status, message, files, tmp_path, monkeypatch, capsys):
    def no_registration(*a, **k):
        raise AssertionError("register_group ran although the input was refused")

    monkeypatch.setattr(xr.groupwise, "register_group", no_registration)
    ctx = types.SimpleNamespace(tmp=tmp_path, monkeypatch=monkeypatch)
    args = argv(ctx, files)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(args) == status
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and err.count("\n") == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before      # nothing created


# ---- command line (H3): complete-or-nothing outputs ----
def _listing(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_item1_outputs_are_complete_with_manifest_last(files, tmp_path):
    out = tmp_path / "out"
    assert main(["register", *_group(files), "-o", str(out), *_FAST]) == 0
    names = {p.name for p in out.iterdir()}
    expected = {f"{k}_{n}.nii.gz" for k in ("warped", "displacement") for n in ("T1", "T2", "FLAIR")} | {
        "posterior.nii.gz", "segmentation.nii.gz", "transform.pt", "transform.json", "summary.png", MANIFEST}
    assert names == expected
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and set(manifest["files"]) == expected - {MANIFEST}
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]                           # no staging left


@pytest.mark.parametrize("where", ["displacement", "posterior", "transform.pt", "transform.json"])
def test_item1_failing_write_leaves_nothing(files, tmp_path, monkeypatch, capsys, where):
    """A full disk (simulated: the writer writes half a file, then ENOSPC) never leaves a partial or complete-looking
    output, and a previous run's outputs stay as they were."""
    import xreg_edu.cli as cli

    def full_disk(path, *a, **k):
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    if where == "displacement":
        monkeypatch.setattr(cli, "_save_vector_field", lambda f, a, p: full_disk(p))
    elif where == "posterior":
        monkeypatch.setattr(nib, "save", lambda img, p: full_disk(p) if "posterior" in str(p) else None)
    elif where == "transform.pt":
        monkeypatch.setattr(torch, "save", lambda obj, p, *a, **k: full_disk(p))
    else:
        orig = Path.write_text
        monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: full_disk(self) if self.name == "transform.json"
                            else orig(self, *a, **k))
    out = tmp_path / "new"
    assert main(["register", *_group(files), "-o", str(out), *_FAST, "--no-png"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_item1_failing_write_keeps_previous_run(files, tmp_path, monkeypatch, capsys):
    import xreg_edu.cli as cli

    out = tmp_path / "out"
    assert main(["register", *_group(files, "X", "Y"), "-o", str(out), *_FAST, "--no-png"]) == 0
    before = _listing(out)

    def full_disk(f, a, p):
        Path(p).write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "_save_vector_field", full_disk)
    assert main(["register", *_group(files), "-o", str(out), *_FAST, "--overwrite"]) == 1
    assert _listing(out) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_item1_sigint_while_writing_the_png(files, tmp_path, monkeypatch, capsys):
    """Ctrl-C while the summary PNG is written: nothing under the output name, no partial folder beside it."""
    import xreg_edu.cli as cli

    def interrupted(group, result, path):
        Path(path).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_summary_png", interrupted)
    out = tmp_path / "out"
    assert main(["register", *_group(files), "-o", str(out), *_FAST]) == 130
    assert "interrupted; nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_item2_overwrite_replaces_the_previous_group(files, tmp_path):
    out = tmp_path / "out"
    assert main(["register", *_group(files), "-o", str(out), *_FAST, "--no-png"]) == 0
    assert main(["register", *_group(files, "X", "Y"), "-o", str(out), *_FAST, "--no-png", "--overwrite"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.startswith("warped_")] == ["warped_X.nii.gz", "warped_Y.nii.gz"]
    assert set(json.loads((out / MANIFEST).read_text())["files"]) == set(names) - {MANIFEST}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["register", *_group(files, "X", "Y"), "-o", str(empty), *_FAST, "--no-png"]) == 0   # empty: fine


def test_item6_resample_onto_the_first_grid(files, tmp_path):
    """--resample puts a shifted image onto the first image's grid (nibabel, linear): a 4 mm (2-voxel) affine shift
    of T2 becomes a 2-voxel shift of its array; the outputs carry the first image's affine."""
    arr = nib.load(files["T2"]).get_fdata()                    # [32, 32]
    ref = nib.load(files["T1"])
    step = abs(ref.affine[0, 0])
    moved = ref.affine.copy()
    moved[0, 3] += 2 * step                                    # voxel i of this file lies at voxel i + 2 of T1
    p = tmp_path / "T2_moved.nii.gz"
    nib.save(nib.Nifti1Image(arr.astype(np.float32), moved), str(p))
    with pytest.raises(xr.datasets.GroupMismatchError, match="different affine"):
        xr.load_nifti_group([files["T1"], p])
    g = xr.load_nifti_group([files["T1"], p], resample=True)
    np.testing.assert_allclose(g.images[1, 0, 2:].numpy(), arr[:-2], atol=1e-5)
    assert float(g.images[1, 0, :2].abs().max()) == 0.0 and g.meta["resampled"] == [str(p)]
    out = tmp_path / "out"
    assert main(["register", files["T1"], str(p), "-o", str(out), *_FAST, "--no-png", "--resample"]) == 0
    np.testing.assert_allclose(nib.load(str(out / "warped_T2_moved.nii.gz")).affine, ref.affine)


# ---- files and downloads (H3): modes, orphans, retries ----
@pytest.fixture
def umask027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_item4_written_files_respect_the_umask(files, tmp_path, monkeypatch, umask027):
    """Atomic writes, cached downloads / mirror copies and the CLI outputs get 0666 / 0777 minus the umask
    (group-readable), not the 0600 of temporary files."""
    from xreg_edu.io import save_group, save_nifti

    assert _mode(save_nifti(np.ones((4, 4)), None, tmp_path / "a.nii.gz")) == 0o640
    g = xr.load_nifti_group(_group(files))
    assert _mode(save_group(g, tmp_path / "g.pt")) == 0o640
    out = tmp_path / "out"
    assert main(["register", *_group(files), "-o", str(out), *_FAST, "--no-png"]) == 0
    assert _mode(out) == 0o750 and {_mode(p) for p in out.iterdir()} == {0o640}
    ctx = types.SimpleNamespace(tmp=tmp_path, monkeypatch=monkeypatch)
    _isolated(ctx)
    with _http() as (base, _):
        got = fetch_mod.fetch_file(RemoteFile("demo/d.bin", _SHA, len(_PAYLOAD), f"{base}/d"))
    assert got.read_bytes() == _PAYLOAD and _mode(got) == 0o640
    mirror = tmp_path / "mirror"
    (mirror / "demo").mkdir(parents=True)
    (mirror / "demo" / "m.bin").write_bytes(_PAYLOAD)
    monkeypatch.setenv("XREG_EDU_MIRROR", str(mirror))
    got = fetch_mod.fetch_file(RemoteFile("demo/m.bin", _SHA, len(_PAYLOAD), "http://127.0.0.1:9/none"))
    assert _mode(got) == 0o640


def test_item5_orphan_download_folders_are_removed(tmp_path, monkeypatch):
    """A SIGKILLed download leaves ``.download-*``; the next download beside it removes it (unlocked, or without a
    lock file and old) but keeps the folder of a download that is still running (locked by its process)."""
    import fcntl

    ctx = types.SimpleNamespace(tmp=tmp_path, monkeypatch=monkeypatch)
    _isolated(ctx)
    demo = tmp_path / "cache" / "demo"
    killed = demo / ".download-killed"
    killed.mkdir(parents=True)
    (killed / ".lock").write_bytes(b"")
    (killed / "tmpabc").write_bytes(_PAYLOAD[:500])
    old = demo / ".download-old-version"
    old.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    live = demo / ".download-live"
    live.mkdir()
    with open(live / ".lock", "wb") as lock, _http() as (base, _):
        fcntl.flock(lock, fcntl.LOCK_EX)
        fetch_mod.fetch_file(RemoteFile("demo/d.bin", _SHA, len(_PAYLOAD), f"{base}/d"))
    assert sorted(p.name for p in demo.iterdir()) == [".download-live", "d.bin"]


def test_item5_pooch_retries_a_broken_download(tmp_path, monkeypatch):
    """The first attempt is cut short, pooch's retry gets the whole verified file."""
    ctx = types.SimpleNamespace(tmp=tmp_path, monkeypatch=monkeypatch)
    _isolated(ctx)
    monkeypatch.setattr(fetch_mod, "DOWNLOAD_RETRIES", 1, raising=False)
    with _http() as (base, hits):
        got = fetch_mod.fetch_file(RemoteFile("demo/f.bin", _SHA, len(_PAYLOAD), f"{base}/flaky"))
    assert hits["/flaky"] == 2 and got.read_bytes() == _PAYLOAD
    assert sorted(p.name for p in got.parent.iterdir()) == ["f.bin"]


# ---- information measures (H3): half precision gives the float32 answer ----
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_item9_half_precision_inputs_give_the_float32_answer(dtype):
    g = xr.load_dataset("open_ms", size=32, modalities=["T1", "T2", "FLAIR"]).images
    post = info.labels_to_posterior((g[0, 0] * 3.99).long(), num_classes=4)
    low = g.to(dtype)
    ref = low.float()                                          # the same (rounded) values in float32
    cases = [(info.mutual_information, (low[:1], low[1:2]), (ref[:1], ref[1:2])),
             (info.entropy, (low[:1],), (ref[:1],)),
             (info.total_correlation, (low,), (ref,)),
             (info.x_metric, (low, post.to(dtype)), (ref, post.to(dtype).float()))]
    for fn, a, b in cases:
        got, want = fn(*a), fn(*b)
        assert torch.isfinite(got) and got.dtype == torch.float32, fn.__name__
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=fn.__name__)


def test_item2_output_filled_during_the_run_is_not_replaced(files, tmp_path, monkeypatch, capsys):
    """Another run (or the user) fills OUT while this one registers: without --overwrite it is left alone."""
    import xreg_edu.cli as cli

    out = tmp_path / "out"
    save = cli._save_outputs

    def meanwhile(group, result, staging, png):
        out.mkdir()
        (out / "warped_other.nii.gz").write_bytes(b"another run")
        return save(group, result, staging, png)

    monkeypatch.setattr(cli, "_save_outputs", meanwhile)
    assert main(["register", *_group(files), "-o", str(out), *_FAST, "--no-png"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert _listing(out) == {"warped_other.nii.gz": b"another run"} and [p.name for p in tmp_path.iterdir()] == ["out"]


# ---- engine: histogram range and flat objective (issue 13 items 8 and 10) ----
@pytest.mark.parametrize("method", ["xcoreg", "ape", "cte", "gmm", "cg"])
def test_item8_one_outlier_voxel_cannot_take_the_bins(_brain, method):
    """One voxel of 1e4 in a [0, 1] image: raw min/max bins gave gRE 11.3 mm. The robust (quantile) histogram range
    keeps X-CoReg and APE at the clean result; CTE, GMM and CG see the images through ``_normalise``, whose plain
    z-score let the outlier take the scale (CTE 3.63, GMM 3.48, CG 6.26 mm against 0.29, 0.35, 0.93 clean) and whose
    winsorised z-score does not. CG is mono-modal, so on this T1/T2/FLAIR group its clean result is looser."""
    obs, mis, fg = _brain
    bad = obs.images.clone()
    bad[0, 0, 24, 24] = 1e4 * float(bad.max())
    gre = {}
    for name, images in (("clean", obs.images), ("outlier", bad)):
        r = xr.register_group(images, method=method, spacing=obs.spacing, seed=0)
        gre[name] = float(xr.group_registration_error(mis.true_points(r.points), fg))
    assert gre["clean"] < (1.0 if method == "cg" else 0.5) and gre["outlier"] < gre["clean"] + 0.2, gre


def test_item10_flat_objective_does_not_move_the_transforms(_brain):
    """A uniform posterior is a fixed point of EM: the X-metric is exactly flat (its gradient is float32 rounding
    noise). The transforms must stay where the first step left them (Adam once turned the noise into 15.5 mm)."""
    obs, _, _ = _brain
    flat = xr.ObjectiveOptions(init_posterior=torch.ones(4, *obs.shape))
    runs = [xr.register_group(obs.images, spacing=obs.spacing, objective=flat,
                              schedule=xr.ScheduleOptions(iterations=it), convergence=xr.ConvergenceOptions(tol=0.0))
            for it in (1, 80)]
    assert max(abs(h) for h in runs[1].history) < 1e-5
    assert float((runs[1].points - runs[0].points).abs().max()) < 0.5      # mm
