"""Rigid and affine transforms as batched ``[N, d, d+1]`` matrices acting on centred mm points.

Rotation convention: a 2-D angle ``a`` rotates points from axis 0 towards axis 1, ``R = [[cos a, -sin a],
[sin a, cos a]]`` (a proper rotation). Because warping is a pull-back (output(x) = image(R x)), the *content* of the
warped image turns the other way: angle ``-pi/2`` equals ``torch.rot90(image, k=1, dims=(-2, -1))``.
3-D: angles ``(a0, a1, a2)`` rotate about tensor axes 0, 1, 2 (in the planes (1,2), (2,0), (0,1)), applied in that
order: ``R = R2 @ R1 @ R0``. The 2-D rotation is the 3-D rotation about "axis 2" restricted to the plane (0, 1).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_finite


def _elemental(angle: Tensor, i: int, j: int) -> Tensor:
    """``[N, 3, 3]`` rotation by ``angle`` in the plane (i, j), from axis i towards axis j."""
    n = angle.shape[0]
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    entries = [[one, zero, zero], [zero, one, zero], [zero, zero, one]]
    entries[i][i], entries[j][j], entries[i][j], entries[j][i] = c, c, -s, s
    return torch.stack([torch.stack(row, dim=-1) for row in entries], dim=-2).view(n, 3, 3)


def rigid_matrix(params: Tensor) -> Tensor:
    """Rigid matrices from angles (rad) and translations (mm).

    Args:
        params: ``[N, 3]`` = (angle, t_0, t_1) in 2-D or ``[N, 6]`` = (a_0, a_1, a_2, t_0, t_1, t_2) in 3-D.

    Returns:
        ``[N, d, d+1]`` with a proper rotation (det +1) and translation in axis order.
    """
    if not isinstance(params, Tensor) or params.dim() != 2 or params.shape[1] not in (3, 6):
        raise ValueError(f"rigid params must be [N, 3] (2-D) or [N, 6] (3-D), got {tuple(getattr(params, 'shape', ()))}")
    check_finite(params, "rigid params")
    if params.shape[1] == 3:
        a = params[:, 0]
        c, s = torch.cos(a), torch.sin(a)
        rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        t = params[:, 1:]
    else:
        r0 = _elemental(params[:, 0], 1, 2)
        r1 = _elemental(params[:, 1], 2, 0)
        r2 = _elemental(params[:, 2], 0, 1)
        rot = r2 @ r1 @ r0
        t = params[:, 3:]
    return torch.cat([rot, t.unsqueeze(-1)], dim=-1)


def affine_matrix(params: Tensor) -> Tensor:
    """``[I | 0] + params``: params ``[N, d, d+1]`` are offsets from the identity -> ``[N, d, d+1]``."""
    if not isinstance(params, Tensor) or params.dim() != 3 or params.shape[1] not in (2, 3) \
            or params.shape[2] != params.shape[1] + 1:
        raise ValueError(f"affine params must be [N, d, d+1] with d in (2, 3), got {tuple(getattr(params, 'shape', ()))}")
    check_finite(params, "affine params")
    d = params.shape[1]
    eye = torch.eye(d, d + 1, device=params.device, dtype=params.dtype)
    return eye + params


def apply_matrix(matrix: Tensor, points: Tensor) -> Tensor:
    """``y = A p + t`` for every point.

    Args:
        matrix: ``[N, d, d+1]``.
        points: ``[1|N, d, *S]`` mm.

    Returns:
        ``[N, d, *S]``.
    """
    d = matrix.shape[1]
    if matrix.dim() != 3 or matrix.shape[2] != d + 1 or points.shape[1] != d:
        raise ValueError(f"matrix {tuple(matrix.shape)} and points {tuple(points.shape)} do not match ([N,d,d+1], [N,d,*S])")
    flat = points.flatten(2).to(matrix.dtype)  # [1|N, d, M]
    out = matrix[:, :, :d] @ flat + matrix[:, :, d:]
    return out.view(matrix.shape[0], d, *points.shape[2:])


def homogeneous(matrix: Tensor) -> Tensor:
    """``[N, d, d+1]`` -> ``[N, d+1, d+1]`` with last row (0, ..., 0, 1)."""
    n, d = matrix.shape[:2]
    row = torch.zeros(n, 1, d + 1, device=matrix.device, dtype=matrix.dtype)
    row[:, 0, d] = 1
    return torch.cat([matrix, row], dim=1)


def compose_matrices(first: Tensor, second: Tensor) -> Tensor:
    """The map "apply ``first``, then ``second``" (``second ∘ first``): ``[N, d, d+1]`` x2 -> ``[N, d, d+1]``."""
    d = first.shape[1]
    return (homogeneous(second) @ homogeneous(first))[:, :d]


def invert_matrix(matrix: Tensor) -> Tensor:
    """Inverse transform ``[N, d, d+1]`` -> ``[N, d, d+1]`` (``A^-1``, ``-A^-1 t``)."""
    d = matrix.shape[1]
    inv = torch.linalg.inv(matrix[:, :, :d])
    return torch.cat([inv, -(inv @ matrix[:, :, d:])], dim=-1)
