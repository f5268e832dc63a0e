"""Known-answer tests for xreg_edu.spatial (grids, warping, transforms, composition, energies, Jacobians)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import xreg_edu.spatial as sp
from conftest import open_ms_file

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def real_slice(modality: str = "T1", step: int = 3) -> torch.Tensor:
    """Mid axial slice of open_ms patient07 ``[1, 1, H, W]`` in [0, 1], fetched through the registry."""
    import nibabel as nib

    vol = nib.load(str(open_ms_file(modality)))
    sl = np.asarray(vol.dataobj[:, :, vol.shape[2] // 2], dtype=np.float32)[::step, ::step]
    sl = (sl - sl.min()) / (sl.max() - sl.min())
    return torch.from_numpy(np.ascontiguousarray(sl))[None, None]


def smooth_random_field(n, shape, spacing, magnitude, control_spacing, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    cs = sp.ffd_control_shape(shape, spacing, control_spacing)
    c = (2 * torch.rand(n, len(shape), *cs, generator=g, dtype=dtype) - 1) * magnitude
    return sp.ffd_displacement(c, shape, spacing, control_spacing)


# ---------------------------------------------------------------- grids and warping
def test_identity_grid_centred_mm_anisotropic():
    g = sp.identity_grid((5, 4), (2.0, 0.5))
    assert g.shape == (1, 2, 5, 4)
    assert torch.allclose(g[0, :, 0, 0], torch.tensor([-4.0, -0.75]))
    assert torch.allclose(g[0, :, 4, 3], torch.tensor([4.0, 0.75]))
    assert torch.allclose(g[0, 0, 2, :], torch.zeros(4))  # centre row at 0 mm
    assert sp.grid_spacing(g) == pytest.approx((2.0, 0.5))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 0.7)])
def test_warp_identity_returns_real_image(spacing):
    img = real_slice()
    out = sp.warp(img, sp.identity_grid(img.shape[2:], spacing), spacing)
    assert torch.allclose(out, img, atol=1e-5)
    vol = torch.rand(2, 1, 5, 6, 7)
    out = sp.warp(vol, sp.identity_grid(vol.shape[2:], (1.0, 2.0, 3.0)), (1.0, 2.0, 3.0))
    assert torch.allclose(out, vol, atol=1e-5)


def test_rigid_rotation_by_90_degrees_equals_rot90_on_real_image():
    """Convention: angle a moves points from axis 0 towards axis 1; the pull-back warp turns the content the
    other way, so angle -pi/2 equals torch.rot90(k=1, dims=(-2, -1))."""
    img = real_slice()
    n = min(img.shape[2:])
    img = img[..., :n, :n].contiguous()
    for spacing in (1.0, 2.5):
        grid = sp.identity_grid((n, n), spacing)
        for angle, k in ((-math.pi / 2, 1), (math.pi / 2, -1), (math.pi, 2)):
            m = sp.rigid_matrix(torch.tensor([[angle, 0.0, 0.0]]))
            out = sp.warp(img, sp.apply_matrix(m, grid), spacing)
            assert torch.allclose(out, torch.rot90(img, k, dims=(-2, -1)), atol=1e-4), (spacing, angle)


def test_rigid_3d_rotations_about_each_axis_equal_rot90():
    """3-D angle a_k rotates in the plane (k+1, k+2) (cyclic); -pi/2 about axis k == rot90 over those axes."""
    vol = torch.rand(1, 1, 6, 6, 6)
    grid = sp.identity_grid((6, 6, 6), 1.5)
    planes = {0: (3, 4), 1: (4, 2), 2: (2, 3)}
    for axis, dims in planes.items():
        p = torch.zeros(1, 6)
        p[0, axis] = -math.pi / 2
        out = sp.warp(vol, sp.apply_matrix(sp.rigid_matrix(p), grid), 1.5)
        assert torch.allclose(out, torch.rot90(vol, 1, dims=dims), atol=1e-4), axis


def test_translation_by_whole_voxels_is_a_shift_with_anisotropic_spacing():
    img = real_slice()
    spacing = (2.0, 0.5)
    p = torch.tensor([[0.0, 3 * 2.0, -4 * 0.5]])  # +3 voxels on axis 0, -4 voxels on axis 1
    out = sp.warp(img, sp.apply_matrix(sp.rigid_matrix(p), sp.identity_grid(img.shape[2:], spacing)), spacing)
    expected = torch.roll(img, shifts=(-3, 4), dims=(2, 3))
    assert torch.allclose(out[..., :-3, 4:], expected[..., :-3, 4:], atol=1e-5)
    assert (out[..., -3:, :] == 0).all()  # zeros padding outside the FOV (no wrap-around)


def test_inside_fov_without_off_by_one_and_overlap_mask():
    shape, spacing = (6, 5), (2.0, 1.0)
    grid = sp.identity_grid(shape, spacing)
    assert sp.inside_fov(grid, shape, spacing).all()  # index 0 and n-1 are inside
    shifted = grid + torch.tensor([0.5 * 2.0, 0.0]).view(1, 2, 1, 1)  # half a voxel along axis 0
    inside = sp.inside_fov(shifted, shape, spacing)[0, 0]
    assert inside[:-1].all() and not inside[-1].any()
    pts = torch.cat([grid, grid + torch.tensor([-2 * 2.0, 1.0]).view(1, 2, 1, 1)])
    ov = sp.overlap_mask(pts, shape, spacing)
    assert ov.shape == (1, 1, 6, 5)
    expected = torch.zeros(6, 5, dtype=torch.bool)
    expected[2:, :-1] = True
    assert torch.equal(ov[0, 0], expected)


def test_warp_labels_nearest_and_one_hot_linear():
    lab = torch.randint(0, 4, (2, 1, 9, 8))
    lab[0, 0, 0, 0] = 7
    grid = sp.identity_grid((9, 8), (1.0, 1.5))
    same = sp.warp_labels(lab, grid, (1.0, 1.5))
    assert same.dtype == torch.int64 and torch.equal(same, lab)
    shift = grid + torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    a = sp.warp_labels(lab, shift, (1.0, 1.5))
    b = sp.warp_labels(lab, shift, (1.0, 1.5), mode="linear")
    assert torch.equal(a[..., :-1, :], lab[..., 1:, :]) and torch.equal(a, b)
    assert set(sp.warp_labels(lab, grid + 0.3, (1.0, 1.5), mode="linear").unique().tolist()) <= {0, 1, 2, 3, 7}


# ---------------------------------------------------------------- linear transforms
def test_rigid_is_proper_and_inverse_composition_is_exact():
    g = torch.Generator().manual_seed(0)
    for dim, k in ((2, 3), (3, 6)):
        p = torch.randn(4, k, generator=g, dtype=torch.float64)
        m = sp.rigid_matrix(p)
        r = m[:, :, :dim]
        assert torch.allclose(r @ r.transpose(1, 2), torch.eye(dim, dtype=torch.float64).expand(4, -1, -1))
        assert torch.allclose(torch.linalg.det(r), torch.ones(4, dtype=torch.float64))
        grid = sp.identity_grid((5,) * dim, 1.3, dtype=torch.float64)
        back = sp.apply_matrix(sp.compose_matrices(m, sp.invert_matrix(m)), grid)
        assert torch.allclose(back, grid.expand_as(back), atol=1e-12)
        assert torch.allclose(sp.apply_matrix(sp.invert_matrix(m), sp.apply_matrix(m, grid)),
                              grid.expand(4, *grid.shape[1:]), atol=1e-12)


def test_affine_matrix_and_compose_order():
    off = torch.zeros(1, 2, 3)
    assert torch.equal(sp.affine_matrix(off)[0], torch.eye(2, 3))
    scale = sp.affine_matrix(torch.tensor([[[1.0, 0, 0], [0, 0, 0]]]))  # x0 -> 2 x0
    trans = sp.affine_matrix(torch.tensor([[[0.0, 0, 1], [0, 0, 0]]]))  # x0 -> x0 + 1
    pt = torch.tensor([[[[3.0]], [[0.0]]]])
    assert sp.apply_matrix(sp.compose_matrices(scale, trans), pt)[0, 0].item() == 7.0  # scale first
    assert sp.apply_matrix(sp.compose_matrices(trans, scale), pt)[0, 0].item() == 8.0


# ---------------------------------------------------------------- FFD
def test_ffd_control_grid_size_and_constant_control_gives_constant_displacement():
    assert sp.ffd_control_shape((96, 96), 1.0, 12.0) == (11, 11)  # floor(95/12) + 4
    for shape, spacing, delta in (((17, 23), (1.5, 0.8), (5.0, 4.0)), ((9, 10, 11), (1.0, 2.0, 1.5), 4.0)):
        cs = sp.ffd_control_shape(shape, spacing, delta)
        vec = torch.arange(1.0, len(shape) + 1)
        control = vec.view(1, -1, *([1] * len(shape))).expand(2, -1, *cs)
        disp = sp.ffd_displacement(control, shape, spacing, delta)
        assert torch.allclose(disp, vec.view(1, -1, *([1] * len(shape))).expand_as(disp), atol=1e-5)


def test_ffd_reproduces_linear_fields_centred_lattice():
    """Cubic B-splines reproduce linear functions: control m at (m - (n_c-1)/2) delta with value a*pos gives a*x."""
    shape, spacing, delta = (20, 15), (1.2, 2.0), (5.0, 7.0)
    cs = sp.ffd_control_shape(shape, spacing, delta)
    pos0 = (torch.arange(cs[0]) - (cs[0] - 1) / 2) * delta[0]
    control = torch.zeros(1, 2, *cs)
    control[0, 0] = 0.1 * pos0[:, None]
    disp = sp.ffd_displacement(control, shape, spacing, delta)
    grid = sp.identity_grid(shape, spacing)
    assert torch.allclose(disp[0, 0], 0.1 * grid[0, 0], atol=1e-5)
    assert torch.allclose(disp[0, 1], torch.zeros(shape))


def test_ffd_module_same_physical_points_on_pyramid_levels():
    shape, spacing = (33, 25), (1.0, 1.5)
    t = sp.FFDTransform(2, shape, spacing, 6.0)
    with torch.no_grad():
        t.params.normal_()
    fine = t.displacement(sp.identity_grid(shape, spacing))
    (coarse_img, cspacing), = sp.pyramid(torch.zeros(1, 1, *shape), spacing, levels=2)[1:]
    coarse = t.displacement(sp.identity_grid(coarse_img.shape[2:], cspacing))
    assert coarse.shape[2:] == (17, 13)
    assert torch.allclose(coarse, fine[:, :, ::2, ::2], atol=1e-5)


# ---------------------------------------------------------------- flows
def test_svf_exp_inverse_is_subvoxel_identity():
    shape, spacing = (40, 36), (1.0, 1.25)
    v = smooth_random_field(2, shape, spacing, 6.0, 12.0, seed=1)
    fwd, bwd = sp.svf_exp(v, spacing), sp.svf_exp(-v, spacing)
    res = sp.compose_displacements(fwd, bwd, spacing)
    vox = res / torch.tensor(spacing).view(1, 2, 1, 1)
    assert fwd.abs().max() > 2.0  # a real deformation
    assert vox[..., 4:-4, 4:-4].norm(dim=1).max() < 0.1  # sub-voxel (interior, away from border padding)
    assert torch.allclose(sp.svf_exp(torch.zeros_like(v), spacing), torch.zeros_like(v))


def test_compose_displacements_of_translations_adds():
    shape, spacing = (10, 12), (1.0, 2.0)
    a = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, *shape)
    b = torch.tensor([-0.5, 4.0]).view(1, 2, 1, 1).expand(1, 2, *shape)
    assert torch.allclose(sp.compose_displacements(a, b, spacing), a + b)


def test_svf_does_not_fold_where_same_size_displacement_folds():
    shape, spacing = (48, 48), (1.0, 1.0)
    v = smooth_random_field(3, shape, spacing, 9.0, 8.0, seed=3)
    assert (sp.folding_fraction(v, spacing) > 0).all()  # used directly as a displacement: folds
    assert (sp.folding_fraction(sp.svf_exp(v, spacing, steps=8), spacing) == 0).all()


# ---------------------------------------------------------------- Jacobian
def test_jacobian_3d_matches_autograd_reference():
    """det(I + grad u) by central differences vs autograd of an analytic field; the field is large enough that
    the official formula (two cofactor terms added instead of subtracted) would be off by > 0.2."""
    shape, spacing = (14, 12, 10), (0.5, 0.6, 0.7)
    grid = sp.identity_grid(shape, spacing, dtype=torch.float64)

    def u(x):  # x: [3] mm -> [3] mm, smooth, non-symmetric, with large off-diagonal derivatives
        return torch.stack([1.6 * torch.sin(0.5 * x[1] + 0.2 * x[2]), 1.4 * torch.cos(0.4 * x[0] - 0.3 * x[2]),
                            1.5 * torch.sin(0.3 * x[0] + 0.5 * x[1])])

    pts = grid[0].reshape(3, -1).T
    disp = torch.stack([u(p) for p in pts]).T.reshape(1, 3, *shape)
    a = torch.eye(3, dtype=torch.float64) + torch.stack([torch.autograd.functional.jacobian(u, p) for p in pts])
    ref = torch.linalg.det(a).reshape(shape)
    wrong = (ref.flatten() + 2 * a[:, 0, 0] * a[:, 1, 2] * a[:, 2, 1] + 2 * a[:, 0, 1] * a[:, 1, 0] * a[:, 2, 2])
    assert (wrong.reshape(shape) - ref).abs().max() > 0.2
    det = sp.jacobian_determinant(disp, spacing)[0, 0]
    inner = (slice(1, -1),) * 3
    assert torch.allclose(det[inner], ref[inner], atol=2e-2)


@pytest.mark.parametrize("dim", [2, 3])
def test_jacobian_of_known_affine(dim):
    g = torch.Generator().manual_seed(dim)
    a = torch.eye(dim, dtype=torch.float64) + 0.4 * torch.randn(dim, dim, generator=g, dtype=torch.float64)
    a[0] = -a[0]  # include an orientation flip: det < 0
    spacing = (1.0, 2.0, 0.5)[:dim]
    grid = sp.identity_grid((6,) * dim, spacing, dtype=torch.float64)
    m = torch.cat([a, torch.zeros(dim, 1, dtype=torch.float64)], 1)[None]
    disp = sp.apply_matrix(m, grid) - grid
    det = sp.jacobian_determinant(disp, spacing)
    assert torch.allclose(det, torch.linalg.det(a).expand_as(det), atol=1e-10)
    assert sp.folding_fraction(disp, spacing).item() == (1.0 if torch.linalg.det(a) <= 0 else 0.0)


# ---------------------------------------------------------------- energies and constraint
def test_energies_known_values():
    shape = (9, 8, 7)
    grid = sp.identity_grid(shape, 1.0)
    affine = sp.apply_matrix(torch.randn(2, 3, 4), grid)
    assert sp.bending_energy(affine).abs() < 1e-8
    assert sp.membrane_energy(torch.full((2, 3, *shape), 3.7)) == 0
    quad = torch.zeros(1, 3, *shape)
    quad[0, 1] = grid[0, 0] ** 2  # f_00 = 2 -> bending = 4
    assert sp.bending_energy(quad).item() == pytest.approx(4.0, rel=1e-5)
    mixed = torch.zeros(1, 3, *shape)
    mixed[0, 0] = grid[0, 0] * grid[0, 2]  # f_02 = 1 -> bending = 2 * 1
    assert sp.bending_energy(mixed).item() == pytest.approx(2.0, rel=1e-5)
    lin = torch.zeros(2, 3, *shape)
    lin[:, 2] = 0.5 * grid[0, 1]  # f_1 = 0.5 -> membrane 0.25 per image, summed over N = 2
    assert sp.membrane_energy(lin).item() == pytest.approx(0.5, rel=1e-5)
    assert sp.membrane_energy(lin, reduction="mean").item() == pytest.approx(0.25, rel=1e-5)
    assert sp.membrane_energy(lin, spacing=(1.0, 2.0, 1.0), reduction="mean").item() == pytest.approx(0.0625)


def test_recentred_parameters_have_zero_mean_in_every_module():
    assert torch.allclose(sp.recentre(torch.randn(5, 3, 4)).mean(0), torch.zeros(3, 4), atol=1e-6)
    shape, spacing = (16, 14), (1.0, 1.5)
    grid = sp.identity_grid(shape, spacing)
    for kind in ("rigid", "affine", "ffd", "svf", "dense"):
        t = sp.make_transform(kind, 4, shape, spacing, control_spacing=5.0)
        with torch.no_grad():
            for p in t.parameters():
                p.add_(torch.randn_like(p) * 0.3 + 1.0)  # raw parameters with a non-zero mean
        if t.is_linear:
            eff = sp.recentre(t.params)
            assert torch.allclose(eff.mean(0), torch.zeros_like(eff[0]), atol=1e-6)
            if kind == "affine":
                assert torch.allclose(t.matrix().mean(0), torch.eye(2, 3), atol=1e-6)
            if kind == "rigid":
                assert torch.allclose(t.matrix()[:, :, 2].mean(0), torch.zeros(2), atol=1e-6)
        elif kind == "svf":
            assert torch.allclose(t.velocity(grid).mean(0), torch.zeros(2, *shape), atol=1e-5)
        else:
            assert torch.allclose(t.displacement(grid).mean(0), torch.zeros(2, *shape), atol=1e-5)
        assert t(grid).shape == (4, 2, *shape)


def test_identity_initialisation_and_composite_order():
    shape, spacing = (12, 10), (1.0, 2.0)
    grid = sp.identity_grid(shape, spacing)
    for kind in ("rigid", "affine", "ffd", "svf", "dense"):
        t = sp.make_transform(kind, 3, shape, spacing)
        assert torch.equal(t(grid), grid.expand(3, -1, -1, -1)), kind
        assert t.regularization().item() == 0
    r1, r2 = sp.RigidTransform(2, 2), sp.RigidTransform(2, 2)
    with torch.no_grad():
        r1.params.copy_(torch.tensor([[0.3, 1.0, 0.0], [-0.3, -1.0, 0.0]]))
        r2.params.copy_(torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, -2.0]]))
    comp = sp.CompositeTransform([r1, r2])
    assert comp.is_linear
    assert torch.allclose(comp(grid), sp.apply_matrix(r2.matrix(), r1(grid)), atol=1e-5)  # r1 first
    ffd = sp.FFDTransform(2, shape, spacing, 6.0)
    with torch.no_grad():
        ffd.params.normal_()
    both = sp.CompositeTransform([r1, ffd])
    assert not both.is_linear
    assert torch.allclose(both(grid), r1(grid) + ffd.displacement(grid), atol=1e-5)  # y = A(x) + d(x)
    assert both.regularization().item() == pytest.approx(ffd.regularization().item())
    with pytest.raises(ValueError, match="kind"):
        sp.make_transform("spline", 2, shape, spacing)


# ---------------------------------------------------------------- pyramid
def test_downsample_keeps_extent_and_strides_odd_grids():
    img = real_slice()[..., :61, :73]
    spacing = (1.0, 0.5)
    low, s = sp.downsample(img, spacing, 2, smooth=False)
    assert low.shape[2:] == (31, 37) and s == pytest.approx((2.0, 1.0))
    assert torch.allclose(low, img[..., ::2, ::2], atol=1e-5)
    levels = sp.pyramid(img, spacing, levels=3)
    assert [tuple(x.shape[2:]) for x, _ in levels] == [(61, 73), (31, 37), (16, 19)]
    for x, sx in levels:
        assert [(n - 1) * si for n, si in zip(x.shape[2:], sx)] == pytest.approx([60.0, 36.0])
    assert sp.resize(torch.ones(1, 1, 5, 5), (9, 9)).allclose(torch.ones(1, 1, 9, 9))


# ---------------------------------------------------------------- gradients
def test_gradcheck_ssd_wrt_rigid_and_ffd_parameters():
    img = sp.gaussian_smooth(real_slice(step=12).double(), 1.0)  # ~16 x 19
    shape, spacing = tuple(img.shape[2:]), (1.2, 0.9)
    fixed = img.flip(-1)
    grid = sp.identity_grid(shape, spacing, dtype=torch.float64)

    def ssd_rigid(p):
        return (sp.warp(img, sp.apply_matrix(sp.rigid_matrix(p), grid), spacing) - fixed).pow(2).mean()

    p = torch.tensor([[0.13, 0.37, -0.61]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ssd_rigid, (p,), eps=1e-6, atol=1e-5)

    cs = sp.ffd_control_shape(shape, spacing, 6.0)
    c0 = torch.randn(1, 2, *cs, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.7

    def ssd_ffd(c):
        return (sp.warp(img, grid + sp.ffd_displacement(c, shape, spacing, 6.0), spacing) - fixed).pow(2).mean()

    assert torch.autograd.gradcheck(ssd_ffd, (c0.requires_grad_(),), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_specific_errors():
    img = torch.rand(2, 1, 8, 8)
    grid = sp.identity_grid((8, 8), 1.0)
    with pytest.raises(ValueError, match="padding"):
        sp.warp(img, grid, 1.0, padding="reflection")
    with pytest.raises(ValueError, match="non-finite"):
        sp.warp(img, grid * float("nan"), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        sp.warp(img.clone().fill_(float("inf")), grid, 1.0)
    with pytest.raises(ValueError, match="spacing"):
        sp.warp(img, grid, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        sp.identity_grid((4, 4), (1.0, -1.0))
    with pytest.raises(ValueError, match="3-D points"):
        sp.warp(torch.rand(1, 1, 4, 4, 4), grid, 1.0)
    with pytest.raises(ValueError, match="same batch"):
        sp.warp(torch.rand(3, 1, 8, 8), grid.expand(2, -1, -1, -1), 1.0)
    with pytest.raises(ValueError, match="rigid params"):
        sp.rigid_matrix(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="control grid"):
        sp.ffd_displacement(torch.zeros(1, 2, 5, 5), (8, 8), 1.0, 2.0)
    with pytest.raises(TypeError, match="integer"):
        sp.warp_labels(torch.rand(1, 1, 8, 8), grid, 1.0)
    with pytest.raises(ValueError, match="steps"):
        sp.svf_exp(torch.zeros(1, 2, 8, 8), 1.0, steps=-1)
    with pytest.raises(ValueError, match="share a grid"):
        sp.compose_displacements(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 6, 8), 1.0)


# ---------------------------------------------------------------- CUDA
@CUDA
def test_same_results_on_cuda():
    shape, spacing = (24, 20), (1.0, 1.5)
    img = torch.rand(3, 1, *shape)
    v = smooth_random_field(3, shape, spacing, 4.0, 6.0)
    p = torch.randn(3, 3) * 0.2
    grid = sp.identity_grid(shape, spacing)

    def run(dev):
        g = grid.to(dev)
        pts = sp.apply_matrix(sp.rigid_matrix(p.to(dev)), g)
        u = sp.svf_exp(v.to(dev), spacing)
        t = sp.FFDTransform(3, shape, spacing, 5.0).to(dev)
        with torch.no_grad():
            t.params.copy_(torch.linspace(-1, 1, t.params.numel()).view_as(t.params))
        return [sp.warp(img.to(dev), pts, spacing), u, sp.jacobian_determinant(u, spacing),
                sp.bending_energy(v.to(dev)), t(g), sp.overlap_mask(pts, shape, spacing)]

    for a, b in zip(run("cpu"), run("cuda")):
        assert torch.allclose(a.float(), b.cpu().float(), atol=1e-4)


def test_gradcheck_mi_and_x_metric_wrt_rigid_and_ffd_parameters():
    """The registration gradient path end to end: parameters -> warp -> Parzen histograms -> MI / X-metric.

    The bin range is detached by design (spec §1), so finite differences would also see the bins move with the
    warped min/max. A fixed strip holding the intensities 0 and 1 pins the range, so both derivatives are of the
    same smooth function."""
    from xreg_edu import info

    def pinned(img):  # [1,1,H,W] in (0.05, 0.95) + a 2-pixel strip [0 .. 1] -> [1,1,H,W+2]
        strip = torch.zeros(1, 1, img.shape[2], 2, dtype=img.dtype)
        strip[..., 0, :] = 1.0
        return torch.cat([0.05 + 0.9 * img, strip], dim=-1)

    t1 = sp.gaussian_smooth(real_slice("T1", step=12).double(), 1.0)
    t2 = sp.gaussian_smooth(real_slice("T2", step=12).double(), 1.0)
    t1, t2 = ((t - t.min()) / (t.max() - t.min()) for t in (t1, t2))
    shape, spacing = tuple(t1.shape[2:]), (1.2, 0.9)
    grid = sp.identity_grid(shape, spacing, dtype=torch.float64)
    lab = (t1[0, 0] > t1.mean()).long() + (t1[0, 0] > t1.quantile(0.8)).long()
    post = info.labels_to_posterior(torch.cat([lab, torch.zeros_like(lab[:, :2])], dim=-1), 3).double()
    cs = sp.ffd_control_shape(shape, spacing, 6.0)
    c0 = torch.randn(1, 2, *cs, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.5

    def rigid_points(p):
        return sp.apply_matrix(sp.rigid_matrix(p), grid)

    def ffd_points(c):
        return grid + sp.ffd_displacement(c, shape, spacing, 6.0)

    for points, x0 in ((rigid_points, torch.tensor([[0.05, 0.3, -0.4]], dtype=torch.float64)), (ffd_points, c0)):
        def mi(x):
            return info.mutual_information(pinned(sp.warp(t2, points(x), spacing, padding="border")), pinned(t1),
                                           bins=8)

        def xm(x):
            group = torch.cat([pinned(t1), pinned(sp.warp(t2, points(x), spacing, padding="border"))])
            return info.x_metric(group, post, bins=8)

        for f in (mi, xm):
            assert torch.autograd.gradcheck(f, (x0.clone().requires_grad_(),), eps=1e-6, atol=1e-5, rtol=1e-3,
                                            fast_mode=True)
