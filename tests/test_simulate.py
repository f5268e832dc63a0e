"""Known-answer tests for xreg_edu.simulate (seeded misalignments with ground truth, bias field, noise)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import xreg_edu.spatial as sp
from xreg_edu import simulate as sim
from xreg_edu.evaluate import group_registration_error
from xreg_edu.group import ImageGroup

from test_spatial import real_slice

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def real_group(spacing=(1.5, 1.0)) -> ImageGroup:
    """T1, T2 and FLAIR mid slices of open_ms patient07 (+ a crude 3-class label map of T1)."""
    imgs = torch.cat([real_slice(m) for m in ("T1", "T2", "FLAIR")])
    lab = torch.bucketize(imgs[:1], torch.tensor([0.05, 0.4, 0.7])).expand(3, -1, -1, -1).clone()
    return ImageGroup(imgs, spacing, ["T1", "T2", "FLAIR"], labels=lab)


def test_random_parameters_are_seeded_and_mean_zero():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    for dim in (2, 3):
        p = sim.random_rigid(5, dim, 20, 10, g(1))
        assert p.shape == (5, 3 if dim == 2 else 6)
        assert torch.allclose(p.mean(0), torch.zeros(p.shape[1]), atol=1e-6)
        assert torch.equal(p, sim.random_rigid(5, dim, 20, 10, g(1)))
        assert not torch.equal(p, sim.random_rigid(5, dim, 20, 10, g(2)))
        assert p[:, :-dim].abs().max() <= 2 * math.radians(20) and p[:, -dim:].abs().max() <= 20
        a = sim.random_affine(4, dim, generator=g(3))
        assert torch.allclose(sp.affine_matrix(a).mean(0), torch.eye(dim, dim + 1), atol=1e-6)
    c = sim.random_ffd(3, (30, 20), (1.0, 2.0), 8.0, 4.0, g(0))
    assert c.shape == (3, 2, *sp.ffd_control_shape((30, 20), (1.0, 2.0), 8.0))
    assert torch.allclose(c.mean(0), torch.zeros_like(c[0]), atol=1e-6)
    v = sim.random_svf(3, (30, 20), (1.0, 2.0), 4.0, generator=g(0))
    assert v.shape == (3, 2, 30, 20) and torch.allclose(v.mean(0), torch.zeros_like(v[0]), atol=1e-5)
    with pytest.raises(ValueError, match="N >= 2"):
        sim.random_rigid(1, 2)


def test_translation_only_misalignment_has_the_known_gre():
    """With rotations switched off, g_j(x) = x + t_j with mean_j t_j = 0, so gRE(points) = mean_j |t_j| mm."""
    group = real_group()
    obs, mis = sim.misalign(group, "rigid", seed=4, max_angle_deg=0.0, max_translation_mm=8.0)
    t = mis.params[:, 1:]
    assert torch.allclose(mis.params[:, 0], torch.zeros(3))
    assert group_registration_error(mis.points).item() == pytest.approx(t.norm(dim=1).mean().item(), rel=1e-5)


@pytest.mark.parametrize("kind,tol", [("rigid", 1e-4), ("affine", 1e-4), ("ffd", 0.05), ("svf", 0.05)])
def test_misalign_ground_truth_correction_gives_zero_gre(kind, tol):
    group = real_group()
    obs, mis = sim.misalign(group, kind, seed=7)
    obs2, mis2 = sim.misalign(group, kind, seed=7)
    assert torch.equal(obs.images, obs2.images)  # seeded
    assert obs.images.shape == group.images.shape and obs.meta["misalignment"]["kind"] == kind
    assert obs.labels.dtype == torch.int64 and set(obs.labels.unique().tolist()) <= {0, 1, 2, 3}
    initial = group_registration_error(mis.points).item()
    assert initial > 0.5
    assert group_registration_error(mis.true_points(sp.identity_grid(group.shape, group.spacing))).item() \
        == pytest.approx(initial)
    fg = group.images[0, 0] > 0.05
    assert group_registration_error(mis.true_points(mis.correction()), mask=fg).item() < tol
    # the correction really undoes the warp: observed images pulled back by g^-1 give the true images
    # (smoothed first, so that two bilinear interpolations are accurate)
    group = replace(group, images=sp.gaussian_smooth(group.images, 1.5))
    obs, mis = sim.misalign(group, kind, seed=7)
    back = sp.warp(obs.images, mis.correction(), group.spacing)
    inside = sp.overlap_mask(mis.points, group.shape, group.spacing)[0, 0]
    inner = inside & fg
    err = (back - group.images)[:, 0][:, inner].abs().mean()
    before = (obs.images - group.images)[:, 0][:, inner].abs().mean()
    assert err < 0.02 * group.images[:, 0][:, inner].abs().mean() and err < 0.25 * before


def test_misalign_direction_matches_warp_convention():
    """A rigid translation g(x) = x + t: the observed image at x shows the true image at x + t."""
    group = real_group(spacing=(1.0, 1.0))
    obs, mis = sim.misalign(group, "rigid", seed=0, max_angle_deg=0.0, max_translation_mm=5.0)
    t = mis.params[0, 1:]
    k = [int(round(float(x))) for x in t]
    mis.params[:, 1:] = torch.tensor(k, dtype=torch.float32) * torch.tensor([[1.0], [-1.0], [0.0]])
    mis.matrix = sp.rigid_matrix(mis.params)
    obs = sp.warp(group.images, mis.points, group.spacing)
    expected = torch.roll(group.images[0], (-k[0], -k[1]), (1, 2))
    sl = (slice(None), slice(abs(k[0]), -abs(k[0]) or None), slice(abs(k[1]), -abs(k[1]) or None))
    assert torch.allclose(obs[0][sl], expected[sl], atol=1e-5)


def test_bias_field_and_noise():
    g = torch.Generator().manual_seed(0)
    b = sim.bias_field((64, 48), 0.2, g, num_images=2)
    assert b.shape == (2, 1, 64, 48)
    assert b.min() >= 0.8 - 1e-6 and b.max() <= 1.2 + 1e-6 and (b.amax((1, 2, 3)) - b.amin((1, 2, 3)) > 0.2).all()
    assert (b[..., 1:, :] - b[..., :-1, :]).abs().max() < 0.05  # smooth
    x = torch.zeros(1, 1, 256, 256)
    n = sim.add_noise(x, 0.1, torch.Generator().manual_seed(1))
    assert n.std().item() == pytest.approx(0.1, rel=0.03)
    r = sim.add_noise(x, 0.1, torch.Generator().manual_seed(1), kind="rician")
    assert (r >= 0).all() and r.mean().item() == pytest.approx(0.1 * math.sqrt(math.pi / 2), rel=0.03)
    group = real_group()
    c = sim.corrupt(group, bias=0.2, noise=0.03, seed=2)
    assert torch.equal(c.images, sim.corrupt(group, bias=0.2, noise=0.03, seed=2).images)
    assert not torch.equal(c.images, group.images)
    with pytest.raises(ValueError, match="kind"):
        sim.add_noise(x, 0.1, kind="poisson")
    with pytest.raises(ValueError, match="strength"):
        sim.bias_field((8, 8), 1.5)


def test_bad_input_raises_specific_errors():
    group = real_group()
    with pytest.raises(ValueError, match="N >= 2"):
        sim.misalign(group.subset([0]), "rigid")
    with pytest.raises(ValueError, match="kind"):
        sim.misalign(group, "elastic")
    with pytest.raises(TypeError, match="ImageGroup"):
        sim.misalign(group.images, "rigid")
    with pytest.raises(ValueError, match="spacing"):
        ImageGroup(group.images, (1.0,), group.names)  # mismatched spacing is refused by the container


@CUDA
def test_same_results_on_cuda():
    group = real_group()
    a, ma = sim.misalign(group, "svf", seed=3)
    b, mb = sim.misalign(group.to("cuda"), "svf", seed=3)
    assert torch.allclose(a.images, b.images.cpu(), atol=1e-4)
    assert torch.allclose(ma.points, mb.points.cpu(), atol=1e-4)
    assert torch.equal(a.labels, b.labels.cpu()) or (a.labels != b.labels.cpu()).float().mean() < 1e-3
