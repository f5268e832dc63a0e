"""The ``xreg-edu`` command line, end to end on temporary NIfTI files made from real misaligned images."""
from __future__ import annotations

import json
import math
import os

import nibabel as nib
import numpy as np
import pytest
import torch

import xreg_edu as xr
from xreg_edu.cli import main
from xreg_edu.evaluate import group_registration_error
from xreg_edu.simulate import misalign

pytestmark = pytest.mark.usefixtures("one_thread_full_budget")

AFFINE = np.array([[0.0, -2.0, 0.0, 90.0], [2.0, 0.0, 0.0, -120.0], [0.0, 0.0, 3.0, 12.5], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def nifti_group(tmp_path_factory):
    """open_ms T1/T2/FLAIR (64 x 64) rigidly misaligned, written as 2-D NIfTI with a non-trivial affine."""
    g = xr.load_dataset("open_ms", size=64, modalities=["T1", "T2", "FLAIR"])
    obs, mis = misalign(g, "rigid", seed=4, max_angle_deg=12.0, max_translation_mm=10.0)
    folder = tmp_path_factory.mktemp("nifti")
    paths = []
    for j, name in enumerate(["T1", "T2", "FLAIR"]):
        aff = AFFINE.copy()
        aff[:2, :2] *= g.spacing[0] / 2.0                 # zooms = the group's spacing
        img = nib.Nifti1Image(obs.images[j, 0].numpy().astype(np.float32), aff)
        p = folder / f"{name}.nii.gz"
        nib.save(img, str(p))
        paths.append(str(p))
    return paths, g, mis, folder


def test_register_end_to_end(nifti_group, tmp_path, capsys):
    paths, g, mis, _ = nifti_group
    out = tmp_path / "out"
    assert main(["register", *paths, "-o", str(out), "--method", "xcoreg", "--transform", "rigid",
                 "--classes", "4", "--seed", "1"]) == 0
    assert "xcoreg" in capsys.readouterr().out
    for name in ("T1", "T2", "FLAIR"):
        w = nib.load(str(out / f"warped_{name}.nii.gz"))
        ref = nib.load(paths[["T1", "T2", "FLAIR"].index(name)])
        assert w.shape == ref.shape
        assert np.allclose(w.affine, ref.affine)                          # affine / spacing kept
        assert np.allclose(w.header.get_zooms()[:2], ref.header.get_zooms()[:2])
        d = nib.load(str(out / f"displacement_{name}.nii.gz"))
        assert d.shape == (64, 64, 1, 1, 2) and np.allclose(d.affine, ref.affine)
    post = nib.load(str(out / "posterior.nii.gz")).get_fdata()
    assert post.shape == (64, 64, 1, 4) and np.allclose(post.sum(-1), 1.0, atol=1e-4)
    assert (out / "segmentation.nii.gz").is_file() and (out / "summary.png").stat().st_size > 10_000
    info = json.loads((out / "transform.json").read_text())
    assert info["method"] == "xcoreg" and len(info["history"]) > 10
    saved = torch.load(out / "transform.pt")
    assert saved["matrices"].shape == (3, 2, 3)
    # aligned better than before: gRE of the written displacements against the known misalignment
    grid = xr.spatial.identity_grid(g.shape, g.spacing)
    disp = torch.stack([torch.from_numpy(nib.load(str(out / f"displacement_{n}.nii.gz")).get_fdata()[:, :, 0, 0])
                        .permute(2, 0, 1).float() for n in ("T1", "T2", "FLAIR")])
    fg = g.images.mean(0)[0] > 0.02
    before = float(group_registration_error(mis.points, fg))
    after = float(group_registration_error(mis.true_points(grid + disp), fg))
    assert after < 0.2 * before, (before, after)
    # the written warped images are the inputs resampled at those points (original intensities)
    warped = torch.from_numpy(nib.load(str(out / "warped_T2.nii.gz")).get_fdata()).float()
    inp = torch.from_numpy(nib.load(paths[1]).get_fdata()).float()[None, None]
    again = xr.spatial.warp(inp, (grid + disp)[1:2], g.spacing)[0, 0]
    assert torch.allclose(warped, again, atol=1e-3)


def test_register_options_and_mask(nifti_group, tmp_path):
    paths, g, _, folder = nifti_group
    mask = folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image((g.images.mean(0)[0].numpy() > 0.02).astype(np.uint8), AFFINE), str(mask))
    out = tmp_path / "o"
    assert main(["register", *paths[:2], "-o", str(out), "--method", "ape", "--transform", "affine",
                 "--iterations", "15", "--mask", str(mask), "--sample-rate", "0.5", "--no-png"]) == 0
    assert (out / "warped_T1.nii.gz").is_file() and not (out / "summary.png").exists()
    assert not (out / "posterior.nii.gz").exists()                           # APE has no posterior


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_register_errors_exit_2(nifti_group, tmp_path, capsys):
    paths, g, _, folder = nifti_group
    out = str(tmp_path / "bad")
    # a single image
    assert main(["register", paths[0], "-o", out]) == 2
    assert "at least 2 images" in _err(capsys)
    # unreadable file
    junk = folder / "junk.nii.gz"
    junk.write_bytes(b"this is not a nifti file")
    assert main(["register", paths[0], str(junk), "-o", out]) == 2
    assert "junk.nii.gz" in _err(capsys)
    # missing file
    assert main(["register", paths[0], str(folder / "nope.nii.gz"), "-o", out]) == 2
    assert "nope.nii.gz" in _err(capsys)
    # differing dimensionality
    vol = folder / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 5), np.float32), np.eye(4)), str(vol))
    assert main(["register", paths[0], str(vol), "-o", out]) == 2
    assert "dimensionality" in _err(capsys)
    # non-finite voxels
    nan = folder / "nan.nii.gz"
    arr = nib.load(paths[1]).get_fdata().astype(np.float32)
    arr[3, 3] = math.nan
    nib.save(nib.Nifti1Image(arr, AFFINE), str(nan))
    assert main(["register", paths[0], str(nan), "-o", out]) == 2
    assert "non-finite" in _err(capsys)
    # bad option values
    assert main(["register", *paths, "-o", out, "--classes", "1"]) == 2
    assert "--classes" in _err(capsys)
    assert main(["register", *paths, "-o", out, "--transform", "spline"]) == 2
    assert "transform" in _err(capsys)
    with pytest.raises(SystemExit) as exc:                                   # argparse: unknown method
        main(["register", *paths, "-o", out, "--method", "magic"])
    assert exc.value.code == 2


def test_datasets_command(capsys):
    assert main(["datasets", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "open_ms" in listed and "myops_cmr" in listed and "cine_cmr" in listed
    assert main(["datasets", "open_ms"]) == 0
    assert "open_ms:" in capsys.readouterr().out
    assert main(["datasets", "no_such_set"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_register_uses_the_grids_default_schedule(tmp_path, monkeypatch):
    """A 3-D group gets the same default schedule (pyramid) from the CLI as from ``register_group``; a flag
    overrides only its own field."""
    import xreg_edu.groupwise as gw
    from xreg_edu.groupwise.schedule import default_schedule

    rng = np.random.default_rng(0)
    paths = []
    for j in range(2):
        p = tmp_path / f"v{j}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random((48, 44, 40)).astype(np.float32), np.eye(4)), str(p))
        paths.append(str(p))
    seen = []

    def fake(group, **kw):
        seen.append(kw["schedule"])
        raise ValueError("stop here")

    monkeypatch.setattr(gw, "register_group", fake)
    assert main(["register", *paths, "-o", str(tmp_path / "a")]) == 2
    assert main(["register", *paths, "-o", str(tmp_path / "b"), "--iterations", "3"]) == 2
    assert main(["register", *paths, "-o", str(tmp_path / "c"), "--pyramid", "2"]) == 2
    default = default_schedule((48, 44, 40), (1.0, 1.0, 1.0))
    assert default.pyramid > 1                       # the case the CLI used to miss (it always sent pyramid=1)
    assert seen[0] is None
    assert seen[1].iterations == 3 and seen[1].pyramid == default.pyramid
    assert seen[2].pyramid == 2


def test_staging_folders_of_killed_runs_are_removed(nifti_group, tmp_path):
    """A run killed with SIGKILL cannot clean up its hidden ``.OUT.partial-PID-*`` folder; the next run beside it
    removes those whose process is gone and leaves a live run's folder alone."""
    import subprocess
    import sys

    paths, *_ = nifti_group
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}-k1ll3d00"
    stale.mkdir()
    (stale / "warped_T1.nii.gz").write_bytes(b"half a file")
    live = tmp_path / f".out.partial-{os.getpid()}-l1ve0000"
    live.mkdir()
    assert main(["register", *paths, "-o", str(tmp_path / "out"), "--iterations", "4", "--no-png"]) == 0
    assert not stale.exists() and live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name])
