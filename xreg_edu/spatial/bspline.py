"""Cubic B-spline free-form deformation (FFD), separable: one basis matrix per axis, contracted by einsum.

Control-point placement (decided for xreg_edu): the control lattice has spacing ``delta`` mm and is **centred on
the image centre**, like the voxel grid: control index m sits at ``(m - (n_c - 1)/2) * delta`` mm. The size is the
spec's ``n_c = floor((n - 1) * spacing / delta) + 4`` per axis (the spec writes ``n*spacing - 1``, equal at 1 mm),
which is exactly enough for every voxel to have its 4 x 4 (x 4) supporting control points.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ._validate import as_spacing


def bspline_weights(t: Tensor) -> Tensor:
    """Cubic B-spline basis ``B_0..B_3`` at fractional positions ``t in [0, 1)``: ``[M]`` -> ``[M, 4]``."""
    t2, t3 = t * t, t * t * t
    return torch.stack([(1 - t) ** 3 / 6, t3 / 2 - t2 + 2 / 3, -t3 / 2 + t2 / 2 + t / 2 + 1 / 6, t3 / 6], dim=-1)


def ffd_control_shape(shape: Sequence[int], spacing: Sequence[float] | float,
                      control_spacing: Sequence[float] | float) -> tuple[int, ...]:
    """Control-grid size ``floor((n - 1) * spacing / delta) + 4`` per axis."""
    d = len(shape)
    spacing = as_spacing(spacing, d)
    delta = as_spacing(control_spacing, d)
    return tuple(int(math.floor((n - 1) * s / c + 1e-9)) + 4 for n, s, c in zip(shape, spacing, delta))


def bspline_basis(coords: Tensor, num_control: int, delta: float) -> Tensor:
    """Basis matrix ``[n, n_c]``: row = the 4 B-spline weights of one position ``coords [n]`` (centred mm).

    Control points outside ``0..n_c-1`` (positions beyond the lattice's support) are dropped.
    """
    xi = coords / delta + (num_control - 1) / 2
    i = torch.floor(xi)
    w = bspline_weights(xi - i)  # [n, 4]
    idx = i.long().unsqueeze(-1) + torch.arange(-1, 3, device=coords.device)
    valid = (idx >= 0) & (idx < num_control)
    basis = torch.zeros(coords.shape[0], num_control, device=coords.device, dtype=coords.dtype)
    return basis.scatter_add_(1, idx.clamp(0, num_control - 1), w * valid)


def ffd_from_bases(control: Tensor, bases: Sequence[Tensor]) -> Tensor:
    """Contract control points ``[N, C, *Sc]`` with per-axis bases ``[n_k, nc_k]`` -> ``[N, C, *S]``."""
    out = control
    letters = "ijk"[: len(bases)]
    for k, b in enumerate(bases):
        src = "nc" + letters
        dst = src.replace(letters[k], "z")
        out = torch.einsum(f"{src},z{letters[k]}->{dst}", out, b.to(control.dtype))
    return out


def ffd_displacement(control: Tensor, shape: Sequence[int], spacing: Sequence[float] | float,
                     control_spacing: Sequence[float] | float) -> Tensor:
    """Dense displacement (mm) of a cubic B-spline FFD.

    Args:
        control: ``[N, d, *Sc]`` control-point displacements in mm, ``Sc = ffd_control_shape(shape, ...)``.
        shape: spatial size ``S`` of the output grid; ``spacing`` its mm per axis.
        control_spacing: ``delta`` mm (scalar or per axis).

    Returns:
        ``[N, d, *S]`` displacement in mm (works for any number of channels, e.g. a scalar field with C = 1).
    """
    d = len(shape)
    if control.dim() != d + 2:
        raise ValueError(f"control must be [N, C, *Sc] with {d} spatial axes, got {tuple(control.shape)}")
    spacing = as_spacing(spacing, d)
    delta = as_spacing(control_spacing, d)
    expected = ffd_control_shape(shape, spacing, delta)
    if tuple(control.shape[2:]) != expected:
        raise ValueError(f"control grid {tuple(control.shape[2:])} does not match ffd_control_shape = {expected}")
    bases = []
    for n, s, c, m in zip(shape, spacing, delta, expected):
        coords = (torch.arange(n, device=control.device, dtype=control.dtype) - (n - 1) / 2) * s
        bases.append(bspline_basis(coords, m, c))
    return ffd_from_bases(control, bases)
