"""xreg_edu.io: NIfTI groups (spacing, affines, 2-D/3-D), every bad-input error, atomic writes, .pt groups."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xreg_edu.datasets import DatasetError, GroupMismatchError, MissingFileError, UnreadableFileError
from xreg_edu.io import load_group, load_nifti_group, save_group, save_nifti


def _affine(spacing, origin=(10.0, -20.0, 5.0)):
    a = np.diag(list(spacing) + [1.0])
    a[:3, 3] = origin
    return a


@pytest.fixture
def volumes(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        arr = rng.random((6, 7, 5)).astype(np.float32) + k
        paths.append(save_nifti(arr, _affine((0.5, 0.75, 2.0)), tmp_path / f"img{k}.nii.gz"))
    return paths


def test_round_trip_3d(volumes, tmp_path):
    g = load_nifti_group(volumes)
    assert g.images.shape == (3, 1, 6, 7, 5) and g.images.dtype == torch.float32
    assert g.spacing == (0.5, 0.75, 2.0)
    np.testing.assert_allclose(g.affines[1], _affine((0.5, 0.75, 2.0)))
    assert g.names == ["img0", "img1", "img2"]
    out = save_nifti(g.images[2], g.affines[2], tmp_path / "copy.nii")
    again = load_nifti_group([volumes[2], out])
    torch.testing.assert_close(again.images[0], again.images[1])
    g64 = load_nifti_group(volumes, dtype=torch.float64, device="cpu")
    assert g64.images.dtype == torch.float64


def test_third_axis_of_size_one_gives_2d(tmp_path):
    paths = [save_nifti(np.full((8, 9, 1), float(k + 1)), _affine((1.0, 1.5, 3.0)), tmp_path / f"s{k}.nii.gz")
             for k in range(2)]
    g = load_nifti_group(paths)
    assert g.images.shape == (2, 1, 8, 9) and g.dim == 2 and g.spacing == (1.0, 1.5)


def test_labels_are_int64(volumes, tmp_path):
    lab = np.zeros((6, 7, 5), dtype=np.int16)
    lab[2:4, 2:5, 1:3] = 3
    lpaths = [save_nifti(lab, _affine((0.5, 0.75, 2.0)), tmp_path / f"lab{k}.nii.gz") for k in range(3)]
    g = load_nifti_group(volumes, labels=lpaths, names=["a", "b", "c"])
    assert g.labels.dtype == torch.int64 and set(g.labels.unique().tolist()) == {0, 3}
    assert g.names == ["a", "b", "c"]


def test_missing_file(volumes, tmp_path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(MissingFileError, match="nope.nii.gz") as err:
        load_nifti_group([volumes[0], missing])
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, DatasetError)


def test_unreadable_file(volumes, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    with pytest.raises(UnreadableFileError, match="broken.nii.gz"):
        load_nifti_group([volumes[0], bad])


def test_shape_and_dimensionality_mismatch(volumes, tmp_path):
    other = save_nifti(np.ones((6, 7, 4), np.float32), _affine((0.5, 0.75, 2.0)), tmp_path / "other.nii.gz")
    with pytest.raises(GroupMismatchError, match="Resample"):
        load_nifti_group([volumes[0], other])
    flat = save_nifti(np.ones((6, 7), np.float32), np.eye(4), tmp_path / "flat.nii.gz")
    with pytest.raises(GroupMismatchError, match="dimensionality"):
        load_nifti_group([volumes[0], flat])
    spaced = save_nifti(np.ones((6, 7, 5), np.float32), _affine((1.0, 0.75, 2.0)), tmp_path / "sp.nii.gz")
    with pytest.raises(GroupMismatchError, match="spacing"):
        load_nifti_group([volumes[0], spaced])


def test_single_image_and_non_finite(volumes, tmp_path):
    with pytest.raises(GroupMismatchError, match="N >= 2"):
        load_nifti_group([volumes[0]])
    with pytest.raises(GroupMismatchError, match="N >= 2"):
        load_nifti_group(volumes[0])
    arr = np.ones((6, 7, 5), np.float32)
    arr[1, 2, 3] = np.nan
    nan = save_nifti(arr, _affine((0.5, 0.75, 2.0)), tmp_path / "nan.nii.gz")
    with pytest.raises(GroupMismatchError, match="non-finite"):
        load_nifti_group([volumes[0], nan])
    assert issubclass(GroupMismatchError, ValueError)


def test_save_is_atomic(tmp_path):
    target = tmp_path / "out.nii.gz"
    save_nifti(np.ones((4, 4, 4)), None, target)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="affine"):
        save_nifti(np.zeros((4, 4, 4)), np.eye(3), target)
    assert target.read_bytes() == before  # untouched by the failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]  # no temporary files left
    save_nifti(torch.zeros(1, 1, 4, 4, 4), np.eye(4), target)  # tensors with leading singleton axes
    assert target.read_bytes() != before
    with pytest.raises(ValueError, match=".nii"):
        save_nifti(np.ones((4, 4)), None, tmp_path / "x.png")


def test_group_file_round_trip(volumes, tmp_path):
    g = load_nifti_group(volumes)
    path = save_group(g, tmp_path / "g.pt")
    h = load_group(path)
    torch.testing.assert_close(h.images, g.images)
    assert h.spacing == g.spacing and h.names == g.names
    with pytest.raises(MissingFileError):
        load_group(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UnreadableFileError):
        load_group(tmp_path / "junk.pt")
