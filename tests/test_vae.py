"""Tests of BIGR-lite (xreg_edu.vae): every ELBO term by hand, the bound on an enumerable toy model, product of
experts, equivariance (eq. 8), variable N, checkpoints, training, and the gate test on held-out real groups."""
from __future__ import annotations

import itertools
import json
import math
import os

import pytest
import torch

from xreg_edu import spatial
from xreg_edu.vae import elbo as E
from xreg_edu.vae.functional import categorical_functional, linear_functional
from xreg_edu.vae.model import BIGRConfig, BIGRLite, pair_agreement
from xreg_edu.vae.networks import StructuralEncoder
from xreg_edu.vae.posterior import poe_categorical, poe_gaussian
from xreg_edu.vae.train import WEIGHTS_DIR, load_checkpoint, save_checkpoint

HAVE_DATA = bool(os.environ.get("XREG_EDU_MIRROR")) or os.path.isdir("/work/shared/data")
VARIANT_FILES = {v: WEIGHTS_DIR / f"bigr_lite_{v.lower()}.pt" for v in ("PN", "CN", "PD", "CD")}


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors gain nothing from more threads, and a busy shared machine makes OpenMP spin."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _normal_logpdf(x, m, v):
    return -0.5 * ((x - m) ** 2 / v + math.log(2 * math.pi * v))


# ------------------------------------------------------------------------------------------------ terms by hand
def test_gaussian_class_terms_match_hand_computation():
    values = torch.tensor([[1.0, 3.0, 5.0]])                 # N = 1, M = 3
    q = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])   # [M, K]
    mu, var = E.gaussian_class_fit(values, q)
    # class 0: weights (1, .5, 0) -> mean (1 + 1.5)/1.5, var Σ w (x - m)² / 1.5
    m0 = 2.5 / 1.5
    v0 = (1 * (1 - m0) ** 2 + 0.5 * (3 - m0) ** 2) / 1.5
    assert float(mu[0, 0]) == pytest.approx(m0) and float(var[0, 0]) == pytest.approx(v0)
    logf = E.gaussian_class_log_density(values, mu, var)
    assert float(logf[0, 0, 1]) == pytest.approx(_normal_logpdf(3.0, m0, v0), rel=1e-6)
    rec = E.expected_log_likelihood(logf, q)
    hand = sum(float(q[x, k]) * float(logf[0, k, x]) for x in range(3) for k in range(2))
    assert float(rec) == pytest.approx(hand, rel=1e-6)
    # voxel weights drop a voxel from the sum
    w = torch.tensor([[1.0, 0.0, 1.0]])
    assert float(E.expected_log_likelihood(logf, q, w)) == pytest.approx(
        float(logf[0, 0, 0]) + float(logf[0, 1, 2]), rel=1e-6)


def test_kl_terms_match_hand_computation():
    q = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    pi = E.class_proportions(q)
    assert torch.allclose(pi, torch.tensor([0.375, 0.625]))
    hand = sum(float(q[x, k]) * (math.log(float(q[x, k])) - math.log(float(pi[k]))) for x in range(2) for k in range(2))
    assert float(E.kl_categorical(q, pi.log())) == pytest.approx(hand, rel=1e-6)
    mean, logvar = torch.tensor([1.0, 0.0]), torch.tensor([0.0, math.log(4.0)])
    assert float(E.kl_gaussian_standard(mean, logvar)) == pytest.approx(0.5 + 0.5 * (3 - math.log(4)), rel=1e-6)
    v = torch.zeros(1, 2, 2, 3)
    v[0, 0, 1, 2] = 2.0  # spacing (1, 2): axis-0 difference (2/1)² = 4, axis-1 difference (2/2)² = 1
    assert float(E.kl_geometry_delta(v, (1.0, 2.0), 0.3)) == pytest.approx(0.5 * 0.3 * 5, rel=1e-6)
    t = E.elbo_terms(torch.tensor(-3.0), torch.tensor(0.5), torch.tensor(0.25), 10)
    assert float(t.elbo) == pytest.approx(-3.75) and float(t.loss()) == pytest.approx(0.375)


def test_parzen_density_is_a_density_and_follows_the_histogram():
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(1, 400, generator=g) * 0.1, 2 + torch.randn(1, 400, generator=g) * 0.3], 1)
    q = torch.zeros(800, 2)
    q[:400, 0], q[400:, 1] = 1, 1
    pmf, lo, width = E.parzen_class_fit(values, q, bins=16)
    assert torch.allclose(pmf.sum(-1), torch.ones(1, 2), atol=1e-5)
    grid = torch.linspace(float(lo) - 3 * float(width), float(lo) + 19 * float(width), 4001).view(1, -1)
    dens = E.parzen_class_log_density(grid, pmf, lo, width, 16).exp()
    integral = dens.sum(-1) * (grid[0, 1] - grid[0, 0])
    assert torch.allclose(integral, torch.ones(1, 2), atol=2e-3)   # integrates to one
    at = E.parzen_class_log_density(torch.tensor([[0.0, 2.0]]), pmf, lo, width, 16)
    assert float(at[0, 0, 0]) > float(at[0, 1, 0]) and float(at[0, 1, 1]) > float(at[0, 0, 1])
    # differentiable in the intensities (registration gradient)
    x = torch.tensor([[0.05, 1.8]], requires_grad=True)
    E.parzen_class_log_density(x, pmf, lo, width, 16).sum().backward()
    assert float(x.grad.abs().sum()) > 0


def test_linear_gaussian_expectation_is_exact():
    g = torch.Generator().manual_seed(1)
    m, s2 = torch.randn(50, 3, generator=g), torch.rand(50, 3, generator=g) + 0.1
    u = torch.randn(2, 50, generator=g)
    coef, noise = E.linear_gaussian_fit(m, s2, u)
    ell = E.linear_gaussian_expected_log_likelihood(m, s2, u, coef, noise)
    z = m + s2.sqrt() * torch.randn(20000, 50, 3, generator=g)         # Monte Carlo over q
    pred = torch.einsum("smc,nc->snm", z, coef[:, :3]) + coef[:, 3].view(1, 2, 1)
    mc = (-0.5 * ((u - pred) ** 2 / noise.view(1, 2, 1) + torch.log(2 * math.pi * noise).view(1, 2, 1))).sum((1, 2))
    assert float(ell) == pytest.approx(float(mc.mean()), rel=2e-3)
    # (a, b, σ²) maximise the expected log-likelihood: any perturbation lowers it
    for d in (0.05, -0.05):
        assert float(E.linear_gaussian_expected_log_likelihood(m, s2, u, coef + d, noise)) < float(ell)
        assert float(E.linear_gaussian_expected_log_likelihood(m, s2, u, coef, noise * (1 + d))) < float(ell)


# ------------------------------------------------------------------------------------------------ the bound
def _toy():
    """N = 2 images, 3 voxels, K = 2 classes, fixed Gaussian f_jk and prior π (z enumerable: 2³ configurations)."""
    u = torch.tensor([[0.1, 0.9, 0.4], [1.2, -0.3, 0.5]])
    mu = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    var = torch.tensor([[0.2, 0.3], [0.25, 0.15]])
    pi = torch.tensor([0.4, 0.6])
    return u, mu, var, pi


def _elbo_fixed(q, u, mu, var, pi):
    logf = E.gaussian_class_log_density(u, mu, var)
    return E.expected_log_likelihood(logf, q) - E.kl_categorical(q, pi.log())


def test_elbo_is_a_bound_tight_at_the_exact_posterior():
    u, mu, var, pi = _toy()
    # exact log p(u) by enumerating all K^M joint configurations of z
    configs = list(itertools.product(range(2), repeat=3))
    joint = []
    for z in configs:
        lp = sum(math.log(float(pi[z[x]])) + sum(_normal_logpdf(float(u[j, x]), float(mu[j, z[x]]),
                                                                 float(var[j, z[x]])) for j in range(2))
                 for x in range(3))
        joint.append(lp)
    log_pu = float(torch.logsumexp(torch.tensor(joint, dtype=torch.float64), 0))
    # the exact posterior factorises over voxels; it is the normalised product π Π_j f_jk
    logf = E.gaussian_class_log_density(u, mu, var).double()
    exact = torch.softmax(logf.sum(0).t() + pi.double().log(), 1)              # [M, K]
    tight = _elbo_fixed(exact, u.double(), mu.double(), var.double(), pi.double())
    assert float(tight) == pytest.approx(log_pu, abs=1e-9)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        q = torch.softmax(2 * torch.randn(3, 2, generator=g, dtype=torch.float64), 1)
        assert float(_elbo_fixed(q, u.double(), mu.double(), var.double(), pi.double())) < log_pu - 1e-9
    # the gap is KL(q || exact posterior), term by term
    q = torch.softmax(torch.randn(3, 2, generator=g, dtype=torch.float64), 1)
    gap = float((q * (q.log() - exact.log())).sum())
    assert log_pu - float(_elbo_fixed(q, u.double(), mu.double(), var.double(), pi.double())) == pytest.approx(gap, abs=1e-6)


def test_gaussian_elbo_is_a_bound_tight_at_the_exact_posterior():
    # P toy: z ~ N(0, 1) per voxel, u_j = a_j z + b_j + N(0, σ²_j): log p(u) is a Gaussian in closed form
    u = torch.tensor([[0.3, -1.0], [1.5, 0.2]], dtype=torch.float64)        # N = 2, M = 2
    coef = torch.tensor([[0.8, 0.1], [-1.2, 0.4]], dtype=torch.float64)     # (a_j, b_j)
    noise = torch.tensor([0.5, 0.3], dtype=torch.float64)
    a, b = coef[:, 0], coef[:, 1]
    cov = torch.outer(a, a) + torch.diag(noise)
    mvn = torch.distributions.MultivariateNormal(b, cov)
    log_pu = float(mvn.log_prob(u.t()).sum())
    prec = 1 + (a ** 2 / noise).sum()
    mean = ((a / noise).view(2, 1) * (u - b.view(2, 1))).sum(0) / prec       # exact posterior per voxel
    var = torch.full((2,), 1 / float(prec), dtype=torch.float64)

    def bound(m, v):
        return (E.linear_gaussian_expected_log_likelihood(m.view(2, 1), v.view(2, 1), u, coef, noise)
                - E.kl_gaussian_standard(m, v.log()))

    assert float(bound(mean, var)) == pytest.approx(log_pu, abs=1e-9)
    assert float(bound(mean + 0.3, var)) < log_pu and float(bound(mean, var * 2)) < log_pu


def test_model_elbo_uses_one_posterior_in_both_terms():
    torch.manual_seed(0)
    model = BIGRLite(variant="CD", levels=(2,), width=4, head_width=4, channels=3, encoder="dilated")
    with torch.no_grad():
        model.heads[0].out.weight.normal_(0, 0.3)
    images = torch.rand(3, 1, 16, 16)
    out = model(images, (1.0, 1.0))
    t = out.terms
    assert torch.allclose(t.elbo, t.reconstruction - t.kl_anatomy - t.kl_geometry)
    q = out.posterior.detach().flatten(2)[0].t()
    fov = spatial.inside_fov(out.points, (16, 16), (1.0, 1.0)).float()
    jac = spatial.jacobian_determinant(out.displacement.detach(), (1.0, 1.0)).clamp_min(0)
    assert float((jac - 1).abs().max()) > 1e-3                          # the change of variables is not trivial
    w = (fov * jac).flatten(1)
    log_f = E.fit_class_density(out.warped.detach().flatten(1), q, "parzen", 32, weights=w)
    # image voxels that no common-space voxel reaches: anatomy marginalised under π, by hand
    inv = spatial.identity_grid((16, 16), (1.0, 1.0)) + model.field_to_displacement(out.field.detach(), (1.0, 1.0),
                                                                                     inverse=True)
    outside = 1 - spatial.inside_fov(inv, (16, 16), (1.0, 1.0)).float().flatten(1)
    assert float(outside.sum()) > 0
    lf = log_f(images.flatten(1))                                      # [N, K, M]
    marginal = sum(float(outside[j, y]) * math.log(sum(float(out.prior[k]) * math.exp(float(lf[j, k, y]))
                                                       for k in range(3)))
                   for j in range(3) for y in range(256))
    hand = float(E.expected_log_likelihood(log_f(out.warped.detach().flatten(1)), q, w)) + marginal
    assert float(t.reconstruction.detach()) == pytest.approx(hand, rel=1e-5)
    assert float(t.kl_anatomy.detach()) == pytest.approx(float(E.kl_categorical(q, out.prior.log())), rel=1e-5)
    q0 = poe_categorical(torch.log(out.warped_representation.detach().clamp_min(1e-6)), weights=fov)
    assert torch.allclose(out.prior, q0.flatten(2)[0].mean(1), atol=1e-5)  # closed-form π = mean of the PoE
    assert float(t.kl_geometry.detach()) == pytest.approx(float(E.kl_geometry_delta(out.field.detach(), (1.0, 1.0), 0.1)),
                                                 rel=1e-5)


def test_merge_plan_merges_the_pair_only_one_sequence_separates():
    from xreg_edu.vae.teacher import merge_classes, merge_plan, pair_confusion

    # 3 sequences, 4 classes of mass 10: sequence 0 alone confuses (0, 1) completely; sequences 0 and 1 confuse
    # (2, 3) by 40 %, sequence 2 separates them. "Separated by at most one sequence" is (2, 3), not (0, 1).
    c = torch.zeros(3, 4, 4)
    c[:, range(4), range(4)] = 10.0
    c[0, 0, 0] = c[0, 1, 1] = c[0, 0, 1] = c[0, 1, 0] = 5.0
    for j in (0, 1):
        c[j, 2, 2] = c[j, 3, 3] = 6.0
        c[j, 2, 3] = c[j, 3, 2] = 4.0
    pc = pair_confusion(c)
    assert float(pc[0, 0, 1]) == pytest.approx(0.5) and float(pc[1, 2, 3]) == pytest.approx(0.4)
    assert float(pc[2, 2, 3]) == 0.0 and float(pc[0, 0, 0]) == 0.0
    assert merge_plan(c, 3) == [[0], [1], [2, 3]]
    assert merge_plan(c, 4) == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="classes must be in 1..4"):
        merge_plan(c, 5)
    gamma = torch.softmax(torch.randn(4, 5, 5), 0)
    merged = merge_classes(gamma, [[0], [1], [2, 3]])
    assert torch.allclose(merged[2], gamma[2] + gamma[3]) and torch.allclose(merged.sum(0), torch.ones(5, 5))


def test_sequence_confusion_by_hand():
    from xreg_edu.group import ImageGroup
    from xreg_edu.vae.teacher import sequence_confusion

    # class 0 = left half, class 1 = right half; sequence 0 shows the halves, sequence 1 is flat noise-free
    gamma = torch.zeros(2, 4, 4)
    gamma[0, :, :2], gamma[1, :, 2:] = 1.0, 1.0
    img = torch.stack([gamma[1], torch.ones(4, 4)]).unsqueeze(1)
    c = sequence_confusion([ImageGroup(images=img, spacing=(1.0, 1.0), names=["a", "b"])], [gamma], bins=8)
    assert torch.allclose(c[0], torch.diag(torch.tensor([8.0, 8.0])), atol=1e-4)   # read perfectly
    assert torch.allclose(c[1], torch.full((2, 2), 4.0), atol=1e-4)                # read as the prior


# ------------------------------------------------------------------------------------------------ product of experts
def test_poe_categorical_is_the_normalised_product():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(3, 4, 5, 6, generator=g), dim=1)
    prod = p[0] * p[1] * p[2]
    assert torch.allclose(poe_categorical(torch.log(p))[0], prod / prod.sum(0, keepdim=True), atol=1e-6)
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4])
    w = torch.ones(3, 1, 5, 6)
    w[2] = 0
    prod = p[0] * p[1] * prior.view(4, 1, 1)
    assert torch.allclose(poe_categorical(torch.log(p), weights=w, log_prior=prior.log())[0],
                          prod / prod.sum(0, keepdim=True), atol=1e-6)


def test_poe_categorical_does_not_underflow_for_large_groups():
    p = torch.full((500, 3, 2, 2), 1e-3)
    p[:, 0] = 1 - 2e-3
    q = poe_categorical(torch.log(p))
    assert torch.isfinite(q).all() and float(q[0, 0].min()) > 0.999


def test_poe_gaussian_is_precision_weighted():
    mean = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    var = torch.tensor([1.0, 4.0]).view(2, 1, 1, 1)
    m, lv = poe_gaussian(mean, var.log())
    prec = 1.25
    assert float(m) == pytest.approx(1.75 / prec) and float(lv.exp()) == pytest.approx(1 / prec)
    m2, _ = poe_gaussian(mean, var.log(), prior_expert=True)
    assert float(m2) == pytest.approx(1.75 / (prec + 1))


def test_pair_agreement():
    a = torch.zeros(2, 3, 4, 4)
    a[:, 0, :2], a[:, 1, 2:] = 1, 1
    assert pair_agreement(a) == pytest.approx(1.0)
    b = a.clone()
    b[1] = a[1].flip(1)          # classes 0 and 1 exchanged in image 1
    assert pair_agreement(b) == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------------ equivariance (eq. 8)
def _blob_image(shift=(0, 0)):
    img = torch.zeros(1, 1, 48, 48)
    y, x = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    cy, cx = 22 + shift[0], 25 + shift[1]
    img[0, 0] = torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 30) + 0.5 * ((abs(y - cy) < 4) & (abs(x - cx - 6) < 3))
    return img


@pytest.mark.parametrize("gaussian", [False, True])
def test_dilated_encoder_is_translation_equivariant(gaussian):
    torch.manual_seed(0)
    enc = StructuralEncoder(2, 4, gaussian=gaussian)
    with torch.no_grad():
        for layer in enc.modules():
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.mul_(2.0)
        a, b = enc(_blob_image()), enc(_blob_image((3, -2)))
    a, b = (a[0], b[0]) if gaussian else (a, b)
    shifted = torch.roll(a, shifts=(3, -2), dims=(2, 3))
    r = enc.receptive_radius
    inner = (slice(None), slice(None), slice(r + 3, 48 - r - 3), slice(r + 3, 48 - r - 3))
    assert float((shifted - b)[inner].abs().max()) < 1e-4
    assert float((a - b)[inner].abs().max()) > 1e-2


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
    blur = lambda t: torch.nn.functional.avg_pool2d(t, 5, 1, 2)  # noqa: E731  (not pointwise: does not commute)
    lhs = spatial.warp(blur(categorical_functional(z, mu)), pts, spacing, padding="border")
    rhs = blur(categorical_functional(spatial.warp(z, pts, spacing, padding="border"), mu))
    assert float((lhs - rhs).abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("variant", ["PN", "CN", "PD", "CD"])
@pytest.mark.parametrize("n", [2, 7])
def test_variants_run_for_any_group_size(variant, n):
    torch.manual_seed(0)
    model = BIGRLite(variant=variant, levels=(4, 2), width=8, head_width=8, channels=3)
    with torch.no_grad():
        for h in model.heads:
            h.out.weight.normal_(0, 0.5)
    out = model(torch.rand(n, 1, 24, 20), (1.2, 1.0))
    assert out.field.shape == (n, 2, 24, 20)
    assert float(out.field.detach().abs().max()) > 1e-3
    assert torch.allclose(out.field.mean(0), torch.zeros(2, 24, 20), atol=1e-5)
    assert torch.isfinite(out.terms.elbo)
    out.terms.loss().backward()
    assert all(p.grad is not None for p in model.heads.parameters())
    assert model.generate(out.posterior.detach(), out.field.detach(), out.appearance, (1.2, 1.0)).shape == (n, 1, 24, 20)


def test_checkpoint_round_trip_and_wrong_config(tmp_path):
    model = BIGRLite(variant="CD", width=4, head_width=4, levels=(2,))
    path = save_checkpoint(model, tmp_path / "m.pt", {"command": "test"})
    again = load_checkpoint(path, config=model.config)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError, match="variant: checkpoint has 'CD', requested 'PN'"):
        load_checkpoint(path, config={"variant": "PN"})
    with pytest.raises(ValueError, match="unknown BIGRConfig keys"):
        load_checkpoint(path, config={"beta_z": 1.0})
    with pytest.raises(ValueError, match="variant"):
        BIGRConfig(variant="XD")


def _toy_slice(shift=0):
    y, x = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    disk = (((y - 12) ** 2 + (x - 11 - shift) ** 2) < 30).float()
    ring = ((((y - 12) ** 2 + (x - 11 - shift) ** 2) < 60).float() - disk)
    g = torch.Generator().manual_seed(shift)
    imgs = torch.stack([disk + 0.5 * ring, 1 - disk, 0.3 * disk + ring]).unsqueeze(1)
    imgs = imgs + 0.05 * torch.rand(3, 1, 24, 24, generator=g)
    from xreg_edu.group import ImageGroup
    lab = (disk + 2 * ring).long().expand(3, 1, 24, 24).clone()
    return ImageGroup(images=imgs, spacing=(2.0, 2.0), names=["a", "b", "c"], labels=lab)


def test_training_distils_then_trains_heads_on_the_elbo_with_a_frozen_encoder():
    from xreg_edu.vae.train import train

    slices = [_toy_slice(s) for s in (0, 2)]
    cfg = BIGRConfig(variant="CD", levels=(4,), width=4, head_width=4, channels=3, encoder="dilated")
    snap = {}

    def cb(step, rec):
        if step == 20:
            snap["enc"] = [p.detach().clone() for p in model_box[0].encoder.parameters()]

    model_box, orig = [], BIGRLite.__init__

    def spy(self, *a, **k):
        orig(self, *a, **k)
        model_box.append(self)

    BIGRLite.__init__ = spy
    try:
        model, hist = train(cfg, distill_steps=20, steps=8, batch=2, slices=slices, progress=False, callback=cb,
                            misalignment={"kind": "svf", "magnitude_mm": 3.0})
    finally:
        BIGRLite.__init__ = orig
    a = [h["loss"] for h in hist if h["stage"] == "A"]
    assert len(a) == 20 and a[-1] < a[0]                           # the distillation learns
    assert [h["stage"] for h in hist].count("B") == 8
    assert all(torch.equal(x, y) for x, y in zip(snap["enc"], model.encoder.parameters()))  # frozen in B
    assert any(float(h.out.weight.detach().abs().sum()) > 0 for h in model.heads)                    # heads learnt
    assert not model.training


# ------------------------------------------------------------------------------------------------ real held-out data
@pytest.fixture(scope="module")
def held_out():
    if not HAVE_DATA or not VARIANT_FILES["CD"].exists():
        pytest.skip("needs the data mirror and the committed weights")
    from xreg_edu.vae.data import heldout_groups

    return heldout_groups()


@pytest.mark.parametrize("variant", ["CD"])
def test_gate_truth_beats_identity_on_held_out_groups(held_out, variant):
    from xreg_edu.vae.inference import gate

    model = load_checkpoint(VARIANT_FILES[variant])
    rows = [gate(model, g, truth) for g, truth in held_out]
    wins = sum(r["truth"] > r["identity"] for r in rows) / len(rows)
    vs_model = sum(r["truth"] > r["model"] for r in rows) / len(rows)
    print(f"{variant}: truth > identity in {wins:.0%}, truth > model output in {vs_model:.0%} of {len(rows)} groups")
    assert len(rows) >= 30 and wins >= 0.9


@pytest.mark.parametrize("variant", [v for v, f in VARIANT_FILES.items() if f.exists()])
def test_shipped_weights_are_unsupervised(variant):
    meta = json.loads(VARIANT_FILES[variant].with_suffix(".json").read_text())
    assert meta["supervised_terms"] == [] and "No labels, no simulated field" in meta["objective"]
    assert "field-supervision" not in meta["command"] and meta["held_out"]["protocol"]["groups"] >= 30


def test_shipped_held_out_numbers_reproduce(held_out):
    from xreg_edu.evaluate import group_dice
    from xreg_edu.vae.inference import register

    path = VARIANT_FILES["CD"]
    meta = json.loads(path.with_suffix(".json").read_text())
    model = load_checkpoint(path)
    dice = [float(group_dice(register(model, g).warped_labels)) for g, _ in held_out]
    assert sum(dice) / len(dice) == pytest.approx(meta["held_out"]["dice"], abs=1e-3)


def test_diffeomorphic_variant_has_no_folding(held_out):
    from xreg_edu.evaluate import folding_percentage
    from xreg_edu.vae.data import make_group, split_slices
    from xreg_edu.vae.inference import register

    model = load_checkpoint(VARIANT_FILES["CD"])
    for i, s in enumerate(split_slices("myops_cmr", 64, "test")[:3]):
        group, _ = make_group(s, 12, seed=2000 + i)
        res = register(model, group)
        assert float(res.displacement.abs().max()) > 0.1
        assert float(folding_percentage(res.displacement, group.spacing).max()) == 0.0


def test_class_means_closed_form():
    from xreg_edu.vae.functional import class_means

    z = torch.tensor([[[[1.0, 0.0, 0.5]], [[0.0, 1.0, 0.5]]]])  # [1, 2, 1, 3]
    u = torch.tensor([[[[2.0, 4.0, 6.0]]]])
    assert torch.allclose(class_means(z, u, eps=0.0), torch.tensor([[(2 + 3) / 1.5, (4 + 3) / 1.5]]))
