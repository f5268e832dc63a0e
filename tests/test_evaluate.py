"""Known-answer tests for xreg_edu.evaluate (gRE, gWI, Dice, ASSD, folding)."""
from __future__ import annotations

import math

import pytest
import torch

import xreg_edu.spatial as sp
from xreg_edu.evaluate import assd, folding_percentage, group_dice, group_registration_error, group_warping_index

from test_spatial import real_slice

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_gre_of_a_pure_translation_is_its_length_with_anisotropic_spacing():
    """Two copies of a real slice, shifted by -k and +k voxels (np.roll), spacing (2.0, 0.5) mm.

    Observed image j is ``true ∘ psi_j`` with ``psi_j(x) = x + t_j``: rolling by +k voxels along an axis means
    ``obs[i] = true[i - k]``, i.e. ``t = -k * spacing``. With ``t_0 = -t_1 = t``: the group mean is ``x``, each
    deviation is ``±t``, so ``gRE = mean_j |t_j - 0| = |t| = sqrt((k0 s0)^2 + (k1 s1)^2)`` (RMS gives the same).
    The same |t| in voxels would be sqrt(k0^2 + k1^2): only the mm value passes.
    """
    img = real_slice()
    spacing, (k0, k1) = (2.0, 0.5), (3, -4)
    obs = torch.cat([torch.roll(img, (-k0, -k1), (2, 3)), torch.roll(img, (k0, k1), (2, 3))])
    t = torch.tensor([-k0 * spacing[0], -k1 * spacing[1]]).view(1, 2, 1, 1)
    grid = sp.identity_grid(img.shape[2:], spacing)
    psi = torch.cat([grid - t, grid + t])
    inner = (..., slice(4, -4), slice(5, -5))
    assert torch.allclose(sp.warp(img, psi, spacing)[inner], obs[inner], atol=1e-5)  # psi is the true map
    expected = math.hypot(k0 * spacing[0], k1 * spacing[1])  # 6.32 mm (not 5 voxels)
    assert group_registration_error(psi).item() == pytest.approx(expected, rel=1e-5)
    assert group_registration_error(psi, rms=True).item() == pytest.approx(expected, rel=1e-5)
    mask = img[0, 0] > 0.2
    assert group_registration_error(psi, mask=mask).item() == pytest.approx(expected, rel=1e-5)


def test_gre_is_zero_for_a_common_transform_and_differentiable():
    grid = sp.identity_grid((10, 12), (1.0, 1.5))
    common = sp.apply_matrix(sp.rigid_matrix(torch.tensor([[0.3, 5.0, -2.0]])), grid)
    psi = common.expand(3, -1, -1, -1).clone().requires_grad_()
    gre = group_registration_error(psi)
    assert gre.item() == pytest.approx(0.0, abs=1e-5)
    gre.backward()
    assert torch.isfinite(psi.grad).all()


def test_gre_mean_versus_rms_on_known_deviations():
    """Deviations of length 1 on half the voxels and 3 on the other half: mean 2, RMS sqrt(5)."""
    psi = torch.zeros(2, 2, 4, 4)
    psi[0, 0, :2], psi[0, 0, 2:] = 1.0, 3.0
    psi[1] = -psi[0]
    assert group_registration_error(psi).item() == pytest.approx(2.0)
    assert group_registration_error(psi, rms=True).item() == pytest.approx(math.sqrt(5.0))
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[2:] = True
    assert group_registration_error(psi, mask=mask).item() == pytest.approx(3.0)


def test_gwi_rms_unbiased_and_biased():
    res = torch.zeros(2, 2, 4, 4)
    res[0, 1, :2], res[0, 1, 2:] = 1.0, 3.0
    res[1] = -res[0]
    offset = res + 7.0  # a common offset: removed by the unbiased version
    assert group_warping_index(res).item() == pytest.approx(math.sqrt(5.0))
    assert group_warping_index(offset).item() == pytest.approx(math.sqrt(5.0))
    assert group_warping_index(offset, unbiased=False).item() > 7
    per_image = torch.ones(2, 1, 4, 4)
    per_image[0, 0, :2] = 0  # image 0 only on the "3" half, image 1 everywhere
    assert group_warping_index(res, mask=per_image).item() == pytest.approx((3.0 + math.sqrt(5.0)) / 2)


def test_group_dice_known_values_and_empty_structures():
    lab = torch.randint(0, 4, (3, 1, 10, 10))
    lab[:, :, 0, :4] = torch.tensor([1, 2, 3, 0])  # every class present
    same = lab[:1].expand(3, -1, -1, -1)
    assert group_dice(same) == pytest.approx(1.0)
    disjoint = torch.zeros(2, 1, 6, 6, dtype=torch.long)
    disjoint[0, 0, :3] = 1
    disjoint[1, 0, 3:] = 1
    assert group_dice(disjoint) == 0.0
    part = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    part[0, 0, 0, :4] = 1  # |A| = 4
    part[1, 0, 0, :2] = 1  # |B| = 2, |A∩B| = 2 -> 2*2/6
    part[:, 0, 3, 3] = 2  # class 2 identical -> 1
    assert group_dice(part, per_class=True) == pytest.approx({1: 2 / 3, 2: 1.0})
    assert group_dice(part) == pytest.approx((2 / 3 + 1) / 2)
    # class 3 absent from both maps: skipped, not counted as 0 or 1; per class it is NaN
    assert group_dice(part, classes=[1, 2, 3]) == pytest.approx((2 / 3 + 1) / 2)
    assert math.isnan(group_dice(part, classes=[3], per_class=True)[3])
    with pytest.raises(ValueError, match="no pair"):
        group_dice(part, classes=[3])
    with pytest.raises(ValueError, match="N >= 2"):
        group_dice(part[:1])
    with pytest.raises(TypeError, match="integer"):
        group_dice(part.float())


def test_assd_of_shifted_square_matches_analytic_value():
    """10x10 square, boundary = its 1-voxel ring (36 voxels), spacing (s0, s1) = (2.0, 0.5) mm.

    Shift by 1 voxel along axis 0: A's top row is 1 row from B's top row (10 x s0 = 20); A's bottom row lies
    inside B, distance min(min(m, 9-m) s1, s0) for m = 0..9 (sum 10); A's side columns lie on B's side columns (0).
    By symmetry B -> A gives the same 30, so ASSD = 60 / 72 mm. Shift along axis 1 instead: A's left column
    10 x s1 = 5, A's right column min(min(m, 9-m) s0, s1) = 8 x 0.5 = 4, rows 0: ASSD = 18 / 72 mm.
    """
    spacing = (2.0, 0.5)
    base = torch.zeros(1, 1, 20, 20, dtype=torch.long)
    base[..., 4:14, 4:14] = 1
    down = torch.roll(base, 1, dims=2)
    right = torch.roll(base, 1, dims=3)
    assert assd(torch.cat([base, down]), spacing) == pytest.approx(60 / 72)
    assert assd(torch.cat([base, right]), spacing) == pytest.approx(18 / 72)
    assert assd(torch.cat([base, base, base]), spacing) == 0.0
    # three maps: pairs (0,1), (0,2), (1,2) averaged
    assert assd(torch.cat([base, base, down]), spacing) == pytest.approx(2 / 3 * 60 / 72)
    with pytest.raises(ValueError, match="undefined"):
        assd(torch.cat([base, torch.zeros_like(base)]), spacing)


def test_folding_percentage():
    grid = sp.identity_grid((8, 8), (1.0, 2.0))
    flip = sp.apply_matrix(torch.tensor([[[-1.0, 0, 0], [0, 1, 0]]]), grid) - grid
    assert folding_percentage(torch.cat([flip, torch.zeros_like(flip)]), (1.0, 2.0)).tolist() == [100.0, 0.0]


def test_bad_input_raises_specific_errors():
    psi = torch.randn(3, 2, 6, 6)
    with pytest.raises(ValueError, match="empty"):
        group_registration_error(psi, mask=torch.zeros(6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        group_registration_error(psi, mask=torch.ones(5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="N >= 2"):
        group_registration_error(psi[:1])
    bad = psi.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        group_registration_error(bad)
    with pytest.raises(ValueError, match="one channel per spatial axis"):
        group_warping_index(torch.randn(3, 3, 6, 6))
    with pytest.raises(ValueError, match="spacing"):
        assd(torch.zeros(2, 1, 6, 6, dtype=torch.long), (1.0,))


@CUDA
def test_same_results_on_cuda():
    psi = torch.randn(3, 2, 16, 16)
    mask = torch.rand(16, 16) > 0.3
    for f in (lambda p, m: group_registration_error(p, m), lambda p, m: group_registration_error(p, m, rms=True),
              lambda p, m: group_warping_index(p, m), lambda p, m: folding_percentage(p, (1.0, 1.0))):
        assert torch.allclose(f(psi, mask), f(psi.cuda(), mask.cuda()).cpu(), atol=1e-5)
    lab = torch.randint(0, 3, (3, 1, 16, 16))
    assert group_dice(lab) == pytest.approx(group_dice(lab.cuda()), abs=1e-6)
    assert assd(lab, (1.0, 2.0)) == pytest.approx(assd(lab.cuda(), (1.0, 2.0)))
