"""Tests of xreg_edu.plotting and xreg_edu.widgets (both the static and the live form of sweep)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from xreg_edu import plotting, widgets
from xreg_edu.group import ImageGroup


def _visible_axes(fig):
    # colorbars are axes too; the sweep figures have none, the plotting helpers may
    return [ax for ax in fig.axes if ax.get_visible()]


def _group(n=3, size=24, labels=True):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, size, size, generator=g)
    lab = torch.zeros(n, 1, size, size, dtype=torch.int64)
    lab[:, :, 6:14, 6:14] = 1
    lab[:, :, 14:20, 10:18] = 2
    return ImageGroup(images=images, spacing=(1.0, 1.0), names=[f"m{j}" for j in range(n)],
                      labels=lab if labels else None, label_names={1: "a", 2: "b"})


# ---------------------------------------------------------------------------------------------------------- sweep
def test_static_sweep_draw_mode_panel_count(monkeypatch):
    monkeypatch.delenv("XREG_EDU_QUICK", raising=False)
    calls = []

    def run(ax, K, eta):
        calls.append((K, eta))
        ax.plot([0, 1], [K, eta])

    fig = widgets.sweep(run, {"K": [2, 3, 4, 5], "eta": [0.01, 0.1]}, static=True)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(_visible_axes(fig)) == 4 + 2
    # K varies with eta at its default (first value), then eta varies with K at its default
    assert calls == [(2, 0.01), (3, 0.01), (4, 0.01), (5, 0.01), (2, 0.01), (2, 0.1)]
    titles = [ax.get_title() for ax in _visible_axes(fig)]
    assert titles[0].startswith("K = 2") and titles[-1].startswith("eta = 0.1")


def test_static_sweep_return_mode_caches_and_counts(monkeypatch):
    monkeypatch.delenv("XREG_EDU_QUICK", raising=False)
    calls = []

    def run(N, bins):
        calls.append((N, bins))
        return {"image": np.full((8, 8), N), "curve": np.arange(bins), "mi": 0.5}

    fig = widgets.sweep(run, {"N": [2, 3, 4], "bins": [8, 16]}, defaults={"N": 3}, static=True)
    # 2 non-scalar outputs per run -> 2 panels per value; 3 + 2 values
    assert len(_visible_axes(fig)) == (3 + 2) * 2
    # (N=3, bins=8) is shared by both rows and computed once
    assert len(calls) == len(set(calls)) == 4
    assert "mi=0.5" in _visible_axes(fig)[0].get_title()


def test_static_sweep_quick_shrinks_grid_only(monkeypatch):
    monkeypatch.setenv("XREG_EDU_QUICK", "1")
    seen = []

    def run(ax, L):
        seen.append(L)
        ax.plot([0, 1], [0, L])

    fig = widgets.sweep(run, {"L": [4, 8, 16, 32, 64]}, defaults={"L": 16}, static=True)
    assert seen == [4, 16, 64]
    assert len(_visible_axes(fig)) == 3
    assert widgets.iterations(100, 5) == 5
    monkeypatch.setenv("XREG_EDU_QUICK", "0")
    assert widgets.iterations(100, 5) == 100


def test_static_sweep_multiple_panels_per_run(monkeypatch):
    monkeypatch.delenv("XREG_EDU_QUICK", raising=False)

    def run(axes, a):
        assert isinstance(axes, list) and len(axes) == 3
        for ax in axes:
            ax.plot([a, a])

    fig = widgets.sweep(run, {"a": [1, 2]}, panels=3, static=True)
    assert len(_visible_axes(fig)) == 6


def test_static_mode_from_environment(monkeypatch):
    monkeypatch.setenv("XREG_EDU_STATIC", "1")
    assert widgets.is_static()
    fig = widgets.sweep(lambda ax, x: ax.plot([x]), {"x": [1, 2]})
    assert isinstance(fig, matplotlib.figure.Figure)
    monkeypatch.setenv("XREG_EDU_STATIC", "0")
    # plain python (no IPython kernel) is static as well
    assert widgets.is_static()


def test_sweep_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        widgets.sweep(lambda ax: None, {}, static=True)
    with pytest.raises(ValueError, match="empty"):
        widgets.sweep(lambda ax, K: None, {"K": []}, static=True)
    with pytest.raises(ValueError, match="not one of"):
        widgets.sweep(lambda ax, K: None, {"K": [1, 2]}, defaults={"K": 7}, static=True)
    with pytest.raises(ValueError, match="unknown parameters"):
        widgets.sweep(lambda ax, K: None, {"K": [1, 2]}, defaults={"Q": 1}, static=True)
    with pytest.raises(TypeError, match="dict of arrays"):
        widgets.sweep(lambda K: K, {"K": [1, 2]}, static=True)


def test_live_sweep_builds_widgets_without_display(monkeypatch):
    W = pytest.importorskip("ipywidgets")
    monkeypatch.delenv("XREG_EDU_QUICK", raising=False)
    calls = []

    def run(ax, K, method):
        calls.append((K, method))
        ax.plot([0, K])

    box = widgets.sweep(run, {"K": [2, 4, 8], "method": ["xcoreg", "ape"]}, defaults={"K": 4}, static=False)
    assert isinstance(box, W.interactive)
    controls = {c.description: c for c in box.children if isinstance(c, (W.SelectionSlider, W.Dropdown))}
    assert isinstance(controls["K"], W.SelectionSlider) and controls["K"].value == 4
    assert isinstance(controls["method"], W.Dropdown) and controls["method"].value == "xcoreg"
    assert calls == [(4, "xcoreg")]            # ran once with the defaults when built
    controls["K"].value = 8                    # moving a slider re-runs
    assert calls[-1] == (8, "xcoreg")
    controls["method"].value = "ape"
    assert calls[-1] == (8, "ape")


def test_live_sweep_return_mode(monkeypatch):
    W = pytest.importorskip("ipywidgets")
    box = widgets.sweep(lambda N: {"img": np.eye(N), "tc": float(N)}, {"N": [2, 3]}, static=False)
    assert isinstance(box, W.interactive)
    assert box.result is None  # _update draws, returns nothing


# ------------------------------------------------------------------------------------------------------- plotting
def test_as_slice_shapes():
    assert plotting.as_slice(torch.zeros(1, 1, 5, 6)).shape == (5, 6)
    vol = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6)
    assert np.array_equal(plotting.as_slice(vol), vol[0, 2].numpy())
    assert np.array_equal(plotting.as_slice(vol, slice_index=1), vol[0, 1].numpy())
    with pytest.raises(ValueError, match="2-D"):
        plotting.as_slice(np.zeros((2, 3, 4, 5)))


def test_show_group_rows_and_legend():
    g = _group()
    fig = plotting.show_group(g)
    assert len(fig.axes) == 2 * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == ["m0", "m1", "m2"]
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]
    fig2 = plotting.show_group(g.images, names=list("abc"))
    assert len(fig2.axes) == 3
    with pytest.raises(ValueError, match="names"):
        plotting.show_group(g.images, names=["x"])
    with pytest.raises(ValueError, match="no label maps"):
        plotting.show_group(g.images, show_labels=True)


def test_show_group_3d_volume():
    images = torch.rand(2, 1, 6, 8, 8)
    fig = plotting.show_group(images)
    assert len(fig.axes) == 2
    assert fig.axes[0].get_images()[0].get_array().shape == (8, 8)


def test_checkerboard_known_answer():
    a, b = np.zeros((4, 4)), np.ones((4, 4))
    cb = plotting.checkerboard(a, b, tiles=2, normalize=False)
    assert np.array_equal(cb, np.array([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]))
    with pytest.raises(ValueError, match="same size"):
        plotting.checkerboard(np.zeros((4, 4)), np.zeros((4, 5)))


def test_show_registration_layout():
    g = _group()
    fig = plotting.show_registration(g, g.images.flip(-1))
    assert len(fig.axes) == 2 * (3 + 2)
    with pytest.raises(ValueError, match="images"):
        plotting.show_registration(g, g.images[:2])


def test_show_posterior_and_curves():
    post = torch.softmax(torch.randn(3, 10, 10), 0)
    fig = plotting.show_posterior(post, image=torch.rand(1, 1, 10, 10))
    assert len(fig.axes) == 4
    fig = plotting.plot_history({"loss": [3, 2, 1], "x_metric": torch.tensor([0.1, 0.2, 0.3]), "note": ["a"] * 3})
    assert len(fig.axes) == 2
    fig = plotting.plot_history([{"loss": 1.0}, {"loss": 0.5}])
    assert len(fig.axes) == 1
    with pytest.raises(KeyError, match="available"):
        plotting.plot_history({"loss": [1.0]}, keys=["nope"])
    fig = plotting.plot_curves([1, 2, 3], {"a": [1, 2, 3], "b": [3, 2, 1]}, logy=True)
    assert len(fig.axes[0].get_lines()) == 2


def test_plot_landscape_1d_2d_and_errors():
    x = np.linspace(-1, 1, 5)
    fig = plotting.plot_landscape(-x ** 2, x, mark=(0.0,))
    assert len(fig.axes) == 1
    y = np.linspace(-2, 2, 4)
    fig = plotting.plot_landscape(-(y[:, None] ** 2 + x[None] ** 2), x, y, mark=(0, 0))
    assert len(fig.axes) == 2  # plus the colorbar
    with pytest.raises(ValueError, match=r"\[len\(y\), len\(x\)\]"):
        plotting.plot_landscape(np.zeros((5, 4)), x, y)


def test_joint_histogram_and_graphical_model():
    fig = plotting.plot_joint_histogram(torch.rand(8, 8))
    assert len(fig.axes) == 2
    fig = plotting.plot_graphical_model(4)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "$Z$" in texts and "$U_{N}$" in texts
