"""Seeded misalignments with a known ground truth, intensity non-uniformity and noise.

A misalignment ``g_j`` maps an *observed* image-j point to the *true* (original) space; the observed image is
``u_j^obs = u_j^true ∘ g_j`` (pull-back). Random parameters are mean-zero over the group, so the true common space
is the group mean. For an estimated transform ``phi_hat_j`` (common -> observed image j) the error map for
:func:`xreg_edu.evaluate.group_registration_error` is ``Misalignment.true_points(phi_hat(grid))``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .group import ImageGroup
from .spatial._validate import as_spacing, check_field
from .spatial.bspline import ffd_control_shape, ffd_displacement
from .spatial.constraint import recentre
from .spatial.flow import invert_displacement, svf_exp
from .spatial.grid import identity_grid
from .spatial.linear import affine_matrix, apply_matrix, invert_matrix, rigid_matrix
from .spatial.warp import sample_field, warp, warp_labels


def _uniform(shape, bound: float, generator, dtype=torch.float32) -> Tensor:
    """``U(-bound, bound)`` on the generator's device."""
    dev = generator.device if generator is not None else "cpu"
    return (2 * torch.rand(shape, generator=generator, device=dev, dtype=dtype) - 1) * bound


def _check_n(num_images: int) -> None:
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 2:
        raise ValueError(f"num_images must be an integer N >= 2 for a group, got {num_images!r}")


def random_rigid(num_images: int, dim: int = 2, max_angle_deg: float = 20.0, max_translation_mm: float = 20.0,
                 generator: torch.Generator | None = None) -> Tensor:
    """Rigid params ``[N, 3]`` (2-D) / ``[N, 6]`` (3-D): angles ``U(±max)``, translations ``U(±max)`` mm, then the
    group mean is subtracted (values may slightly exceed the ranges)."""
    _check_n(num_images)
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    na = 1 if dim == 2 else 3
    angles = _uniform((num_images, na), math.radians(max_angle_deg), generator)
    trans = _uniform((num_images, dim), max_translation_mm, generator)
    return recentre(torch.cat([angles, trans], 1))


def random_affine(num_images: int, dim: int = 2, max_angle_deg: float = 15.0, max_translation_mm: float = 10.0,
                  max_scale: float = 0.1, max_shear: float = 0.05,
                  generator: torch.Generator | None = None) -> Tensor:
    """Affine offsets ``[N, d, d+1]`` (matrix = ``[I|0] + offsets``) with group mean 0, i.e. mean matrix ``[I|0]``.

    Linear part ``R (I + E)``: ``E`` has ``U(±max_scale)`` diagonal and ``U(±max_shear)`` off-diagonal entries.
    """
    rigid = random_rigid(num_images, dim, max_angle_deg, max_translation_mm, generator)
    m = rigid_matrix(rigid)
    e = _uniform((num_images, dim, dim), max_shear, generator)
    diag = _uniform((num_images, dim), max_scale, generator)
    e = e - torch.diag_embed(torch.diagonal(e, dim1=1, dim2=2)) + torch.diag_embed(diag)
    lin = m[:, :, :dim] @ (torch.eye(dim) + e)
    mat = torch.cat([lin, m[:, :, dim:]], -1)
    return recentre(mat - torch.eye(dim, dim + 1))


def random_ffd(num_images: int, shape: Sequence[int], spacing: Sequence[float] | float,
               control_spacing: Sequence[float] | float, magnitude_mm: float = 5.0,
               generator: torch.Generator | None = None) -> Tensor:
    """Control points ``[N, d, *Sc]`` mm, ``U(±magnitude_mm)`` per component, group mean 0.

    The FFD is guaranteed one-to-one while every control displacement stays below ~0.4 x control spacing.
    """
    _check_n(num_images)
    cs = ffd_control_shape(shape, spacing, control_spacing)
    return recentre(_uniform((num_images, len(shape), *cs), magnitude_mm, generator))


def random_svf(num_images: int, shape: Sequence[int], spacing: Sequence[float] | float, magnitude_mm: float = 5.0,
               control_spacing: Sequence[float] | float | None = None,
               generator: torch.Generator | None = None) -> Tensor:
    """Smooth velocity ``[N, d, *S]`` mm: a random cubic B-spline field (``U(±magnitude)`` control points,
    control spacing default 1/4 of the largest extent), group mean 0 (so the mean of exp(v) is ~id)."""
    spacing = as_spacing(spacing, len(shape))
    if control_spacing is None:
        control_spacing = max((n - 1) * s for n, s in zip(shape, spacing)) / 4
    control = random_ffd(num_images, shape, spacing, control_spacing, magnitude_mm, generator)
    return recentre(ffd_displacement(control, shape, spacing, control_spacing))


@dataclass
class Misalignment:
    """Known ground truth ``g_j`` (observed image-j point -> true point) of a simulated group.

    Attributes:
        kind: ``"rigid" | "affine" | "ffd" | "svf"``.
        params: the random parameters (rigid params, affine offsets, control points or velocity).
        shape, spacing: the image grid.
        matrix: ``[N, d, d+1]`` for linear kinds, else None.
        displacement: ``[N, d, *S]`` mm of ``g_j - id`` for dense kinds, else None.
        control_spacing: FFD control spacing (mm) where relevant.
    """

    kind: str
    params: Tensor
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    matrix: Tensor | None = None
    displacement: Tensor | None = None
    control_spacing: tuple[float, ...] | None = None
    steps: int = 7

    @property
    def is_linear(self) -> bool:
        return self.matrix is not None

    def grid(self) -> Tensor:
        """The identity grid ``[1, d, *S]`` of the image space."""
        ref = self.params
        return identity_grid(self.shape, self.spacing, device=ref.device, dtype=ref.dtype)

    def true_points(self, points: Tensor) -> Tensor:
        """``g_j(points_j)``: ``[N|1, d, *S']`` mm in observed space -> ``[N, d, *S']`` mm in true space.

        Exact for linear kinds; bilinear interpolation (border padding) of the displacement for dense kinds.
        """
        if self.matrix is not None:
            return apply_matrix(self.matrix.to(points.device, points.dtype), points)
        disp = self.displacement.to(points.device, points.dtype)
        if points.shape[0] == 1:
            points = points.expand(disp.shape[0], *points.shape[1:])
        return points + sample_field(disp, points, self.spacing)

    @property
    def points(self) -> Tensor:
        """``g_j`` on the image grid: ``[N, d, *S]`` mm (the initial error map; its gRE is the initial gRE)."""
        return self.true_points(self.grid())

    def correction(self) -> Tensor:
        """The ideal estimate ``g_j^{-1}`` on the grid, ``[N, d, *S]`` mm (common -> observed image j).

        Exact for linear kinds, ``exp(-v)`` for SVF, fixed-point inversion for FFD.
        """
        grid = self.grid()
        if self.matrix is not None:
            return apply_matrix(invert_matrix(self.matrix), grid)
        if self.kind == "svf":
            return grid + svf_exp(-self.params, self.spacing, self.steps)
        return grid + invert_displacement(self.displacement, self.spacing)

    def to(self, device) -> "Misalignment":
        mv = (lambda t: None if t is None else t.to(device))
        return replace(self, params=self.params.to(device), matrix=mv(self.matrix), displacement=mv(self.displacement))


def make_misalignment(kind: str, num_images: int, shape: Sequence[int], spacing: Sequence[float] | float,
                      generator: torch.Generator | None = None, **ranges) -> Misalignment:
    """Draw a random :class:`Misalignment` on a grid (see :func:`misalign` for the ``ranges`` keywords)."""
    shape = tuple(int(n) for n in shape)
    dim = len(shape)
    spacing = as_spacing(spacing, dim)
    extent = max((n - 1) * s for n, s in zip(shape, spacing))
    if kind == "rigid":
        p = random_rigid(num_images, dim, ranges.get("max_angle_deg", 20.0),
                         ranges.get("max_translation_mm", 20.0), generator)
        return Misalignment(kind, p, shape, spacing, matrix=rigid_matrix(p))
    if kind == "affine":
        keys = ("max_angle_deg", "max_translation_mm", "max_scale", "max_shear")
        p = random_affine(num_images, dim, generator=generator, **{k: ranges[k] for k in keys if k in ranges})
        return Misalignment(kind, p, shape, spacing, matrix=affine_matrix(p))
    if kind == "ffd":
        cs = as_spacing(ranges.get("control_spacing", extent / 4), dim)
        p = random_ffd(num_images, shape, spacing, cs, ranges.get("magnitude_mm", 5.0), generator)
        return Misalignment(kind, p, shape, spacing, displacement=ffd_displacement(p, shape, spacing, cs),
                            control_spacing=cs)
    if kind == "svf":
        cs = as_spacing(ranges.get("control_spacing", extent / 4), dim)
        steps = ranges.get("steps", 7)
        v = random_svf(num_images, shape, spacing, ranges.get("magnitude_mm", 5.0), cs, generator)
        return Misalignment(kind, v, shape, spacing, displacement=svf_exp(v, spacing, steps), control_spacing=cs,
                            steps=steps)
    raise ValueError(f"kind must be 'rigid', 'affine', 'ffd' or 'svf', got {kind!r}")


def misalign(group: ImageGroup, kind: str = "rigid", seed: int = 0, *, padding: str = "zeros",
             **ranges) -> tuple[ImageGroup, Misalignment]:
    """Misalign an aligned group by seeded random transforms with group mean zero.

    Args:
        group: the aligned (true) :class:`ImageGroup`, N >= 2.
        kind: ``"rigid"`` (``max_angle_deg=20``, ``max_translation_mm=20``), ``"affine"`` (+ ``max_scale=0.1``,
            ``max_shear=0.05``), ``"ffd"`` (``control_spacing`` mm = extent/4, ``magnitude_mm=5``) or ``"svf"``
            (same keywords, + ``steps=7``).
        seed: seeds a ``torch.Generator``; equal seeds give equal misalignments.

    Returns:
        (observed group: images bilinear, labels nearest; ``meta["misalignment"]`` records kind/seed/ranges,
        :class:`Misalignment` on the group's device).
    """
    if not isinstance(group, ImageGroup):
        raise TypeError(f"group must be an ImageGroup, got {type(group).__name__}")
    gen = torch.Generator().manual_seed(int(seed))
    mis = make_misalignment(kind, len(group), group.shape, group.spacing, gen, **ranges).to(group.device)
    pts = mis.points.to(group.images.dtype)
    images = warp(group.images, pts, group.spacing, mode="bilinear", padding=padding)
    labels = None if group.labels is None else warp_labels(group.labels, pts, group.spacing)
    meta = {**group.meta, "misalignment": {"kind": kind, "seed": int(seed), **ranges}}
    return replace(group, images=images, labels=labels, meta=meta), mis


def bias_field(shape: Sequence[int], strength: float = 0.2, generator: torch.Generator | None = None, *,
               num_images: int = 1, control_points: int = 4, device=None,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """Smooth multiplicative intensity non-uniformity in ``[1 - strength, 1 + strength]``.

    A random ``control_points^d`` lattice, upsampled (bicubic / trilinear), scaled to max |.| = 1.

    Returns:
        ``[num_images, 1, *shape]``.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must hold 2 or 3 sizes, got {shape}")
    if not 0 <= strength < 1:
        raise ValueError(f"strength must be in [0, 1), got {strength!r}")
    coarse = _uniform((num_images, 1) + (control_points,) * len(shape), 1.0, generator, dtype)
    mode = "bicubic" if len(shape) == 2 else "trilinear"
    f = F.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    f = f - f.flatten(1).mean(1).view(-1, *([1] * (f.dim() - 1)))
    f = f / f.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (f.dim() - 1)))
    return (1 + strength * f).to(device=device)


def add_noise(images: Tensor, sigma: float, generator: torch.Generator | None = None,
              kind: str = "gaussian") -> Tensor:
    """Additive Gaussian noise or Rician noise ``sqrt((x + n1)^2 + n2^2)``: ``[N, C, *S]`` -> same.

    ``sigma`` is in intensity units (e.g. 0.03 for images scaled to [0, 1]).
    """
    check_field(images, "images")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    dev = generator.device if generator is not None else images.device
    n1 = torch.randn(images.shape, generator=generator, device=dev, dtype=images.dtype).to(images.device)
    if kind == "gaussian":
        return images + sigma * n1
    if kind == "rician":
        n2 = torch.randn(images.shape, generator=generator, device=dev, dtype=images.dtype).to(images.device)
        return torch.sqrt((images + sigma * n1) ** 2 + (sigma * n2) ** 2)
    raise ValueError(f"kind must be 'gaussian' or 'rician', got {kind!r}")


def corrupt(group: ImageGroup, bias: float = 0.2, noise: float = 0.03, seed: int = 0,
            kind: str = "gaussian") -> ImageGroup:
    """Apply a per-image bias field (``bias`` strength) and noise (``noise`` sigma) to a group, seeded."""
    gen = torch.Generator().manual_seed(int(seed))
    field = bias_field(group.shape, bias, gen, num_images=len(group), dtype=group.images.dtype).to(group.device)
    images = add_noise(group.images * field, noise, gen, kind)
    return replace(group, images=images, meta={**group.meta, "corruption": {"bias": bias, "noise": noise,
                                                                            "seed": int(seed), "kind": kind}})
