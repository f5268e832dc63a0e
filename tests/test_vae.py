"""Tests of BIGR-lite (xreg_edu.vae): ELBO terms, product of experts, equivariance (eq. 8), variable N,
checkpoints, and the pretrained model on held-out real groups."""
from __future__ import annotations

import math
import os

import pytest
import torch

from xreg_edu import spatial
from xreg_edu.vae import elbo as E
from xreg_edu.vae.functional import categorical_functional, class_means, linear_functional
from xreg_edu.vae.model import BIGRConfig, BIGRLite
from xreg_edu.vae.networks import StructuralEncoder
from xreg_edu.vae.posterior import leave_one_out_categorical, poe_categorical, poe_gaussian
from xreg_edu.vae.train import WEIGHTS_DIR, load_checkpoint, save_checkpoint

HAVE_DATA = bool(os.environ.get("XREG_EDU_MIRROR")) or os.path.isdir("/work/shared/data")
PRETRAINED = WEIGHTS_DIR / "bigr_lite_cd.pt"


# ------------------------------------------------------------------------------------------------ ELBO by hand
def test_elbo_terms_match_hand_computation():
    images = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]], [[[0.5, 0.5], [0.0, 1.0]]]])  # [2, 1, 2, 2]
    recon = torch.tensor([[[[0.0, 0.5], [1.0, 0.5]]], [[[0.5, 0.5], [0.5, 1.0]]]])
    # residuals: image 0 -> (0, .5, 0, -.5): mean sq = .125; image 1 -> (0, 0, -.5, 0): mean sq = .0625
    rec = sum(-0.5 * (4 * v) / v - 0.5 * 4 * math.log(2 * math.pi * v) for v in (0.125, 0.0625))
    assert float(E.gaussian_log_likelihood(images, recon)) == pytest.approx(rec, rel=1e-6)

    q = torch.tensor([[0.5, 0.25], [0.5, 0.75]]).view(1, 2, 1, 2)  # K = 2, two voxels
    kl_z = (0.5 * math.log(0.5) * 2 + math.log(2)) + (0.25 * math.log(0.25) + 0.75 * math.log(0.75) + math.log(2))
    assert float(E.kl_categorical_uniform(q)) == pytest.approx(kl_z, rel=1e-6)

    mean, logvar = torch.tensor([1.0, 0.0]), torch.tensor([0.0, math.log(4.0)])
    kl_g = 0.5 * (1 + 1 - 1 - 0) + 0.5 * (0 + 4 - 1 - math.log(4))
    assert float(E.kl_gaussian_standard(mean, logvar)) == pytest.approx(kl_g, rel=1e-6)

    v = torch.zeros(1, 2, 2, 3)
    v[0, 0, 1, 2] = 2.0  # one component at one voxel; spacing (1, 2)
    # axis-0 differences: one pair (2 - 0)/1 -> 4; axis-1 differences: one pair (2 - 0)/2 -> 1
    lam = 0.3
    assert float(E.kl_geometry_delta(v, (1.0, 2.0), lam)) == pytest.approx(0.5 * lam * (4 + 1), rel=1e-6)

    terms = E.elbo_terms(images, recon, torch.tensor(kl_z), torch.tensor(1.5), beta_z=1.0)
    assert float(terms.elbo) == pytest.approx(rec - kl_z - 1.5, rel=1e-6)
    assert float(terms.loss()) == pytest.approx(-(rec - kl_z - 1.5) / 8, rel=1e-6)


def test_model_elbo_is_the_sum_of_its_named_terms():
    torch.manual_seed(0)
    model = BIGRLite(variant="CD", levels=(2,), width=4, head_width=4, beta_z=1.0)
    out = model(torch.rand(3, 1, 16, 16), (1.0, 1.0))
    t = out.terms
    assert torch.allclose(t.elbo, t.reconstruction - t.kl_anatomy - t.kl_geometry)
    assert float(t.kl_anatomy.detach()) == pytest.approx(float(E.kl_categorical_uniform(out.posterior.detach())), rel=1e-6)
    assert float(t.kl_geometry.detach()) == pytest.approx(
        float(E.kl_geometry_delta(out.field.detach(), (1.0, 1.0), model.config.lam)), rel=1e-6, abs=1e-9)


# ------------------------------------------------------------------------------------------------ product of experts
def test_poe_categorical_is_the_normalised_product():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(3, 4, 5, 6, generator=g), dim=1)
    prod = p[0] * p[1] * p[2]
    expected = prod / prod.sum(0, keepdim=True)
    assert torch.allclose(poe_categorical(torch.log(p))[0], expected, atol=1e-6)
    # with a prior and an abstaining expert (weight 0)
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4])
    w = torch.ones(3, 1, 5, 6)
    w[2] = 0
    prod = p[0] * p[1] * prior.view(4, 1, 1)
    assert torch.allclose(poe_categorical(torch.log(p), weights=w, log_prior=prior.log())[0],
                          prod / prod.sum(0, keepdim=True), atol=1e-6)
    # leave-one-out: row j = product of the others
    loo = leave_one_out_categorical(torch.log(p))
    prod = p[0] * p[2]
    assert torch.allclose(loo[1], prod / prod.sum(0, keepdim=True), atol=1e-6)


def test_poe_categorical_does_not_underflow_for_large_groups():
    p = torch.full((500, 3, 2, 2), 1e-3)
    p[:, 0] = 1 - 2e-3
    q = poe_categorical(torch.log(p))
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(1, 2, 2))
    assert float(q[0, 0].min()) > 0.999


def test_poe_gaussian_is_precision_weighted():
    mean = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    var = torch.tensor([1.0, 4.0]).view(2, 1, 1, 1)
    m, lv = poe_gaussian(mean, var.log())
    prec = 1 / 1.0 + 1 / 4.0
    assert float(m) == pytest.approx((1 * 1.0 + 3 * 0.25) / prec, rel=1e-6)
    assert float(lv.exp()) == pytest.approx(1 / prec, rel=1e-6)
    m2, lv2 = poe_gaussian(mean, var.log(), prior_expert=True)
    assert float(m2) == pytest.approx((1 * 1.0 + 3 * 0.25) / (prec + 1), rel=1e-6)


# ------------------------------------------------------------------------------------------------ equivariance (eq. 8)
def _blob_image(shift=(0, 0)):
    img = torch.zeros(1, 1, 48, 48)
    y, x = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    cy, cx = 22 + shift[0], 25 + shift[1]
    img[0, 0] = torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 30) + 0.5 * ((abs(y - cy) < 4) & (abs(x - cx - 6) < 3))
    return img


@pytest.mark.parametrize("gaussian", [False, True])
def test_encoder_is_translation_equivariant(gaussian):
    torch.manual_seed(0)
    enc = StructuralEncoder(2, 4, gaussian=gaussian)
    with torch.no_grad():
        for layer in enc.modules():  # make the check non-trivial: larger random weights
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.mul_(2.0)
        a, b = enc(_blob_image()), enc(_blob_image((3, -2)))
    a = a[0] if gaussian else a
    b = b[0] if gaussian else b
    shifted = torch.roll(a, shifts=(3, -2), dims=(2, 3))
    r = enc.receptive_radius
    inner = (slice(None), slice(None), slice(r + 3, 48 - r - 3), slice(r + 3, 48 - r - 3))
    assert float((shifted - b)[inner].abs().max()) < 1e-4
    assert float((a - b)[inner].abs().max()) > 1e-2  # the maps do move


def test_pointwise_functional_commutes_with_warping():
    g = torch.Generator().manual_seed(2)
    n, k, shape, spacing = 3, 4, (20, 24), (1.5, 1.0)
    z = torch.softmax(3 * torch.randn(1, k, *shape, generator=g), 1).expand(n, k, *shape)
    mu = torch.rand(n, k, generator=g)
    v = 3 * torch.nn.functional.interpolate(torch.randn(n, 2, 4, 4, generator=g), size=shape, mode="bicubic")
    pts = spatial.identity_grid(shape, spacing) + spatial.svf_exp(v, spacing)
    lhs = spatial.warp(categorical_functional(z, mu), pts, spacing, padding="border")
    rhs = categorical_functional(spatial.warp(z, pts, spacing, padding="border"), mu)
    assert torch.allclose(lhs, rhs, atol=1e-5)
    coef = torch.randn(n, k + 1, generator=g)
    lhs = spatial.warp(linear_functional(z, coef), pts, spacing, padding="border")
    rhs = linear_functional(spatial.warp(z, pts, spacing, padding="border"), coef)
    assert torch.allclose(lhs, rhs, atol=1e-5)
    # any pointwise (even non-linear) functional commutes exactly with nearest-neighbour warping
    f = lambda t: torch.tanh(3 * categorical_functional(t, mu)) ** 2  # noqa: E731
    lhs = spatial.warp(f(z), pts, spacing, mode="nearest", padding="border")
    rhs = f(spatial.warp(z, pts, spacing, mode="nearest", padding="border"))
    assert torch.allclose(lhs, rhs, atol=1e-6)
    # and a non-pointwise functional (a blur) does not
    blur = lambda t: torch.nn.functional.avg_pool2d(t, 5, 1, 2)  # noqa: E731
    lhs = spatial.warp(blur(categorical_functional(z, mu)), pts, spacing, padding="border")
    rhs = blur(categorical_functional(spatial.warp(z, pts, spacing, padding="border"), mu))
    assert float((lhs - rhs).abs().max()) > 1e-3


def test_class_means_closed_form():
    z = torch.tensor([[[[1.0, 0.0, 0.5]], [[0.0, 1.0, 0.5]]]])  # [1, 2, 1, 3]
    u = torch.tensor([[[[2.0, 4.0, 6.0]]]])
    mu = class_means(z, u, eps=0.0)
    assert torch.allclose(mu, torch.tensor([[(2 + 3) / 1.5, (4 + 3) / 1.5]]))


# ------------------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("variant", ["PN", "CN", "PD", "CD"])
@pytest.mark.parametrize("n", [2, 7])
def test_variants_run_for_any_group_size(variant, n):
    torch.manual_seed(0)
    model = BIGRLite(variant=variant, levels=(4, 2), width=8, head_width=8)
    with torch.no_grad():  # non-zero heads so that the fields are not trivially zero
        for h in model.heads:
            h.out.weight.normal_(0, 0.5)
    out = model(torch.rand(n, 1, 24, 20), (1.2, 1.0))
    assert out.field.shape == (n, 2, 24, 20) and out.recon.shape == (n, 1, 24, 20)
    assert float(out.field.detach().abs().max()) > 1e-3
    assert torch.allclose(out.field.mean(0), torch.zeros(2, 24, 20), atol=1e-5)  # group mean zero
    assert torch.isfinite(out.terms.elbo)
    out.terms.loss().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_wrong_config_gives_a_clear_error(tmp_path):
    model = BIGRLite(variant="CD", width=4, head_width=4, levels=(2,))
    path = save_checkpoint(model, tmp_path / "m.pt")
    again = load_checkpoint(path, config=model.config)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError, match="variant: checkpoint has 'CD', requested 'PN'"):
        load_checkpoint(path, config={"variant": "PN"})
    with pytest.raises(ValueError, match="channels"):
        load_checkpoint(path, config=BIGRConfig(variant="CD", width=4, head_width=4, levels=(2,), channels=3))
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a BIGR-lite checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_unknown_variant_rejected():
    with pytest.raises(ValueError, match="variant"):
        BIGRConfig(variant="XD")


def test_head_increment_has_group_mean_zero_and_is_bounded():
    torch.manual_seed(0)
    model = BIGRLite(variant="CD", levels=(2,), width=4, head_width=4, max_step_mm=3.0)
    head = model.heads[0]
    warped, template = torch.rand(4, model.config.channels, 12, 12), torch.rand(1, model.config.channels, 12, 12)
    with torch.no_grad():
        head.out.weight.normal_(0, 0.5)
        ref = head(warped, template)
        head.out.bias.fill_(20.0)  # a large common offset must neither saturate tanh nor change the increment
        inc = head(warped, template)
    assert torch.allclose(inc, ref, atol=1e-4)
    assert float(inc.abs().max()) <= 3.0 + 1e-5 and float(inc.abs().max()) > 0.1
    assert float((inc[0] - inc[1]).abs().max()) > 1e-2


def test_two_stage_training_runs_and_freezes_the_encoder():
    from xreg_edu.group import ImageGroup
    from xreg_edu.vae.train import train

    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    disk = (((y - 12) ** 2 + (x - 11) ** 2) < 30).float()
    imgs = torch.stack([disk, 1 - disk, 0.5 * disk]).unsqueeze(1) + 0.05 * torch.rand(3, 1, 24, 24, generator=g)
    sl = ImageGroup(images=imgs, spacing=(2.0, 2.0), names=["a", "b", "c"], labels=disk.long().expand(3, 1, 24, 24).clone())
    cfg = BIGRConfig(variant="CD", levels=(4,), width=4, head_width=4, channels=3)
    seen = {}

    def cb(step, rec):
        if step == 2:  # first stage-B step: snapshot of the encoder
            seen["enc"] = [p.detach().clone() for p in model_ref[0].encoder.parameters()]

    model_ref = []
    torch.manual_seed(0)
    orig = BIGRLite.__init__

    def spy(self, *a, **k):
        orig(self, *a, **k)
        model_ref.append(self)

    BIGRLite.__init__ = spy
    try:
        model, hist = train(cfg, steps=6, slices=[sl], warmup=(0.34, 0.7), progress=False, callback=cb,
                            misalignment={"kind": "svf", "magnitude_mm": 3.0})
    finally:
        BIGRLite.__init__ = orig
    assert [h["stage"] for h in hist] == ["A", "A", "B", "B", "B", "B"]
    assert hist[0]["n"] > 3  # stage A adds intensity-remapped copies
    assert all(torch.equal(a, b) for a, b in zip(seen["enc"], model.encoder.parameters()))  # frozen in B
    assert any(float(h.out.weight.detach().abs().sum()) > 0 for h in model.heads)  # the heads did learn
    assert not model.training


# ------------------------------------------------------------------------------------------------ pretrained, real data
@pytest.fixture(scope="module")
def held_out():
    if not HAVE_DATA or not PRETRAINED.exists():
        pytest.skip("needs the data mirror and the committed pretrained weights")
    from xreg_edu.vae.data import split_slices
    from xreg_edu.vae.train import load_checkpoint as load

    model = load(PRETRAINED)
    _, test = split_slices("myops_cmr", size=model.train_info.get("size", 64))
    return model, test


@pytest.mark.parametrize("n,groups", [(3, None), (10, 4), (60, 2)])
def test_pretrained_improves_dice_on_held_out_patients(held_out, n, groups):
    from xreg_edu.evaluate import group_dice
    from xreg_edu.vae.data import make_group
    from xreg_edu.vae.inference import register

    model, test = held_out
    slices = test if groups is None else test[:groups]
    before, after = [], []
    for i, s in enumerate(slices):
        group, _ = make_group(s, n, seed=1000 + i)
        res = register(model, group)
        before.append(float(group_dice(group.labels)))
        after.append(float(group_dice(res.warped_labels)))
    b, a = sum(before) / len(before), sum(after) / len(after)
    assert a > b + 0.01, f"N={n}: Dice {b:.3f} -> {a:.3f}"


def test_diffeomorphic_variant_has_no_folding(held_out):
    from xreg_edu.evaluate import folding_percentage
    from xreg_edu.vae.data import make_group
    from xreg_edu.vae.inference import register

    model, test = held_out
    assert model.config.diffeomorphic
    for i, s in enumerate(test[:4]):
        group, _ = make_group(s, 12, seed=2000 + i)
        res = register(model, group)
        assert float(res.displacement.abs().max()) > 0.1  # it does deform
        assert float(folding_percentage(res.displacement, group.spacing).max()) == 0.0
