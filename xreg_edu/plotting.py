"""Small matplotlib helpers the chapters share.

Every function takes tensors or arrays in the library's layouts (``[N, 1, *S]`` groups, ``[K, *S]`` posteriors),
reduces 3-D volumes to their middle slice along the first spatial axis (or ``slice_index``), and returns the
matplotlib ``Figure`` it drew into (or that of the ``ax`` it was given). Matplotlib is imported inside the
functions, so ``import xreg_edu`` stays cheap.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ._env import PAGE_WIDTH

__all__ = [
    "as_slice",
    "checkerboard",
    "label_colors",
    "page_figsize",
    "plot_curves",
    "plot_graphical_model",
    "plot_history",
    "plot_joint_histogram",
    "plot_landscape",
    "show_checkerboard",
    "show_group",
    "show_images",
    "show_posterior",
    "show_registration",
]


# --------------------------------------------------------------------------------------------------------------
# array helpers
# --------------------------------------------------------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor on any device
        x = x.detach().to("cpu")
        if x.is_floating_point() and x.element_size() < 4:  # half / bfloat16 have no numpy twin
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def as_slice(x: Any, slice_index: int | None = None) -> np.ndarray:
    """One 2-D image from an image, channel-first image or volume.

    Args:
        x: ``[H, W]``, ``[1, H, W]``, ``[1, 1, H, W]``, ``[D, H, W]``, ``[1, D, H, W]`` or ``[1, 1, D, H, W]``
            tensor or array.
        slice_index: index along the first spatial axis of a volume; default the middle slice.

    Returns:
        ``[H, W]`` numpy array.
    """
    a = _to_numpy(x)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        a = a[a.shape[0] // 2 if slice_index is None else slice_index]
    if a.ndim != 2:
        raise ValueError(f"cannot reduce an array of shape {tuple(_to_numpy(x).shape)} to one 2-D image")
    return a


def _group_parts(group_or_images: Any, labels: Any = None, names: Sequence[str] | None = None):
    """(list of images, list of label maps or None, names) from an ImageGroup, a tensor or a list."""
    if hasattr(group_or_images, "images") and hasattr(group_or_images, "names"):  # ImageGroup
        g = group_or_images
        images = list(g.images)
        if labels is None and getattr(g, "labels", None) is not None:
            labels = g.labels
        names = list(g.names) if names is None else names
    elif isinstance(group_or_images, (list, tuple)):
        images = list(group_or_images)
    else:
        arr = group_or_images
        if getattr(arr, "ndim", 0) == 2:
            arr = arr[None]
        images = list(arr)
    if labels is not None and not isinstance(labels, (list, tuple)):
        labels = list(labels) if getattr(labels, "ndim", 0) > 2 else [labels] * len(images)
    if names is None:
        names = [f"image {j}" for j in range(len(images))]
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} label maps for {len(images)} images")
    return images, labels, list(names)


def _robust_limits(img: np.ndarray, lo: float = 0.5, hi: float = 99.5) -> tuple[float, float]:
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(finite, [lo, hi])
    if vmax <= vmin:
        vmax = vmin + 1.0
    return float(vmin), float(vmax)


def label_colors(n: int):
    """``n`` distinct RGBA colours for label classes 1..n (tab10, then tab20)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _draw_image(ax, img: np.ndarray, *, cmap="gray", robust=True, title=None, vmin=None, vmax=None):
    if robust and vmin is None and vmax is None:
        vmin, vmax = _robust_limits(img)
    ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def _draw_contours(ax, lab: np.ndarray, classes: Sequence[int] | None = None, linewidth: float = 0.8,
                   colors=None):
    lab = np.asarray(lab)
    if classes is None:
        classes = [int(c) for c in np.unique(lab) if c != 0]
    colors = label_colors(max(len(classes), 1)) if colors is None else colors
    for i, c in enumerate(classes):
        m = (lab == c).astype(float)
        if m.any() and not m.all():
            ax.contour(m, levels=[0.5], colors=[colors[i % len(colors)]], linewidths=linewidth)
    return classes


def page_figsize(width: float, height: float) -> tuple[float, float]:
    """``(width, height)`` in inches, shrunk (aspect kept) to at most ``xreg_edu._env.PAGE_WIDTH`` inches wide, so that the
    website never scales the figure down and its fonts keep their size in points."""
    scale = min(1.0, PAGE_WIDTH / width)
    return width * scale, height * scale


def _new_figure(nrows: int, ncols: int, panel: tuple[float, float] = (2.2, 2.2), figsize=None, **kw):
    import matplotlib.pyplot as plt

    figsize = figsize or page_figsize(panel[0] * ncols, panel[1] * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, **kw)
    return fig, axes


# --------------------------------------------------------------------------------------------------------------
# groups and registrations
# --------------------------------------------------------------------------------------------------------------
def show_images(images: Sequence[Any], titles: Sequence[str] | None = None, *, ncols: int | None = None,
                cmap: str | Sequence[str] = "gray", robust: bool = True, slice_index: int | None = None,
                figsize=None, suptitle: str | None = None):
    """Any list of 2-D images (or volumes, middle slice) in a grid.

    Args:
        images: sequence of ``[H, W]`` / ``[1, H, W]`` / ``[1, D, H, W]`` tensors or arrays.
        titles: one title per image.
        ncols: columns of the grid (default: all in one row, up to 6).
        cmap: one colormap for all, or one per image.

    Returns:
        The matplotlib Figure.
    """
    images = list(images)
    n = len(images)
    if n == 0:
        raise ValueError("show_images needs at least one image")
    ncols = ncols or min(n, 6)
    nrows = int(np.ceil(n / ncols))
    fig, axes = _new_figure(nrows, ncols, figsize=figsize)
    cmaps = [cmap] * n if isinstance(cmap, str) else list(cmap)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        _draw_image(ax, as_slice(images[i], slice_index), cmap=cmaps[i], robust=robust,
                    title=None if titles is None else titles[i])
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_group(group_or_images: Any, labels: Any = None, names: Sequence[str] | None = None, *,
               slice_index: int | None = None, show_labels: bool | None = None, classes: Sequence[int] | None = None,
               label_names: Mapping[int, str] | None = None, title: str | None = None, figsize=None,
               panel: tuple[float, float] = (2.2, 2.2)):
    """Montage of the N images of a group, with an optional second row of label contours.

    Args:
        group_or_images: an ``ImageGroup``, a ``[N, 1, *S]`` tensor/array, or a list of N images.
        labels: ``[N, 1, *S]`` int label maps (default: the group's labels); one ``[*S]`` map is shared by all.
        names: N titles (default: the group's names).
        slice_index: slice of 3-D volumes along the first spatial axis (default: middle).
        show_labels: draw the contour row (default: when labels are available).
        classes: label values to outline (default: every non-zero value present).
        label_names: label value -> structure name, for the legend (default: the group's ``label_names``).

    Returns:
        The Figure: row 1 the images, row 2 (optional) each image with its label contours.
    """
    images, labels, names = _group_parts(group_or_images, labels, names)
    if label_names is None:
        label_names = getattr(group_or_images, "label_names", None)
    show_labels = labels is not None if show_labels is None else show_labels
    if show_labels and labels is None:
        raise ValueError("show_labels=True but no label maps were given")
    n = len(images)
    nrows = 2 if show_labels else 1
    fig, axes = _new_figure(nrows, n, panel=panel, figsize=figsize)
    slices = [as_slice(im, slice_index) for im in images]
    for j in range(n):
        _draw_image(axes[0, j], slices[j], title=names[j])
    if show_labels:
        lab_slices = [as_slice(lab, slice_index) for lab in labels]
        if classes is None:
            classes = sorted({int(c) for lab in lab_slices for c in np.unique(lab) if c != 0})
        colors = label_colors(max(len(classes), 1))
        for j in range(n):
            _draw_image(axes[1, j], slices[j])
            _draw_contours(axes[1, j], lab_slices[j], classes, colors=colors)
        axes[1, 0].set_ylabel("labels", fontsize=9)
        if classes:
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], color=colors[i], lw=2,
                              label=(label_names or {}).get(c, str(c))) for i, c in enumerate(classes[:20])]
            fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 if show_labels and classes else 0, 1, 1))
    return fig


def checkerboard(a: Any, b: Any, tiles: int = 8, *, normalize: bool = True,
                 slice_index: int | None = None) -> np.ndarray:
    """Interleave two images in a checkerboard, the classic visual check of alignment.

    Args:
        a, b: two images of the same 2-D size (``[H, W]``, ``[1, H, W]``, ``[1, 1, H, W]`` or volumes).
        tiles: number of tiles along each axis.
        normalize: rescale each image to its own [0.5, 99.5] percentile range first (needed across modalities).

    Returns:
        ``[H, W]`` float array: ``a`` on the even tiles, ``b`` on the odd ones.
    """
    a2, b2 = as_slice(a, slice_index).astype(np.float64), as_slice(b, slice_index).astype(np.float64)
    if a2.shape != b2.shape:
        raise ValueError(f"checkerboard needs images of the same size, got {a2.shape} and {b2.shape}")
    if tiles < 1:
        raise ValueError(f"tiles must be >= 1, got {tiles}")
    if normalize:
        a2, b2 = [np.clip((x - lo) / (hi - lo), 0, 1) for x, (lo, hi) in
                  ((a2, _robust_limits(a2)), (b2, _robust_limits(b2)))]
    h, w = a2.shape
    ti = (np.arange(h) * tiles // h)[:, None]
    tj = (np.arange(w) * tiles // w)[None, :]
    return np.where((ti + tj) % 2 == 0, a2, b2)


def show_checkerboard(a: Any, b: Any, tiles: int = 8, *, ax=None, title: str | None = None):
    """Draw :func:`checkerboard` (``a``, ``b``) into ``ax`` (or a new figure); returns the Figure."""
    if ax is None:
        fig, axes = _new_figure(1, 1, panel=(3.2, 3.2))
        ax = axes[0, 0]
    _draw_image(ax, checkerboard(a, b, tiles), robust=False, title=title, vmin=0, vmax=1)
    return ax.figure


def show_registration(before: Any, after: Any, *, labels_before: Any = None, labels_after: Any = None,
                      names: Sequence[str] | None = None, reference: int = 0, slice_index: int | None = None,
                      titles: tuple[str, str] = ("before", "after"), figsize=None):
    """A group before and after registration, row by row.

    Each row shows the N images, the contours of image ``reference``'s labels drawn on every image (when label maps
    are given) — aligned anatomy keeps the contours on the same structures — and, in the last two columns, the
    group mean of the per-image normalised intensities (sharp when aligned, blurred when not) and a checkerboard of
    image ``reference`` against image ``reference + 1``.

    Args:
        before, after: ``ImageGroup`` or ``[N, 1, *S]`` tensors/arrays (same N).
        labels_before, labels_after: optional ``[N, 1, *S]`` label maps (default: the groups' labels).
        names: N image titles (default: the group's names).

    Returns:
        The Figure (2 rows, N + 2 columns).
    """
    ims_b, lab_b, names_b = _group_parts(before, labels_before, names)
    ims_a, lab_a, _ = _group_parts(after, labels_after, names_b)
    n = len(ims_b)
    if len(ims_a) != n:
        raise ValueError(f"before has {n} images, after has {len(ims_a)}")
    if n < 2:
        raise ValueError("show_registration needs a group of at least 2 images")
    fig, axes = _new_figure(2, n + 2, figsize=figsize)
    for r, (ims, labs, row_title) in enumerate(((ims_b, lab_b, titles[0]), (ims_a, lab_a, titles[1]))):
        slices = [as_slice(im, slice_index) for im in ims]
        normed = []
        for j in range(n):
            _draw_image(axes[r, j], slices[j], title=names_b[j] if r == 0 else None)
            lo, hi = _robust_limits(slices[j])
            normed.append(np.clip((slices[j] - lo) / (hi - lo), 0, 1))
        if labs is not None:
            ref_lab = as_slice(labs[reference], slice_index)
            for j in range(n):
                _draw_contours(axes[r, j], ref_lab)
        _draw_image(axes[r, n], np.mean(normed, axis=0), robust=False, vmin=0, vmax=1,
                    title="group mean" if r == 0 else None)
        other = (reference + 1) % n
        _draw_image(axes[r, n + 1], checkerboard(slices[reference], slices[other]), robust=False, vmin=0, vmax=1,
                    title=f"checkerboard {reference}/{other}" if r == 0 else None)
        axes[r, 0].set_ylabel(row_title, fontsize=10)
    fig.tight_layout()
    return fig


def show_posterior(posterior: Any, *, image: Any = None, class_names: Sequence[str] | None = None,
                   slice_index: int | None = None, ax_row=None, figsize=None):
    """The K class maps of a posterior γ and its arg-max segmentation.

    Args:
        posterior: ``[K, *S]`` or ``[1, K, *S]`` probabilities (each voxel sums to 1).
        image: optional ``[*S]``/``[1, 1, *S]`` image drawn under the arg-max map.
        class_names: K names (default ``"k = 0"``...).
        ax_row: optional sequence of K + 1 axes to draw into.

    Returns:
        The Figure: K panels of γ_k in [0, 1], then the arg-max label map.
    """
    p = _to_numpy(posterior)
    if p.ndim >= 4 and p.shape[0] == 1:
        p = p[0]
    k = p.shape[0]
    maps = [as_slice(p[i], slice_index) for i in range(k)]
    names = list(class_names) if class_names is not None else [f"$\\gamma_{{{i}}}$" for i in range(k)]
    if ax_row is None:
        fig, axes = _new_figure(1, k + 1, figsize=figsize)
        ax_row = list(axes[0])
    fig = ax_row[0].figure
    for i in range(k):
        ax_row[i].imshow(maps[i], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        ax_row[i].set_xticks([])
        ax_row[i].set_yticks([])
        ax_row[i].set_title(names[i], fontsize=9)
    seg = np.argmax(np.stack(maps), axis=0)
    axl = ax_row[k]
    if image is not None:
        _draw_image(axl, as_slice(image, slice_index))
        axl.imshow(np.ma.masked_equal(seg, 0), cmap="tab10", vmin=0, vmax=9, alpha=0.45, interpolation="nearest")
    else:
        axl.imshow(seg, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    axl.set_xticks([])
    axl.set_yticks([])
    axl.set_title("arg max", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------------------
# curves, landscapes, histograms
# --------------------------------------------------------------------------------------------------------------
def _history_series(history: Any) -> dict[str, np.ndarray]:
    if isinstance(history, Mapping):
        out = {}
        for k, v in history.items():
            try:
                arr = np.asarray([float(_to_numpy(x)) for x in v], dtype=float)
            except (TypeError, ValueError):
                continue  # skip non-numeric entries (e.g. snapshots)
            if arr.ndim == 1 and arr.size:
                out[str(k)] = arr
        return out
    seq = list(history)
    if seq and isinstance(seq[0], Mapping):
        keys = [k for k in seq[0] if np.ndim(_to_numpy(seq[0][k])) == 0]
        return {str(k): np.asarray([float(_to_numpy(row[k])) for row in seq]) for k in keys}
    return {"value": np.asarray([float(_to_numpy(x)) for x in seq], dtype=float)}


def plot_history(history: Any, keys: Sequence[str] | None = None, *, ax=None, separate: bool = True,
                 xlabel: str = "iteration", title: str | None = None):
    """Objective curves of an optimisation.

    Args:
        history: a dict of name -> sequence of numbers, a list of per-iteration dicts, or one sequence of numbers.
        keys: which series to draw (default: all numeric ones).
        ax: draw all series into this axes (implies ``separate=False``).
        separate: one small panel per series (they often have different scales).

    Returns:
        The Figure.
    """
    series = _history_series(history)
    if keys is not None:
        missing = [k for k in keys if k not in series]
        if missing:
            raise KeyError(f"history has no numeric series {missing}; available: {sorted(series)}")
        series = {k: series[k] for k in keys}
    if not series:
        raise ValueError("history holds no numeric series to plot")
    if ax is not None or not separate or len(series) == 1:
        if ax is None:
            fig, axes = _new_figure(1, 1, panel=(4.5, 3.0))
            ax = axes[0, 0]
        for k, v in series.items():
            ax.plot(np.arange(len(v)), v, label=k)
        ax.set_xlabel(xlabel)
        if len(series) > 1:
            ax.legend(fontsize=9)
        else:
            ax.set_ylabel(next(iter(series)))
        if title:
            ax.set_title(title)
        ax.figure.tight_layout()
        return ax.figure
    fig, axes = _new_figure(1, len(series), panel=(3.4, 2.8))
    for a, (k, v) in zip(axes[0], series.items()):
        a.plot(np.arange(len(v)), v)
        a.set_title(k, fontsize=9)
        a.set_xlabel(xlabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(x: Any, curves: Mapping[str, Any], *, xlabel: str = "", ylabel: str = "", ax=None,
                logx: bool = False, logy: bool = False, marker: str = "o", title: str | None = None,
                errors: Mapping[str, Any] | None = None):
    """Several named curves y(x) on one axes (e.g. run time versus N for each method).

    Args:
        x: ``[T]`` x values shared by all curves.
        curves: name -> ``[T]`` y values.
        errors: optional name -> ``[T]`` half-widths, drawn as error bars.

    Returns:
        The Figure.
    """
    if ax is None:
        fig, axes = _new_figure(1, 1, panel=(4.5, 3.2))
        ax = axes[0, 0]
    xs = _to_numpy(x).astype(float)
    for name, y in curves.items():
        ys = _to_numpy(y).astype(float)
        if errors is not None and name in errors:
            ax.errorbar(xs, ys, yerr=_to_numpy(errors[name]).astype(float), marker=marker, label=name, capsize=3)
        else:
            ax.plot(xs, ys, marker=marker, label=name)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(curves) > 1:
        ax.legend(fontsize=9)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure


def plot_landscape(values: Any, x: Any, y: Any = None, *, xlabel: str = "", ylabel: str = "",
                   zlabel: str = "", ax=None, mark: Sequence[float] | None = None, title: str | None = None,
                   cmap: str = "viridis"):
    """An objective as a function of one or two transformation parameters.

    Args:
        values: ``[T]`` for a 1-D profile, or ``[len(y), len(x)]`` for a 2-D landscape (rows follow ``y``).
        x: ``[T]`` (or ``[len(x)]``) parameter values along the horizontal axis.
        y: ``[len(y)]`` parameter values along the vertical axis (2-D only).
        mark: a point to mark, e.g. the true optimum: ``(x0,)`` in 1-D, ``(x0, y0)`` in 2-D.

    Returns:
        The Figure.
    """
    v = _to_numpy(values).astype(float)
    xs = _to_numpy(x).astype(float)
    if ax is None:
        fig, axes = _new_figure(1, 1, panel=(4.2, 3.4))
        ax = axes[0, 0]
    if v.ndim == 1:
        if v.shape[0] != xs.shape[0]:
            raise ValueError(f"values {v.shape} and x {xs.shape} differ in length")
        ax.plot(xs, v, "-o", ms=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(zlabel)
        if mark is not None:
            ax.axvline(float(mark[0]), color="k", ls="--", lw=1)
        ax.grid(alpha=0.3)
    elif v.ndim == 2:
        if y is None:
            raise ValueError("a 2-D landscape needs y")
        ys = _to_numpy(y).astype(float)
        if v.shape != (ys.shape[0], xs.shape[0]):
            raise ValueError(f"values {v.shape} must be [len(y), len(x)] = {(ys.shape[0], xs.shape[0])}")
        im = ax.pcolormesh(xs, ys, v, shading="nearest", cmap=cmap)
        ax.contour(xs, ys, v, levels=8, colors="w", linewidths=0.5, alpha=0.6)
        ax.figure.colorbar(im, ax=ax, label=zlabel)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        iy, ix = np.unravel_index(np.argmax(v), v.shape)
        ax.plot(xs[ix], ys[iy], "r+", ms=10, mew=2, label="maximum")
        if mark is not None:
            ax.plot(float(mark[0]), float(mark[1]), "kx", ms=8, mew=2, label="truth")
        ax.legend(fontsize=9, loc="upper right")
    else:
        raise ValueError(f"values must be 1-D or 2-D, got shape {v.shape}")
    if title:
        ax.set_title(title)
    ax.figure.tight_layout()
    return ax.figure


def plot_joint_histogram(hist: Any, *, ax=None, log: bool = True, xlabel: str = "bin of image 2",
                         ylabel: str = "bin of image 1", title: str | None = None):
    """A joint histogram ``[L1, L2]`` (counts or probabilities) as an image, log-scaled by default."""
    h = _to_numpy(hist).astype(float)
    if h.ndim != 2:
        raise ValueError(f"joint histogram must be 2-D, got shape {h.shape}")
    if ax is None:
        fig, axes = _new_figure(1, 1, panel=(3.4, 3.2))
        ax = axes[0, 0]
    p = h / max(h.sum(), 1e-12)
    img = np.log10(p + 1e-6) if log else p
    im = ax.imshow(img, origin="lower", cmap="inferno", interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, label="log10 p" if log else "p")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    return ax.figure


def plot_graphical_model(num_images: int = 3, *, ax=None, latent: str = "Z", observed: str = "U",
                         transform: str | None = r"\phi", title: str | None = None):
    """The directed graphical model of eq. 3: a latent anatomy Z generating N conditionally independent images.

    Args:
        num_images: how many image nodes to draw (a plate labelled N is drawn around them).
        transform: name of the per-image transformation node (``None`` to omit it).

    Returns:
        The Figure.
    """
    from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

    if ax is None:
        fig, axes = _new_figure(1, 1, panel=(max(3.0, 1.4 * num_images + 1.2), 3.2))
        ax = axes[0, 0]
    n = max(int(num_images), 1)
    xs = np.linspace(0.15, 0.85, n) if n > 1 else np.array([0.5])
    r = 0.07

    def node(xy, text, shaded):
        ax.add_patch(Circle(xy, r, facecolor="0.85" if shaded else "white", edgecolor="k", lw=1.2, zorder=3))
        ax.text(xy[0], xy[1], f"${text}$", ha="center", va="center", fontsize=12, zorder=4)

    def arrow(a, b):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, lw=1.1, shrinkA=18, shrinkB=18,
                                     zorder=2))

    z = (0.5, 0.8)
    node(z, latent, False)
    for j, x0 in enumerate(xs):
        u = (x0, 0.3)
        node(u, f"{observed}_{{{j + 1 if j < n - 1 or n < 4 else 'N'}}}", True)
        arrow(z, u)
        if transform:
            t = (x0 + 0.11, 0.55)
            ax.text(*t, f"${transform}_{{{j + 1 if j < n - 1 or n < 4 else 'N'}}}$", fontsize=10, ha="center")
            arrow((t[0], t[1] - 0.02), u)
    ax.add_patch(FancyBboxPatch((0.05, 0.12), 0.9, 0.33, boxstyle="round,pad=0.01", fill=False, lw=0.8, ls="--"))
    ax.text(0.93, 0.14, r"$j = 1..N$", ha="right", va="bottom", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0.05, 0.95)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax.figure
