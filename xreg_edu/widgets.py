"""One call per chapter for a parameter sweep: live sliders in Jupyter/Colab, small multiples on the website.

``sweep(run, grid)`` runs an experiment for the parameter values in ``grid``:

* **live** (a Jupyter or Colab kernel with ipywidgets): one slider or dropdown per parameter; moving one re-runs
  ``run`` and redraws. Returns the ``ipywidgets.interactive`` box (displayed when it is the cell's last expression).
* **static** (env ``XREG_EDU_STATIC=1`` — ``make book`` sets it — or no ipywidgets, or no kernel): a precomputed
  small-multiples figure. Each parameter gets its own block of rows, one panel per value of that parameter with
  all other parameters at their defaults, so a reader sees each parameter's effect. Returns the ``Figure``
  (closed in pyplot, so it is shown once when it is the cell's last expression).

Under ``XREG_EDU_QUICK=1`` (CI, nbmake) the static grid keeps at most three values per parameter (first, default,
last); what ``run`` computes is never changed here — chapters shrink their iteration counts with :func:`iterations`.

``run`` can work in either of two ways:

1. **draw**: ``run(ax, **params)`` (or ``run(axes, **params)`` with ``panels > 1``) draws into matplotlib axes.
2. **return**: ``run(**params) -> dict`` of small arrays; each 2-D array becomes an image panel, each 1-D array a
   curve panel, each scalar is added to the panel titles. Results are cached, so the default configuration shared
   by all parameter rows is computed once.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ._env import env_flag, is_quick

__all__ = ["sweep", "is_quick", "is_static", "iterations", "small_multiples", "live_widget"]


def is_static() -> bool:
    """True when figures must be static: ``XREG_EDU_STATIC=1``, no ipywidgets, or not inside an IPython kernel."""
    if env_flag("XREG_EDU_STATIC"):
        return True
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return True
    try:
        from IPython import get_ipython
    except ImportError:
        return True
    shell = get_ipython()
    return shell is None or not hasattr(shell, "kernel")


def iterations(full: int, quick: int) -> int:
    """``quick`` under ``XREG_EDU_QUICK=1``, else ``full`` (an iteration count; never use it to change a method)."""
    return int(quick) if is_quick() else int(full)


# --------------------------------------------------------------------------------------------------------------
def _check_grid(grid: Mapping[str, Sequence[Any]], defaults: Mapping[str, Any] | None) -> tuple[dict, dict]:
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError("grid must be a non-empty mapping of parameter name -> list of values")
    clean = {}
    for name, values in grid.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"parameter name {name!r} must be a valid Python identifier")
        values = list(values)
        if not values:
            raise ValueError(f"grid[{name!r}] is empty; give at least one value")
        clean[name] = values
    defaults = dict(defaults or {})
    unknown = set(defaults) - set(clean)
    if unknown:
        raise ValueError(f"defaults for unknown parameters {sorted(unknown)}; grid has {sorted(clean)}")
    for name, values in clean.items():
        if name not in defaults:
            defaults[name] = values[0]
        elif defaults[name] not in values:
            raise ValueError(f"default {name}={defaults[name]!r} is not one of grid[{name!r}] = {values}")
    return clean, defaults


def _run_mode(run: Callable) -> str:
    try:
        params = list(inspect.signature(run).parameters)
    except (TypeError, ValueError):
        return "return"
    return "draw" if params and params[0] in ("ax", "axes") else "return"


def _quick_values(values: list, default: Any) -> list:
    if len(values) <= 3:
        return values
    keep = [values[0], default, values[-1]]
    return [v for i, v in enumerate(values) if v in keep and v not in values[:i]]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if hasattr(value, "item") and np.ndim(value) == 0:
        return f"{float(value):.3g}"
    return str(value)


def _as_array(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().to("cpu").float().numpy()
    return np.asarray(v)


def _split_result(result: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    if not isinstance(result, Mapping):
        raise TypeError(f"run(**params) must return a dict of arrays (or take `ax` first to draw), got "
                        f"{type(result).__name__}")
    panels, scalars = {}, {}
    for k, v in result.items():
        a = _as_array(v)
        while a.ndim > 2 and a.shape[0] == 1:
            a = a[0]
        if a.ndim == 0:
            scalars[k] = float(a)
        elif a.ndim in (1, 2):
            panels[k] = a
        elif a.ndim == 3:  # a volume: middle slice
            panels[k] = a[a.shape[0] // 2]
        else:
            raise ValueError(f"run result {k!r} has shape {a.shape}; return 0-, 1- or 2-D arrays")
    return panels, scalars


def _draw_result(axes: Sequence[Any], panels: Mapping[str, np.ndarray], scalars: Mapping[str, float],
                 label: str) -> None:
    extra = ", ".join(f"{k}={v:.3g}" for k, v in scalars.items())
    for i, (ax, (name, a)) in enumerate(zip(axes, panels.items())):
        if a.ndim == 2:
            ax.imshow(a, cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.plot(np.arange(len(a)), a)
            ax.grid(alpha=0.3)
        head = f"{label}\n{name}" if i == 0 else name
        if extra and i == 0:
            head += f"\n{extra}"
        ax.set_title(head, fontsize=9)


# --------------------------------------------------------------------------------------------------------------
def small_multiples(run: Callable, grid: Mapping[str, Sequence[Any]], *, defaults: Mapping[str, Any] | None = None,
                    panels: int = 1, quick: bool | None = None, panel_size: tuple[float, float] = (2.4, 2.3),
                    title: str | None = None):
    """The static form of :func:`sweep`: one panel (or ``panels`` panels) per value of each parameter.

    Args:
        run: ``run(ax, **params)`` / ``run(axes, **params)`` that draws, or ``run(**params) -> dict`` of arrays.
        grid: parameter name -> list of values, e.g. ``{"bins": [8, 16, 32, 64], "lr": [0.01, 0.1]}``.
        defaults: value of each parameter while another one varies (default: each list's first value).
        panels: axes per run in draw mode (``run`` gets a list of axes when > 1); inferred in return mode.
        quick: keep at most 3 values per parameter (default: :func:`is_quick`).

    Returns:
        The matplotlib Figure, closed in pyplot. Visible panels = Σ_p len(values_p) × panels.
    """
    import matplotlib.pyplot as plt

    grid, defaults = _check_grid(grid, defaults)
    quick = is_quick() if quick is None else quick
    if quick:
        grid = {k: _quick_values(v, defaults[k]) for k, v in grid.items()}
    mode = _run_mode(run)
    jobs = [(name, value, {**defaults, name: value}) for name, values in grid.items() for value in values]

    results: dict[tuple, tuple] = {}
    if mode == "return":
        for _, _, params in jobs:
            key = tuple(sorted((k, repr(v)) for k, v in params.items()))
            if key not in results:
                results[key] = _split_result(run(**params))
        panels = max(len(p) for p, _ in results.values())
        if panels == 0:
            raise ValueError("run returned only scalars; return at least one 1-D or 2-D array to draw")
    elif panels < 1:
        raise ValueError(f"panels must be >= 1, got {panels}")

    ncols = max(len(v) for v in grid.values())
    nrows = len(grid) * panels
    from .plotting import page_figsize

    fig, axes = plt.subplots(nrows, ncols, figsize=page_figsize(panel_size[0] * ncols, panel_size[1] * nrows + 0.4),
                             squeeze=False)
    row0 = 0
    for name, values in grid.items():
        for c in range(ncols):
            col_axes = [axes[row0 + p, c] for p in range(panels)]
            if c >= len(values):
                for ax in col_axes:
                    ax.set_visible(False)
                continue
            value = values[c]
            params = {**defaults, name: value}
            label = f"{name} = {_fmt(value)}"
            if mode == "draw":
                run(col_axes if panels > 1 else col_axes[0], **params)
                col_axes[0].set_title(label + (f"\n{col_axes[0].get_title()}" if col_axes[0].get_title() else ""),
                                      fontsize=9)
            else:
                key = tuple(sorted((k, repr(v)) for k, v in params.items()))
                p, s = results[key]
                _draw_result(col_axes, p, s, label)
                for ax in col_axes[len(p):]:
                    ax.set_visible(False)
        row0 += panels
    if title:
        fig.suptitle(title)
    if len(grid) > 1:
        others = ", ".join(f"{k}={_fmt(v)}" for k, v in defaults.items())
        fig.text(0.5, 0.002, f"each row block varies one parameter; the others stay at their defaults ({others})",
                 ha="center", va="bottom", fontsize=9, color="0.3")
    fig.tight_layout(rect=(0, 0.03 if len(grid) > 1 else 0, 1, 0.97 if title else 1))
    plt.close(fig)
    return fig


def live_widget(run: Callable, grid: Mapping[str, Sequence[Any]], *, defaults: Mapping[str, Any] | None = None,
                panels: int = 1, panel_size: tuple[float, float] = (3.2, 3.0), title: str | None = None):
    """The live form of :func:`sweep`: an ``ipywidgets.interactive`` box with one control per parameter.

    Numbers get a ``SelectionSlider`` over exactly the grid's values, anything else a ``Dropdown``. Changing a
    control (on release) re-runs ``run`` and redraws into a fresh figure inside the box's output area. The
    function runs once with the defaults when the box is built.

    Returns:
        The ``ipywidgets.interactive`` widget (not yet displayed).
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    grid, defaults = _check_grid(grid, defaults)
    mode = _run_mode(run)
    controls = {}
    for name, values in grid.items():
        numeric = all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)
        options = [(_fmt(v), v) for v in values]
        if numeric and len(values) > 1:
            controls[name] = W.SelectionSlider(options=options, value=defaults[name], description=name,
                                               continuous_update=False)
        else:
            controls[name] = W.Dropdown(options=options, value=defaults[name], description=name)

    def _update(**params):
        if mode == "draw":
            fig, axes = plt.subplots(1, panels, figsize=(panel_size[0] * panels, panel_size[1]), squeeze=False)
            run(list(axes[0]) if panels > 1 else axes[0, 0], **params)
        else:
            p, s = _split_result(run(**params))
            fig, axes = plt.subplots(1, max(len(p), 1), figsize=(panel_size[0] * max(len(p), 1), panel_size[1]),
                                     squeeze=False)
            _draw_result(list(axes[0]), p, s, ", ".join(f"{k} = {_fmt(v)}" for k, v in params.items()))
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        plt.show()

    return W.interactive(_update, **controls)


def sweep(run: Callable, grid: Mapping[str, Sequence[Any]], *, static: bool | None = None,
          defaults: Mapping[str, Any] | None = None, panels: int = 1, quick: bool | None = None,
          title: str | None = None, panel_size: tuple[float, float] | None = None):
    """Sweep the parameters in ``grid``: live controls in a kernel, small multiples on the static website.

    Args:
        run: either ``run(ax, **params)`` drawing into one matplotlib Axes (``run(axes, **params)`` with a list of
            ``panels`` axes), or ``run(**params) -> dict`` name -> 0-D/1-D/2-D array (scalars go to the titles,
            1-D arrays are drawn as curves, 2-D arrays as grey images).
        grid: parameter name -> list of values, e.g. ``{"N": [2, 3, 4, 6]}``.
        static: force the static (True) or live (False) form; default :func:`is_static`.
        defaults: each parameter's value while another varies (and the controls' start); default first values.
        panels: axes per run in draw mode.
        quick: shrink the static grid to ≤ 3 values per parameter (default :func:`is_quick`).
        title: figure title.
        panel_size: inches per panel.

    Returns:
        Static: the matplotlib ``Figure`` with Σ_p len(values_p) × panels visible panels. Live: the
        ``ipywidgets.interactive`` widget. Either is displayed once when it is the last expression of a cell.
    """
    static = is_static() if static is None else bool(static)
    if static:
        return small_multiples(run, grid, defaults=defaults, panels=panels, quick=quick, title=title,
                               panel_size=panel_size or (2.4, 2.3))
    return live_widget(run, grid, defaults=defaults, panels=panels, title=title,
                       panel_size=panel_size or (3.2, 3.0))
