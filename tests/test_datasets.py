"""Registry, fetching (mirror, cache, downloads, every failure mode) and loaders of xreg_edu.datasets."""
from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from xreg_edu.datasets import (DatasetError, HashMismatchError, MissingFileError, NoNetworkError,
                               TruncatedDownloadError, UnknownDatasetError, dataset_card, fetch, list_datasets,
                               load_dataset)
from xreg_edu.datasets.fetch import fetch_file, file_sha256
from xreg_edu.datasets.registry import REGISTRY, RemoteFile

REPO = Path(__file__).resolve().parents[1]
ALL = list(REGISTRY)


def _mirror_path() -> Path | None:
    env = os.environ.get("XREG_EDU_MIRROR")
    if env:
        return Path(env)
    local = REPO.parent / "shared" / "data"
    return local if local.is_dir() else None


@pytest.fixture(scope="session")
def data_env(tmp_path_factory):
    """XREG_EDU_MIRROR -> the mirror (skip without one), XREG_EDU_DATA -> a fresh session cache."""
    mirror = _mirror_path()
    if mirror is None:
        pytest.skip("no data mirror: set XREG_EDU_MIRROR (e.g. ../shared/data)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XREG_EDU_MIRROR", str(mirror))
        mp.setenv("XREG_EDU_DATA", str(tmp_path_factory.mktemp("xreg_cache")))
        yield mirror


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty cache, no mirror, no download retries (pooch waits 1 s, 2 s, ... between them)."""
    import importlib

    monkeypatch.setenv("XREG_EDU_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("XREG_EDU_MIRROR", raising=False)
    monkeypatch.setattr(importlib.import_module("xreg_edu.datasets.fetch"), "DOWNLOAD_RETRIES", 0)
    return tmp_path


# ------------------------------------------------------------------------------------------------ registry
def test_registry_names_and_cards():
    assert list_datasets() == ALL
    for required in ("icbm152", "myops_cmr", "open_ms", "brats2012", "mscmrseg_lge", "cine_cmr", "oasis",
                     "brainweb_labels", "brainweb_slices", "ants_slices"):
        assert required in ALL
        card = dataset_card(required)
        for text in (card.licence, card.citation, card.source, card.use, card.description, card.default_group):
            assert len(text) > 10
        assert card.num_files == len(REGISTRY[required].files) > 0


def test_urls_are_pinned_and_hashes_well_formed():
    for spec in REGISTRY.values():
        for rf in spec.files:
            assert re.fullmatch(r"[0-9a-f]{64}", rf.sha256), rf.path
            assert rf.size > 0
            m = re.match(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/([^/]+)/", rf.url)
            assert m, rf.url
            assert re.fullmatch(r"[0-9a-f]{40}", m.group(1)) or spec.name == "icbm152", rf.url
            assert " " not in rf.url


def test_registry_matches_sources_md():
    mirror = _mirror_path()
    sources = None if mirror is None else mirror / "SOURCES.md"
    if sources is None or not sources.exists():
        pytest.skip("SOURCES.md not available")
    listed = dict((p, h) for h, p in re.findall(r"^([0-9a-f]{64})  (\S+)$", sources.read_text(), re.M))
    registered = {rf.path: rf.sha256 for s in REGISTRY.values() for rf in s.files if s.name != "icbm152"}
    assert registered == listed


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UnknownDatasetError) as err:
        load_dataset("brainwebb")
    assert isinstance(err.value, ValueError) and isinstance(err.value, DatasetError)
    for name in ALL:
        assert name in str(err.value)
    with pytest.raises(UnknownDatasetError):
        fetch("nope")
    with pytest.raises(UnknownDatasetError):
        dataset_card("nope")


# ------------------------------------------------------------------------------------------------ fetching
def test_every_registered_file_resolves_from_the_mirror(data_env):
    cache = Path(os.environ["XREG_EDU_DATA"])
    for name in ALL:
        paths = fetch(name)
        assert len(paths) == len(REGISTRY[name].files)
        for rf, path in zip(REGISTRY[name].files, paths):
            assert path.is_file()
            assert file_sha256(path) == rf.sha256
            if name != "icbm152":  # embedded in the nilearn wheel, used in place
                assert path == cache / rf.path
    assert not list(cache.rglob("*.part"))


def test_icbm152_needs_no_mirror_and_no_network(isolated):
    paths = fetch("icbm152")
    assert all("nilearn" in str(p) for p in paths)
    g = load_dataset("icbm152", size=32)
    assert g.images.shape == (3, 1, 32, 32)
    assert not (isolated / "cache").exists()  # nothing copied, nothing downloaded


def test_cached_file_with_wrong_hash_raises(isolated):
    rf = REGISTRY["ants_slices"].files[0]
    path = isolated / "cache" / rf.path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a jpeg")
    with pytest.raises(HashMismatchError) as err:
        fetch_file(rf)
    msg = str(err.value)
    assert str(path) in msg and rf.sha256 in msg and file_sha256(path) in msg and "Delete" in msg


def test_mirror_file_with_wrong_hash_raises_and_is_not_copied(isolated, monkeypatch):
    rf = REGISTRY["ants_slices"].files[0]
    mirror = isolated / "mirror"
    (mirror / rf.path).parent.mkdir(parents=True)
    (mirror / rf.path).write_bytes(b"corrupt")
    monkeypatch.setenv("XREG_EDU_MIRROR", str(mirror))
    with pytest.raises(HashMismatchError) as err:
        fetch_file(rf)
    assert str(mirror / rf.path) in str(err.value)
    assert not (isolated / "cache" / rf.path).exists()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/'www'."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _payload(tmp_path):
    import hashlib

    data = bytes(range(256)) * 40
    return data, hashlib.sha256(data).hexdigest()


def test_download_success_truncated_and_corrupt(isolated, server):
    www, base = server
    data, sha = _payload(isolated)
    (www / "good.bin").write_bytes(data)
    (www / "short.bin").write_bytes(data[:1000])
    (www / "bad.bin").write_bytes(data[::-1])
    cache = isolated / "cache"

    ok = fetch_file(RemoteFile("demo/good.bin", sha, len(data), f"{base}/good.bin"))
    assert ok == cache / "demo/good.bin" and ok.read_bytes() == data

    rf = RemoteFile("demo/short.bin", sha, len(data), f"{base}/short.bin")
    with pytest.raises(TruncatedDownloadError) as err:
        fetch_file(rf)
    assert "1000 of 10240 bytes" in str(err.value)
    assert not (cache / "demo/short.bin").exists()

    rf = RemoteFile("demo/bad.bin", sha, len(data), f"{base}/bad.bin")
    with pytest.raises(HashMismatchError) as err:
        fetch_file(rf)
    assert sha in str(err.value)
    assert not (cache / "demo/bad.bin").exists()
    assert sorted(p.name for p in (cache / "demo").iterdir()) == ["good.bin"]  # no partial files left


def _closed_port_url():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/missing.bin"


def test_no_network_and_no_mirror(isolated):
    rf = RemoteFile("demo/x.bin", "0" * 64, 10, _closed_port_url())
    with pytest.raises(NoNetworkError) as err:
        fetch_file(rf)
    assert "XREG_EDU_MIRROR" in str(err.value)
    assert isinstance(err.value, OSError)


def test_mirror_lacks_file_and_no_network(isolated, monkeypatch):
    mirror = isolated / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("XREG_EDU_MIRROR", str(mirror))
    rf = RemoteFile("demo/x.bin", "0" * 64, 10, _closed_port_url())
    with pytest.raises(MissingFileError) as err:
        fetch_file(rf)
    assert str(mirror / "demo/x.bin") in str(err.value)


def test_fetch_script(data_env):
    script = REPO / "data_scripts" / "fetch_data.py"
    out = subprocess.run([sys.executable, str(script), "--list"], capture_output=True, text=True, env=os.environ)
    assert out.returncode == 0
    for name in ALL:
        assert name in out.stdout
    out = subprocess.run([sys.executable, str(script), "brainweb_slices"], capture_output=True, text=True,
                         env=os.environ)
    assert out.returncode == 0, out.stderr
    bad = subprocess.run([sys.executable, str(script), "nope"], capture_output=True, text=True, env=os.environ)
    assert bad.returncode == 1 and "valid names" in bad.stderr


def test_book_page_is_up_to_date():
    from xreg_edu.datasets.cards import render_cards

    page = REPO / "book" / "datasets.md"
    assert page.read_text() == render_cards(), "run: python -m xreg_edu.datasets.cards > book/datasets.md"


def test_import_is_light():
    code = ("import sys, time; t = time.perf_counter(); import xreg_edu, xreg_edu.datasets; "
            "dt = time.perf_counter() - t; heavy = [m for m in ('nibabel', 'pooch', 'SimpleITK', 'nilearn', "
            "'scipy', 'matplotlib') if m in sys.modules]; print(dt, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert float(out[0]) < 2.0
    assert out[1].strip() == "[]"


# ------------------------------------------------------------------------------------------------ loaders
# name -> (N, allowed label values or None, simulated flags)
EXPECTED_2D = {
    "icbm152": (3, {0, 1, 2, 3}, [False, True, True]),
    "myops_cmr": (3, {0, 1, 2, 3}, [False] * 3),
    "open_ms": (4, {0, 1}, [False] * 4),
    "brats2012": (4, {0, 1, 2}, [False] * 4),
    "mscmrseg_lge": (2, {0, 1, 2, 3}, [False] * 2),
    "cine_cmr": (17, None, [False] * 17),
    "oasis": (2, set(REGISTRY["oasis"].label_names), [False] * 2),
    "brainweb_labels": (3, set(range(10)), [True] * 3),
    "brainweb_slices": (2, None, [False] * 2),
    "ants_slices": (6, None, [False] * 6),
    "brainweb47": (3, {0, 1, 2, 3}, [False] * 3),
    "brainweb20": (10, {0, 1, 2, 3}, [True] * 10),
    "qperf": (99, None, [False] * 99),
    "brats2015": (2, {0, 1, 2, 3, 4}, [False] * 2),
}


def _check_group(g, name, n, labels, dim):
    assert len(g) == n and g.dim == dim
    assert g.images.dtype == torch.float32 and g.images.shape[:2] == (n, 1)
    assert float(g.images.min()) >= 0.0 and float(g.images.max()) <= 1.0 and torch.isfinite(g.images).all()
    assert all(float(im.std()) > 0.01 for im in g.images)  # no blank image
    assert len(g.spacing) == dim and all(s > 0 for s in g.spacing)
    assert g.meta["dataset"] == name and len(g.meta["simulated"]) == n
    assert all("/" in nm for nm in g.names) and len(set(g.names)) == n
    assert g.affines.shape == (n, 4, 4)
    if labels is None:
        assert g.labels is None
    else:
        assert g.labels.dtype == torch.int64 and g.labels.shape == g.images.shape
        values = set(g.labels.unique().tolist())
        assert values <= labels and len(values) >= 2


@pytest.mark.parametrize("name", ALL)
def test_load_2d(data_env, name):
    n, labels, simulated = EXPECTED_2D[name]
    g = load_dataset(name, size=64)
    _check_group(g, name, n, labels, 2)
    assert g.shape == (64, 64)
    assert g.meta["simulated"] == simulated
    assert all(("simulated" in nm) == s for nm, s in zip(g.names, simulated))


@pytest.mark.parametrize("name,n,labels", [("icbm152", 3, {0, 1, 2, 3}), ("open_ms", 4, {0, 1}),
                                           ("myops_cmr", 3, {0, 1, 2, 3})])
def test_load_3d(data_env, name, n, labels):
    g = load_dataset(name, dim=3, size=48)
    _check_group(g, name, n, labels, 3)
    assert g.shape[1:] == (48, 48)
    assert g.spacing[1] == pytest.approx(g.spacing[2])
    if name == "myops_cmr":
        assert g.spacing[0] == pytest.approx(12.0, abs=0.01)  # thick slices are not interpolated
        assert g.shape[0] >= 5
    else:
        assert g.spacing[0] == pytest.approx(g.spacing[1])  # isotropic brain grids


def test_spacing_is_fov_over_size(data_env):
    a = load_dataset("open_ms", size=64)
    b = load_dataset("open_ms", size=128)
    assert a.spacing[0] == pytest.approx(2 * b.spacing[0])
    native = load_dataset("open_ms", size=None)
    assert native.spacing == (1.0, 1.0)
    assert native.shape[0] * native.spacing[0] == pytest.approx(128 * b.spacing[0], abs=1.0)


def test_subjects_modalities_and_options(data_env):
    g = load_dataset("open_ms", subjects="all", size=32)
    assert len(g) == 12 and g.names[0] == "patient07/FLAIR" and g.names[-1] == "patient26/T2"
    g = load_dataset("myops_cmr", subjects=["Case3003", "Case3006"], modalities=["LGE", "t2"], size=32)
    assert g.names == ["Case3003/LGE", "Case3003/T2", "Case3006/LGE", "Case3006/T2"]
    assert "pathology" in g.meta and g.meta["pathology"].shape == g.labels.shape
    p = load_dataset("myops_cmr", size=32, pathology=True)
    assert set(p.labels.unique().tolist()) <= set(range(6)) and p.label_names[5] == "myocardial scar"
    t = load_dataset("icbm152", modalities="T2", size=32)
    assert t.names == ["ICBM152/T2_simulated"] and t.meta["simulated"] == [True]
    c = load_dataset("cine_cmr", frames=[0, 8], slice_index=2, size=32)
    assert c.names == ["s03/frame00", "s03/frame08"] and c.meta["slice_labels"].shape == (2, 1, 32, 32)
    f = load_dataset("cine_cmr", group_by="frame", size=32)
    assert len(f) == 10 and f.labels is not None
    o = load_dataset("oasis", include_atlas=True, labels="tissue", size=32)
    assert o.names[-1] == "atlas/T1" and set(o.labels.unique().tolist()) <= {0, 1, 2, 3}
    s = load_dataset("brainweb_slices", modalities=["T1_border20", "PD_shifted13x17y"], size=32)
    assert len(s) == 2
    raw = load_dataset("brats2012", size=32, normalize=False, slice_index=100)
    assert float(raw.images.max()) > 10 and raw.meta["slice_index"] == [100] * 4


def test_bad_loader_arguments(data_env):
    with pytest.raises(ValueError, match="valid modality names: FLAIR, T1, T1POST, T2"):
        load_dataset("open_ms", modalities=["PD"])
    with pytest.raises(ValueError, match="patient07"):
        load_dataset("open_ms", subjects=["patient01"])
    with pytest.raises(ValueError, match="2-D images only"):
        load_dataset("ants_slices", dim=3)
    with pytest.raises(ValueError, match="slice_index"):
        load_dataset("open_ms", slice_index=500)
    with pytest.raises(ValueError, match="dim"):
        load_dataset("open_ms", dim=4)
    with pytest.raises(ValueError, match="size"):
        load_dataset("open_ms", size=2)
    with pytest.raises(TypeError, match="pathology"):
        load_dataset("open_ms", pathology=True)


def test_device_argument(data_env):
    g = load_dataset("brainweb_slices", size=32, device="cpu")
    assert g.images.device.type == "cpu"
    if torch.cuda.is_available():
        g = load_dataset("myops_cmr", size=32, device="cuda")
        assert g.images.is_cuda and g.labels.is_cuda


def test_same_space_subjects_share_one_crop(data_env):
    g = load_dataset("open_ms", subjects="all", modalities="T1", size=64)
    # MNI-registered brains: same slice, same grid; affines identical
    assert len(set(g.meta["slice_index"])) == 1
    np.testing.assert_allclose(g.affines[0], g.affines[2])
    corr = np.corrcoef(g.images[0].flatten().numpy(), g.images[1].flatten().numpy())[0, 1]
    assert corr > 0.7


def test_affine_maps_output_grid_to_world(data_env):
    g = load_dataset("open_ms", dim=3, size=48, modalities="T1")
    # centre voxel of the 3-D crop lies inside the MNI brain box; spacing is the column norm of the affine
    cols = np.linalg.norm(g.affines[0][:3, :3], axis=0)
    np.testing.assert_allclose(cols, g.spacing, rtol=1e-5)
    centre = g.affines[0] @ np.array([(n - 1) / 2 for n in g.shape] + [1.0])
    assert np.all(np.abs(centre[:3]) < 40)


# ------------------------------------------------------------------------------------------------ issue-10 datasets
def _class_medians(img, lab, classes):
    return [float(img[lab == c].median()) for c in classes]


def _explained_variance(img, lab):
    """Correlation ratio: the fraction of the intensity variance explained by the label classes."""
    within = sum(((img[lab == c] - img[lab == c].mean()) ** 2).sum() for c in lab.unique())
    return float(1 - within / ((img - img.mean()) ** 2).sum())


def test_brainweb47_t1_t2_pd_with_model_on_the_image_grid(data_env):
    g = load_dataset("brainweb47", dim=3, size=None, normalize=False)
    assert g.names == ["subject47/T1", "subject47/T2", "subject47/PD"] and g.meta["simulated"] == [False] * 3
    assert g.spacing == (5.0, 1.0, 1.0) and g.meta["original_spacing"] == [(5.0, 1.0, 1.0)]
    assert 36 <= g.shape[0] <= 38 and g.shape[1] <= 217 + 8  # 36 slices of 5 mm, 217 rows + the 4 mm ROI margin
    t1, t2, pd = g.images[:, 0]
    lab = g.labels[0, 0]
    csf, gm, wm = _class_medians(t1, lab, (1, 2, 3))
    assert csf < gm < wm  # T1-weighted: the model sits on the image (a shifted or flipped model breaks this)
    csf, gm, wm = _class_medians(t2, lab, (1, 2, 3))
    assert csf > gm > wm  # T2-weighted
    # the 12 classes explain the T1 intensity best where the model sits (measured: 0.76; one slice off: 0.70)
    full = load_dataset("brainweb47", dim=3, size=None, normalize=False, labels="classes")
    assert set(full.labels.unique().tolist()) == set(range(12)) and full.label_names[10] == "dura mater"
    classes = full.labels[0, 0]
    here = _explained_variance(t1, classes)
    assert here > 0.72
    for off in (1, -1):
        assert here > _explained_variance(t1, torch.roll(classes, off, dims=0)) + 0.04
    assert here > _explained_variance(t1, classes.flip(1)) + 0.04
    with pytest.raises(ValueError, match="labels must be 'tissue'"):
        load_dataset("brainweb47", labels="aseg")


def test_brainweb20_inter_subject_simulated_t1(data_env):
    g = load_dataset("brainweb20", subjects=["subject05", "subject47"], dim=3, size=None, normalize=False)
    assert g.names == ["subject05/T1_simulated", "subject47/T1_simulated"] and g.meta["simulated"] == [True, True]
    assert g.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(g.affines[0], g.affines[1])  # one BrainWeb world frame, one crop
    a, b = g.labels[:, 0]
    assert float((a != b).float().mean()) > 0.02  # two different brains
    for img, lab in zip(g.images[:, 0], g.labels[:, 0]):
        csf, gm, wm = _class_medians(img, lab, (1, 2, 3))
        assert csf < gm < wm
    assert len(REGISTRY["brainweb20"].subjects) == 10


def test_qperf_series_frames_masks_and_aif(data_env):
    g = load_dataset("qperf", size=None, normalize=False)
    assert len(g) == 99 and g.names[36] == "aif/frame36" and g.spacing == (1.0, 1.0) and g.labels is None
    assert g.shape == (64, 64)  # 64x52 series padded to a square field of view
    masks = g.meta["series_labels"]
    assert masks.shape == (99, 1, 64, 64) and (masks == masks[:1]).all()
    assert int((masks[0] == 1).sum()) == 25 and int((masks[0] == 2).sum()) == 34
    curve = {c: g.images[:, 0][:, masks[0, 0] == c].mean(1) for c in (1, 2)}
    assert int(curve[2].argmax()) < int(curve[1].argmax())  # the bolus reaches the RV before the LV
    r = load_dataset("qperf", subjects="rest", frames=[0, 30, 67], size=None, normalize=False)
    assert r.names == ["rest/frame00", "rest/frame30", "rest/frame67"] and "series_labels" not in r.meta
    aif = r.meta["aif"]["rest"]
    assert aif.shape == (68,) and 4.0 < float(aif.max()) < 5.0
    with pytest.raises(ValueError, match="frames must be integers in 0..58"):
        load_dataset("qperf", subjects="stress", frames=[59])
    with pytest.raises(ValueError, match="2-D images only"):
        load_dataset("qperf", dim=3)


def test_brats2015_tumour_inside_brain(data_env):
    g = load_dataset("brats2015", size=None, normalize=False)
    assert g.names == ["pat0004/FLAIR", "pat0004/T1c"] and g.spacing == (1.0, 1.0)
    brain = g.meta["brain_mask"][0, 0] > 0
    lab = g.labels[0, 0]
    assert set(lab.unique().tolist()) <= {0, 1, 2, 3, 4} and (lab > 0).sum() > 500
    assert bool(brain[lab > 0].all())  # tumour labels lie inside the brain mask
    flair = g.images[0, 0]
    assert float(flair[lab == 2].median()) > float(flair[brain & (lab == 0)].median())  # edema is FLAIR-bright
    v = load_dataset("brats2015", dim=3, size=48)
    assert v.images.shape[:2] == (2, 1) and v.spacing[0] == pytest.approx(v.spacing[1])
