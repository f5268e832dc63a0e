"""Baselines that can fail: accuracy of CTE, GMM, GMM-sym and CG on a real misaligned group, and the same checks
going red when the objective's gradient is zeroed (transforms then never follow the objective).

Group: open_ms patient07 T1/T2/FLAIR, one axial slice at 64 x 64 (2.9 mm), misaligned by seeded rigid transforms
(+-15 deg, +-12 mm, group mean zero) whose inverse is the answer. Measured (2-core shared CPU, seeds 0-3, engine of
2026-12-02): gRE before 6.2-9.8 mm; after CTE 0.16-0.28, GMM 0.14-0.27, GMM-sym 0.20-0.31, CG 0.42-0.65 mm; with the
gradient zeroed 2.4-5.7 mm (the engine's centroid start still moves translations; without it the gRE stays at the
start). Thresholds: 0.75 mm (CG: 1.5 mm), about 2.3x the worst measured success and below every broken run, and
always < 20 % of the start.
"""
from __future__ import annotations

import pytest
import torch

import xreg_edu as xr
from xreg_edu.evaluate import group_registration_error
from xreg_edu.groupwise import ObjectiveOptions, register_group
from xreg_edu.groupwise.objectives import CTE, GMM, Congealing
from xreg_edu.simulate import misalign

pytestmark = pytest.mark.usefixtures("one_thread_full_budget")

RIGID = dict(max_angle_deg=15.0, max_translation_mm=12.0)
BASELINES = {  # name -> (register_group keywords, objective class, gRE threshold in mm)
    "cte": (dict(method="cte"), CTE, 0.75),
    "gmm": (dict(method="gmm"), GMM, 0.75),
    "gmm_sym": (dict(method="gmm", objective=ObjectiveOptions(gmm_init="symmetric")), GMM, 0.75),
    "cg": (dict(method="cg"), Congealing, 1.5),
}


@pytest.fixture(scope="module")
def brain64():
    g = xr.load_dataset("open_ms", size=64, modalities=["T1", "T2", "FLAIR"])
    return g, g.images.mean(0)[0] > 0.02


def registered(result, mis, fg, threshold_mm: float) -> bool:
    """The accuracy check: gRE after < ``threshold_mm`` and < 20 % of the gRE before."""
    before = float(group_registration_error(mis.points, fg))
    after = float(group_registration_error(mis.true_points(result.points), fg))
    return after < threshold_mm and after < 0.2 * before


def zero_gradient(monkeypatch, cls) -> None:
    """Break an objective: same loss values (and model updates), gradient w.r.t. the warped images zeroed."""
    original = cls.step

    def step(self, sample):
        loss = original(self, sample)
        return loss.detach() + 0.0 * loss

    monkeypatch.setattr(cls, "step", step)


def _run(group, name, seed):
    obs, mis = misalign(group, "rigid", seed=seed, **RIGID)
    return register_group(obs, seed=seed, **BASELINES[name][0]), mis


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_recovers_a_known_misalignment(brain64, name):
    g, fg = brain64
    for seed in (0, 2):
        r, mis = _run(g, name, seed)
        after = float(group_registration_error(mis.true_points(r.points), fg))
        assert registered(r, mis, fg, BASELINES[name][2]), (name, seed, after)


@pytest.mark.parametrize("name", list(BASELINES))
def test_broken_objective_fails_the_same_check(brain64, name, monkeypatch):
    g, fg = brain64
    zero_gradient(monkeypatch, BASELINES[name][1])
    r, mis = _run(g, name, 0)
    assert not registered(r, mis, fg, BASELINES[name][2])


def test_loss_decrease_comes_from_the_transforms(brain64, monkeypatch):
    """GMM's loss falls even with frozen transforms (its EM refits the mixture: 2.95 -> -0.86 measured), so "the
    loss decreases" proves nothing; the registered run must end clearly below the frozen run (-1.91 measured)."""
    g, _ = brain64
    for name in ("gmm", "cte", "cg"):
        r, _ = _run(g, name, 0)
        with monkeypatch.context() as mp:
            zero_gradient(mp, BASELINES[name][1])
            frozen, _ = _run(g, name, 0)
        span = abs(frozen.history[0] - frozen.history[-1]) + abs(r.history[0] - r.history[-1])
        assert r.history[-1] < frozen.history[-1] - 0.1 * span, (name, r.history[-1], frozen.history[-1])
