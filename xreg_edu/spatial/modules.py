"""Thin ``nn.Module`` layer: batched transforms of a group, initialised at the identity.

Every module keeps raw parameters ``[N, ...]`` and re-centres them in ``forward`` (``params - mean``), so the
common space is always the group mean. ``forward(grid [1, d, *S]) -> points [N, d, *S]`` (mm, common -> image j).
Grids of another resolution spanning the same extent (pyramid levels) are accepted by every module.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validate import as_spacing, check_vector_field
from .bspline import bspline_basis, ffd_control_shape, ffd_from_bases
from .constraint import recentre
from .energy import bending_energy, membrane_energy
from .flow import compose_displacements, svf_exp
from .grid import axis_coordinates, grid_spacing
from .linear import affine_matrix, apply_matrix, compose_matrices, rigid_matrix


def _check_grid(grid: Tensor, dim: int) -> None:
    if check_vector_field(grid, "grid") != dim:
        raise ValueError(f"a {dim}-D transform needs a {dim}-D grid, got {tuple(grid.shape)}")


def _energy(field: Tensor, kind: str) -> Tensor:
    if kind == "bending":
        return bending_energy(field)
    if kind == "membrane":
        return membrane_energy(field)
    raise ValueError(f"regularization kind must be 'bending' or 'membrane', got {kind!r}")


def _resample_field(field: Tensor, shape: Sequence[int]) -> Tensor:
    """Same-extent (align_corners=True) linear resampling of ``[N, d, *S]`` to ``shape``."""
    if tuple(field.shape[2:]) == tuple(shape):
        return field
    mode = "bilinear" if field.dim() == 4 else "trilinear"
    return F.interpolate(field, size=tuple(shape), mode=mode, align_corners=True)


class SpatialTransform(nn.Module):
    """Base class: ``forward(grid) -> points``; ``displacement(grid) = forward(grid) - grid``."""

    is_linear = False

    def __init__(self, num_images: int, dim: int):
        super().__init__()
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim!r}")
        self.num_images, self.dim = num_images, dim

    def displacement(self, grid: Tensor) -> Tensor:
        """``[1, d, *S]`` -> ``[N, d, *S]`` mm."""
        return self(grid) - grid

    def regularization(self, kind: str = "bending") -> Tensor:
        """Smoothness penalty of the (re-centred) raw parameters; 0 for linear transforms."""
        p = next(self.parameters())
        return torch.zeros((), device=p.device, dtype=p.dtype)


class _LinearTransform(SpatialTransform):
    is_linear = True

    def matrix(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, grid: Tensor) -> Tensor:
        """``[1, d, *S]`` -> ``[N, d, *S]``: ``A_j x + t_j``."""
        _check_grid(grid, self.dim)
        return apply_matrix(self.matrix(), grid.to(self.params.dtype))


class RigidTransform(_LinearTransform):
    """Rigid transforms, params ``[N, 3]`` (2-D) or ``[N, 6]`` (3-D), see :func:`rigid_matrix`."""

    def __init__(self, num_images: int, dim: int = 2):
        super().__init__(num_images, dim)
        self.params = nn.Parameter(torch.zeros(num_images, 3 if dim == 2 else 6))

    def matrix(self) -> Tensor:
        """``[N, d, d+1]`` from the re-centred parameters (mean angle and mean translation 0)."""
        return rigid_matrix(recentre(self.params))


class AffineTransform(_LinearTransform):
    """Affine transforms, params ``[N, d, d+1]`` = offsets from ``[I | 0]``."""

    def __init__(self, num_images: int, dim: int = 2):
        super().__init__(num_images, dim)
        self.params = nn.Parameter(torch.zeros(num_images, dim, dim + 1))

    def matrix(self) -> Tensor:
        """``[N, d, d+1]`` whose group mean is ``[I | 0]``."""
        return affine_matrix(recentre(self.params))


class FFDTransform(SpatialTransform):
    """Cubic B-spline FFD; control points ``[N, d, *Sc]`` mm (centred lattice, see :mod:`.bspline`)."""

    def __init__(self, num_images: int, shape: Sequence[int], spacing: Sequence[float] | float,
                 control_spacing: Sequence[float] | float):
        super().__init__(num_images, len(shape))
        self.shape = tuple(int(n) for n in shape)
        self.spacing = as_spacing(spacing, self.dim)
        self.control_spacing = as_spacing(control_spacing, self.dim)
        self.control_shape = ffd_control_shape(self.shape, self.spacing, self.control_spacing)
        self.params = nn.Parameter(torch.zeros(num_images, self.dim, *self.control_shape))
        self._bases: dict = {}

    def _basis(self, grid: Tensor) -> list[Tensor]:
        key = (tuple(grid.shape[2:]), grid.device, grid.dtype)
        if key not in self._bases:
            coords = axis_coordinates(grid.detach())
            self._bases = {key: [bspline_basis(c, m, dl)
                                 for c, m, dl in zip(coords, self.control_shape, self.control_spacing)]}
        return self._bases[key]

    def displacement(self, grid: Tensor) -> Tensor:
        """``[1, d, *S]`` -> ``[N, d, *S]`` mm (dense displacement of the re-centred control points)."""
        _check_grid(grid, self.dim)
        return ffd_from_bases(recentre(self.params), self._basis(grid))

    def forward(self, grid: Tensor) -> Tensor:
        return grid + self.displacement(grid)

    def regularization(self, kind: str = "bending") -> Tensor:
        """Energy of the control-point grid (unit steps), summed over the group (spec §7.4)."""
        return _energy(recentre(self.params), kind)


class DisplacementTransform(SpatialTransform):
    """Dense displacement field (DDF) ``[N, d, *S]`` mm, one vector per voxel."""

    def __init__(self, num_images: int, shape: Sequence[int], spacing: Sequence[float] | float | None = None):
        super().__init__(num_images, len(shape))
        self.shape = tuple(int(n) for n in shape)
        self.params = nn.Parameter(torch.zeros(num_images, self.dim, *self.shape))

    def displacement(self, grid: Tensor) -> Tensor:
        """``[1, d, *S']`` -> ``[N, d, *S']`` (linearly resampled when ``S' != S``)."""
        _check_grid(grid, self.dim)
        return _resample_field(recentre(self.params), grid.shape[2:])

    def forward(self, grid: Tensor) -> Tensor:
        return grid + self.displacement(grid)

    def regularization(self, kind: str = "bending") -> Tensor:
        return _energy(recentre(self.params), kind)


class SVFTransform(SpatialTransform):
    """Stationary velocity field ``[N, d, *S]`` mm, integrated by scaling and squaring (mean velocity 0)."""

    def __init__(self, num_images: int, shape: Sequence[int], spacing: Sequence[float] | float, steps: int = 7):
        super().__init__(num_images, len(shape))
        self.shape = tuple(int(n) for n in shape)
        self.spacing = as_spacing(spacing, self.dim)
        self.steps = steps
        self.params = nn.Parameter(torch.zeros(num_images, self.dim, *self.shape))

    def velocity(self, grid: Tensor) -> Tensor:
        """Re-centred velocity on the grid: ``[N, d, *S']``."""
        return _resample_field(recentre(self.params), grid.shape[2:])

    def displacement(self, grid: Tensor) -> Tensor:
        """``exp(v) - id`` on the grid: ``[1, d, *S']`` -> ``[N, d, *S']``."""
        _check_grid(grid, self.dim)
        spacing = self.spacing if tuple(grid.shape[2:]) == self.shape else grid_spacing(grid)
        return svf_exp(self.velocity(grid), spacing, self.steps)

    def forward(self, grid: Tensor) -> Tensor:
        return grid + self.displacement(grid)

    def regularization(self, kind: str = "bending") -> Tensor:
        return _energy(recentre(self.params), kind)


class CompositeTransform(SpatialTransform):
    """Several levels: ``y = A(x) + d(x)`` (spec §7.1).

    Linear levels compose as matrices (first listed applied first); dense levels compose compositively among
    themselves, ``d = d_1 + d_2 ∘ (id + d_1)`` (first listed applied first).
    """

    def __init__(self, levels: Sequence[SpatialTransform]):
        levels = list(levels)
        if not levels:
            raise ValueError("CompositeTransform needs at least one level")
        n, d = levels[0].num_images, levels[0].dim
        if any(t.num_images != n or t.dim != d for t in levels):
            raise ValueError("all levels must have the same num_images and dim")
        super().__init__(n, d)
        self.levels = nn.ModuleList(levels)

    @property
    def is_linear(self) -> bool:  # type: ignore[override]
        return all(t.is_linear for t in self.levels)

    def matrix(self) -> Tensor:
        """Composed matrix of the linear levels ``[N, d, d+1]`` (identity if none)."""
        m = None
        for t in self.levels:
            if t.is_linear:
                m = t.matrix() if m is None else compose_matrices(m, t.matrix())
        if m is None:
            p = next(self.parameters())
            m = torch.eye(self.dim, self.dim + 1, device=p.device, dtype=p.dtype).expand(self.num_images, -1, -1)
        return m

    def forward(self, grid: Tensor) -> Tensor:
        """``[1, d, *S]`` -> ``[N, d, *S]``."""
        _check_grid(grid, self.dim)
        y = apply_matrix(self.matrix(), grid)
        disp = None
        for t in self.levels:
            if not t.is_linear:
                u = t.displacement(grid)
                disp = u if disp is None else compose_displacements(disp, u, grid_spacing(grid))
        return y if disp is None else y + disp

    def regularization(self, kind: str = "bending") -> Tensor:
        return sum(t.regularization(kind) for t in self.levels)


def make_transform(kind: str, num_images: int, shape: Sequence[int], spacing: Sequence[float] | float,
                   **kw) -> SpatialTransform:
    """Factory: ``"rigid" | "affine" | "ffd" | "svf" | "dense"``.

    Keywords: ``control_spacing`` (ffd; default = 1/8 of the largest extent), ``steps`` (svf, default 7).
    """
    shape = tuple(int(n) for n in shape)
    dim = len(shape)
    spacing = as_spacing(spacing, dim)
    if kind == "rigid":
        return RigidTransform(num_images, dim)
    if kind == "affine":
        return AffineTransform(num_images, dim)
    if kind == "ffd":
        cs = kw.get("control_spacing")
        if cs is None:
            cs = max((n - 1) * s for n, s in zip(shape, spacing)) / 8
        return FFDTransform(num_images, shape, spacing, cs)
    if kind == "svf":
        return SVFTransform(num_images, shape, spacing, steps=kw.get("steps", 7))
    if kind == "dense":
        return DisplacementTransform(num_images, shape, spacing)
    raise ValueError(f"kind must be 'rigid', 'affine', 'ffd', 'svf' or 'dense', got {kind!r}")
