"""Learning-based groupwise baselines (xreg_edu.vae.regnet): network contract, behavioural training tests, weights."""
from __future__ import annotations

import math

import pytest
import torch

from xreg_edu.group import ImageGroup
from xreg_edu.spatial import gaussian_smooth
from xreg_edu.vae import regnet as R
from xreg_edu.vae.data import make_group

#: per-class intensities of three simulated "sequences" (background, ring, inner disk, side blob): the contrasts
#: disagree, so only a multi-modal similarity can align them
CONTRASTS = ((0.1, 0.9, 0.4, 0.6), (0.8, 0.2, 0.9, 0.4), (0.3, 0.6, 0.1, 0.95))
MIS = {"kind": "rigid", "max_angle_deg": 0.0, "max_translation_mm": 3.0}


def phantom_slices(count: int, size: int = 32, seed: int = 0) -> list[ImageGroup]:
    """``count`` aligned 3-sequence phantom groups (simulated): a ring around a disk plus a blob, random
    centre/radii per group, blurred (sigma 1.5 px, a capture range for the similarities) plus noise 0.02;
    labels 1 ring, 2 disk, 3 blob."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    out = []
    for i in range(count):
        c = (torch.rand(2, generator=g) - 0.5) * size * 0.15
        r_in, r_out = size * (0.13 + 0.04 * float(torch.rand(1, generator=g))), size * 0.27
        r = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2).sqrt()
        lab = torch.zeros(size, size, dtype=torch.long)
        lab[r <= r_out] = 1
        lab[r <= r_in] = 2
        b = ((yy - c[0] + size * 0.3) ** 2 + (xx - c[1] - size * 0.05) ** 2).sqrt()
        lab[(b <= size * 0.09) & (r > r_out)] = 3
        imgs = gaussian_smooth(torch.stack([torch.tensor(t)[lab] for t in CONTRASTS])[:, None], 1.5)
        imgs = (imgs + 0.02 * torch.randn(imgs.shape, generator=g)).clamp(0, 1)
        out.append(ImageGroup(images=imgs, spacing=(1.0, 1.0), names=["A", "B", "C"],
                              labels=lab.expand(3, 1, size, size).clone(), meta={"phantom": i}))
    return out


def _tiny(loss: str) -> R.RegNetConfig:
    return R.RegNetConfig(loss=loss, widths=(8, 16, 16), lam=1.0)


def test_network_contract():
    net = R.GroupRegNet(R.RegNetConfig())
    assert 0.14e6 <= R.count_parameters(net) <= 0.16e6          # the talk's 0.154 M
    x = torch.rand(2, 3, 40, 36)
    v = net(x)
    assert v.shape == (2, 3, 2, 40, 36)
    assert torch.count_nonzero(v) == 0                            # zero-initialised output: identity at start
    torch.nn.init.normal_(net.out.weight, std=0.1)
    v = net(x)
    assert v.abs().max() > 0
    assert torch.allclose(v.sum(1), torch.zeros_like(v.sum(1)), atol=1e-5)   # zero group mean
    with pytest.raises(ValueError, match=r"images must be \[B, 3"):
        net(torch.rand(2, 4, 40, 36))
    with pytest.raises(ValueError, match="loss must be one of"):
        R.RegNetConfig(loss="mi")


@pytest.mark.parametrize("loss", R.LOSSES)
def test_similarity_prefers_the_true_correction(loss):
    """Known answer: on a misaligned phantom group each loss is lower at the true correction exp(-v) than at id."""
    group, mis = make_group(phantom_slices(1)[0], 3, seed=3, misalignment=MIS)
    cfg = _tiny(loss)
    from xreg_edu.groupwise.loop import warp_with_overlap

    def sim(points):
        warped, inside = warp_with_overlap(group.images, points, group.spacing)
        return float(R.similarity_loss(warped, inside, cfg, seed=0))

    ident = R.integrate(torch.zeros(3, 2, 32, 32), group.spacing)[0]
    assert sim(mis.correction()) < sim(ident) - 0.3


def _run(loss, freeze=False, steps=40):
    """Train a tiny network on a fixed set of 2 misaligned phantom groups; (Dice before, after, loss first, last)."""
    slices = phantom_slices(2)
    opts = R.TrainOptions(steps=steps, batch=2, lr=1e-2, seed=0, misalignment=MIS, pool=2)
    model, hist = R.train(_tiny(loss), slices, opts, freeze=freeze)
    pool = R._draw_specs(torch.Generator().manual_seed(opts.seed), len(slices), opts.pool)   # the training set
    groups = [make_group(slices[i], 3, seed=s, misalignment=MIS)[0] for i, s in pool]
    before = sum(R.evaluate_group(None, g)["dice"] for g in groups) / len(groups)
    after = sum(R.evaluate_group(model, g)["dice"] for g in groups) / len(groups)
    first = sum(r["similarity"] for r in hist[:5]) / 5
    last = sum(r["similarity"] for r in hist[-5:]) / 5
    return before, after, first, last


@pytest.mark.parametrize("loss", R.LOSSES)
def test_training_reduces_loss_and_improves_alignment(loss, one_thread_full_budget):
    before, after, first, last = _run(loss)
    assert last < first - 0.3, (first, last)
    assert after > before + 0.15, (before, after)


def test_training_fails_when_the_network_cannot_learn(one_thread_full_budget, monkeypatch):
    """Controls: frozen parameters leave the identity (Dice unchanged); a loss with its gradient cut teaches nothing."""
    before, after, _, _ = _run("ape", freeze=True, steps=5)
    assert after == pytest.approx(before, abs=1e-9)
    real = R.similarity_loss
    monkeypatch.setattr(R, "similarity_loss", lambda *a, **k: real(*a, **k).detach())
    before, after, first, last = _run("ape")
    assert after < before + 0.02 and last > first - 0.1, (before, after, first, last)


def test_weights_round_trip_and_sha256(tmp_path):
    net = R.GroupRegNet(_tiny("cte"))
    torch.nn.init.normal_(net.out.weight, std=0.1)
    path = R.save(net, tmp_path / "net.pt", {"command": "test", "note": "test"})
    back = R.load(path)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(back(x), net(x))
    assert back.config == net.config and back.meta["note"] == "test"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(Exception, match="sha256"):
        R.load(path)


@pytest.mark.parametrize("loss", R.LOSSES)
def test_committed_weights_load_and_declare_no_labels(loss):
    path = R.pretrained_path(loss)
    if not path.exists():
        pytest.fail(f"committed weights {path.name} missing")
    model = R.load(path)
    meta = model.meta
    assert meta["config"]["loss"] == loss and meta["labels_used"] is False
    assert math.isfinite(meta["train"]["last"]["loss"])
    assert "python -m xreg_edu.vae.regnet" in meta["command"]
