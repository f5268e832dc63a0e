"""Hostile inputs and faults (issue 13): one row per case, each must give a clear, specific error.

Add a case by appending ``pytest.param(call, ExpectedError, "message regex", id="itemN-what")`` to ``CASES``:
``call`` is a zero-argument function (it may build its inputs itself, e.g. from the ``Ctx`` fixtures passed to it
when it takes one argument). Cases that need more than "raises with this message" (partial files, exit codes,
printed text) are the functions further down, still one per issue-13 item.
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch

import xreg_edu as xr


def _rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g).to(dtype)


CASES: list = []

# ---- info / evaluate / datasets / io (H3) ----

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


@pytest.mark.parametrize("call, error, message", CASES)
def test_hostile_input_gives_a_clear_error(call, error, message, tmp_path):
    with pytest.raises(error, match=message):
        call(tmp_path) if inspect.signature(call).parameters else call()


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
