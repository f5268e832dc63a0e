"""Spatial transforms for groupwise registration: grids in centred mm, warping, rigid/affine/FFD/DDF/SVF,
composition, the group-mean constraint, energies and Jacobians. Functional layer + thin modules.

Conventions: points/vectors ``[N, d, *S]`` in mm, channel k <-> tensor axis k; voxel i on axis k is at
``(i - (n_k - 1)/2) * spacing[k]``; a transform maps a common-space point to image j's point (pull-back warp).
"""
from .bspline import bspline_basis, bspline_weights, ffd_control_shape, ffd_displacement, ffd_from_bases
from .constraint import recentre
from .energy import bending_energy, membrane_energy
from .flow import compose_displacements, invert_displacement, svf_exp
from .grid import (axis_coordinates, grid_spacing, identity_grid, inside_fov, overlap_mask, points_to_normalized,
                   points_to_voxels)
from .jacobian import folding_fraction, jacobian_determinant, jacobian_matrix, spatial_gradient
from .linear import affine_matrix, apply_matrix, compose_matrices, homogeneous, invert_matrix, rigid_matrix
from .modules import (AffineTransform, CompositeTransform, DisplacementTransform, FFDTransform, RigidTransform,
                      SpatialTransform, SVFTransform, make_transform)
from .pyramid import downsample, gaussian_smooth, pyramid, resize, resized_spacing
from .warp import sample_field, warp, warp_labels

__all__ = [
    "AffineTransform", "CompositeTransform", "DisplacementTransform", "FFDTransform", "RigidTransform",
    "SVFTransform", "SpatialTransform", "affine_matrix", "apply_matrix", "axis_coordinates", "bending_energy",
    "bspline_basis", "bspline_weights", "compose_displacements", "compose_matrices", "downsample",
    "ffd_control_shape", "ffd_displacement", "ffd_from_bases", "folding_fraction", "gaussian_smooth",
    "grid_spacing", "homogeneous", "identity_grid", "inside_fov", "invert_displacement", "invert_matrix",
    "jacobian_determinant", "jacobian_matrix", "make_transform", "membrane_energy", "overlap_mask",
    "points_to_normalized", "points_to_voxels", "pyramid", "recentre", "resize", "resized_spacing",
    "rigid_matrix", "sample_field", "spatial_gradient", "svf_exp", "warp", "warp_labels",
]
