"""Known-answer tests for xreg_edu.info: MI (eq. 1), total correlation (eq. 2), I(U;Z) (eq. 3-4), X-metric (eq. 5),
the eq. 6 objective, plus real multi-modal brain MRI checks (open_ms, patient07)."""
import math

import pytest
import torch

from xreg_edu import density as D
from xreg_edu import info as I
from conftest import open_ms_file

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# κ = entropy of the degree-7 B-spline at the integers (autocorrelation of the cubic B-spline): the Parzen
# estimator's MI(x, x) falls short of H(x) by κ for smooth densities.
_B7 = [1 / 5040, 120 / 5040, 1191 / 5040, 2416 / 5040, 1191 / 5040, 120 / 5040, 1 / 5040]
KAPPA = -sum(p * math.log(p) for p in _B7)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _gaussian_pair(rho, n=256, seed=0, dtype=torch.float64):
    z = torch.randn(2, n * n, generator=_gen(seed), dtype=dtype)
    x = z[0]
    y = rho * z[0] + math.sqrt(1 - rho ** 2) * z[1]
    return x.reshape(1, 1, n, n), y.reshape(1, 1, n, n)


def _gaussian_group(R, n=256, seed=0, dtype=torch.float64):
    R = torch.as_tensor(R, dtype=dtype)
    u = torch.linalg.cholesky(R) @ torch.randn(R.shape[0], n * n, generator=_gen(seed), dtype=dtype)
    return u.reshape(R.shape[0], 1, n, n)


# ----------------------------------------------------------------------------------------------- eq. 1
@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_mi_of_correlated_gaussians(rho):
    # tolerance 0.01 + 4 % of the true value: at M = 65 536 samples and L = 64 the plug-in bias is < +0.006 and the
    # B-spline smoothing (kernel variance Δ²/3) costs ~3 % at ρ = 0.9
    x, y = _gaussian_pair(rho, seed=int(rho * 10))
    true = -0.5 * math.log(1 - rho ** 2)
    mi = float(I.mutual_information(x, y, bins=64))
    assert abs(mi - true) <= 0.01 + 0.04 * true, (mi, true)


def test_mi_of_independent_images_is_zero():
    x, y = _gaussian_pair(0.0, seed=1)
    assert abs(float(I.mutual_information(x, y, bins=32))) < 0.005
    u = torch.rand(2, 1, 128, 128, generator=_gen(2), dtype=torch.float64)
    assert abs(float(I.mutual_information(u[:1], u[1:], bins=32))) < 0.02


def test_mi_self_equals_entropy_minus_kernel_overlap():
    # Parzen estimator: MI(x, x) = H(x) - κ with κ = 1.2157 nats (see KAPPA); exactly H(x) only for hard bins
    for dist in ("uniform", "gauss"):
        g = _gen(3)
        x = torch.rand(1, 1, 256, 256, generator=g) if dist == "uniform" else torch.randn(1, 1, 256, 256, generator=g)
        H = float(I.entropy(x, bins=64))
        mi = float(I.mutual_information(x, x, bins=64))
        assert mi < H
        assert abs((H - mi) - KAPPA) < 0.02, (H - mi, KAPPA)


def test_mi_invariant_under_monotone_remap():
    x, y = _gaussian_pair(0.6, seed=4)
    base = float(I.mutual_information(x, y, bins=64))
    assert abs(float(I.mutual_information(x, 3.0 * y - 7.0, bins=64)) - base) < 1e-6   # affine: exact
    assert abs(float(I.mutual_information(x, -y, bins=64)) - base) < 1e-6              # reversal: exact
    for remap in (torch.sigmoid, lambda v: torch.exp(v / 2)):                           # smooth monotone
        assert abs(float(I.mutual_information(x, remap(y), bins=64)) - base) < 0.02
    assert abs(float(I.mutual_information(remap(x), y, bins=64)) - base) < 0.02


def test_mi_nmi_conditional_entropy_identities():
    x, y = _gaussian_pair(0.7, n=128, seed=5)
    hx, hy = I.entropy(x, 32), I.entropy(y, 32)
    mi = I.mutual_information(x, y, 32)
    ce = I.conditional_entropy(x, y, 32)
    nmi = I.normalized_mutual_information(x, y, 32)
    assert torch.allclose(ce, hx - mi, atol=1e-9)
    hxy = hx + hy - mi
    assert torch.allclose(nmi, (hx + hy) / hxy, atol=1e-9)
    assert 1.0 < float(nmi) < 2.0


def test_mask_and_sampling():
    x, y = _gaussian_pair(0.8, n=96, seed=6)
    mask = torch.zeros(96, 96, dtype=torch.bool)
    mask[10:70, 20:90] = True
    y = y.clone()
    y[0, 0, ~mask] = torch.randn(int((~mask).sum()), generator=_gen(7), dtype=y.dtype)   # noise outside the mask
    sel = mask.reshape(-1)
    ref = D.joint_histogram(x.reshape(-1)[sel], y.reshape(-1)[sel], 32)
    p = ref / ref.sum()
    ref_mi = D.entropy(p.sum(1)) + D.entropy(p.sum(0)) - D.entropy(p)
    assert torch.allclose(I.mutual_information(x, y, 32, mask=mask), ref_mi, atol=1e-9)
    assert torch.allclose(I.mutual_information(x, y, 32, mask=mask[None, None]), ref_mi, atol=1e-9)
    assert float(I.mutual_information(x, y, 32)) < float(ref_mi) - 0.05
    a = I.mutual_information(x, y, 32, mask=mask, sample_rate=0.5, generator=_gen(1))
    b = I.mutual_information(x, y, 32, mask=mask, sample_rate=0.5, generator=_gen(1))
    assert float(a) == float(b) and abs(float(a) - float(ref_mi)) < 0.1


def test_mi_gradcheck():
    # float64, 8x8 images; the extreme voxels are fixed so that the detached bin range does not move under the
    # finite-difference perturbation (the analytic gradient deliberately ignores the range)
    g = _gen(8)
    xin = torch.rand(62, generator=g, dtype=torch.float64, requires_grad=True)
    yin = (xin.detach() ** 2 + 0.2 * torch.rand(62, generator=g, dtype=torch.float64)).requires_grad_(True)
    ext = torch.tensor([-0.2, 1.3], dtype=torch.float64)

    def f(a, b):
        x = torch.cat((ext, a)).reshape(1, 1, 8, 8)
        y = torch.cat((ext, b)).reshape(1, 1, 8, 8)
        return I.mutual_information(x, y, bins=6)

    assert torch.autograd.gradcheck(f, (xin, yin), eps=1e-6, atol=1e-6, fast_mode=True)


def test_x_metric_gradcheck():
    g = _gen(9)
    vin = torch.rand(2, 62, generator=g, dtype=torch.float64, requires_grad=True)
    post = torch.softmax(3 * torch.randn(3, 8, 8, generator=g, dtype=torch.float64), 0)
    ext = torch.tensor([[-0.2, 1.3]] * 2, dtype=torch.float64)

    def f(v):
        return I.x_metric(torch.cat((ext, v), 1).reshape(2, 1, 8, 8), post, bins=6)

    assert torch.autograd.gradcheck(f, (vin,), eps=1e-6, atol=1e-6, fast_mode=True)


# ----------------------------------------------------------------------------------------------- eq. 2
R3 = [[1.0, 0.6, 0.3], [0.6, 1.0, 0.5], [0.3, 0.5, 1.0]]


def test_total_correlation_gaussian_triple():
    u = _gaussian_group(R3, seed=10)
    true = -0.5 * math.log(torch.linalg.det(torch.tensor(R3, dtype=torch.float64)).item())   # 0.3670
    assert abs(float(I.gaussian_total_correlation(u)) - true) < 0.01
    assert abs(float(I.total_correlation(u, "gaussian")) - true) < 0.01
    # 3-D Parzen histogram, L = 32 (36³ cells, 65 536 samples): smoothing bias ~ -0.01
    assert abs(float(I.total_correlation(u, "histogram", bins=32)) - true) < 0.03
    # leave-one-out KDE on 1500 voxels: noisy (sd ~0.02) -> looser tolerance, averaged over 3 seeds
    kde = sum(float(I.total_correlation(u, "kde", num_samples=1500, generator=_gen(s))) for s in range(3)) / 3
    assert abs(kde - true) < 0.06, kde


def test_total_correlation_nonnegative_and_n2_equals_mi():
    g = _gen(11)
    for u in (torch.rand(3, 1, 64, 64, generator=g), _gaussian_group(R3, n=64, seed=12).float(),
              torch.rand(4, 1, 32, 32, generator=g)):
        assert float(I.total_correlation(u, "histogram", bins=8)) >= 0.0
        assert float(I.total_correlation(u, "gaussian")) >= 0.0
    x, y = _gaussian_pair(0.5, n=96, seed=13)
    tc = I.total_correlation(torch.cat((x, y)), "histogram", bins=16)
    assert torch.allclose(tc, I.mutual_information(x, y, bins=16), atol=1e-9)
    assert abs(float(I.total_correlation(torch.cat((x, y)), "gaussian")) + 0.5 * math.log(1 - 0.25)) < 0.01


def test_total_correlation_errors():
    with pytest.raises(ValueError, match="kde"):
        I.total_correlation(torch.rand(5, 1, 16, 16), "histogram")
    with pytest.raises(ValueError, match="N >= 2"):
        I.total_correlation(torch.rand(1, 1, 16, 16), "gaussian")
    with pytest.raises(ValueError, match="method"):
        I.total_correlation(torch.rand(3, 1, 16, 16), "magic")
    # kde and gaussian work beyond N = 4
    u = torch.rand(6, 1, 32, 32, generator=_gen(14))
    assert torch.isfinite(I.total_correlation(u, "kde", num_samples=300, generator=_gen(0)))
    assert torch.isfinite(I.total_correlation(u, "gaussian"))


# ----------------------------------------------------------------------------------------------- eq. 3-6
def _label_group(n=64, N=3, K=4, seed=15, noise=0.05, dtype=torch.float64):
    g = _gen(seed)
    labels = torch.randint(0, K, (n // 8, n // 8), generator=g).repeat_interleave(8, 0).repeat_interleave(8, 1)
    table = torch.rand(N, K, generator=g, dtype=dtype)
    imgs = table[:, labels] + noise * torch.randn(N, n, n, generator=g, dtype=dtype)
    return imgs.unsqueeze(1), labels


def test_x_metric_one_hot_equals_sum_of_label_mi():
    # with a one-hot posterior I(U_j; Z) equals MI(U_j, label image): the labels' B-spline spread is the same for
    # every voxel of a class and the classes stay >= 4 bins apart (L / (K-1) = 10.7), so nothing is lost
    imgs, labels = _label_group()
    post = I.labels_to_posterior(labels, 4, dtype=torch.float64)
    terms = I.x_metric_terms(imgs, post, bins=32)
    lab = labels.to(torch.float64)[None, None]
    ref = torch.stack([I.mutual_information(imgs[j:j + 1], lab, bins=32) for j in range(3)])
    assert torch.allclose(terms, ref, atol=1e-6)
    assert torch.allclose(I.x_metric(imgs, post, bins=32), ref.sum(), atol=1e-6)


def test_x_metric_bounds_and_gradient():
    imgs, labels = _label_group(noise=0.01)
    K = 4
    post = I.labels_to_posterior(labels, K, dtype=torch.float64)
    x = I.x_metric(imgs, post, bins=32)
    hz = float(D.entropy(post.sum((1, 2))))
    assert 0.0 <= float(x) <= 3 * math.log(K) + 1e-9
    assert (I.x_metric_terms(imgs, post, 32) <= hz + 1e-9).all()
    assert float(x) > 0.8 * 3 * hz                                   # nearly noise-free: U_j almost determines Z
    soft = torch.softmax(torch.randn(K, 64, 64, generator=_gen(16), dtype=torch.float64), 0)
    assert 0.0 <= float(I.x_metric(imgs, soft, 32)) < float(x)
    # gradient flows to the images, not to a fixed (no-grad) posterior
    im = imgs.clone().requires_grad_(True)
    I.x_metric(im, post, 32).backward()
    assert im.grad.abs().sum() > 0 and torch.isfinite(im.grad).all()
    # posterior [1, K, *S] accepted; sampling is reproducible
    assert torch.allclose(I.x_metric(imgs, post[None], 32), x)
    a = I.x_metric(imgs, post, 32, sample_rate=0.3, generator=_gen(2))
    assert float(a) == float(I.x_metric(imgs, post, 32, sample_rate=0.3, generator=_gen(2)))


def test_eq5_identity_tc_plus_posterior_information():
    # X = C(U) + I(U; Z): the joint entropy H(U) cancels exactly with consistent bins
    imgs, labels = _label_group(n=48, noise=0.1)
    post = 0.9 * I.labels_to_posterior(labels, 4, dtype=torch.float64) + 0.025
    for bins in (8, 16):
        tc = I.total_correlation(imgs, "histogram", bins=bins)
        iuz = I.posterior_information(imgs, post, bins=bins)
        assert torch.allclose(tc + iuz, I.x_metric(imgs, post, bins=bins), atol=1e-8)


def test_x_objective_parts():
    imgs, labels = _label_group(noise=0.05)
    post = 0.96 * I.labels_to_posterior(labels, 4, dtype=torch.float64) + 0.01
    total, parts = I.x_objective(imgs, post, appearance="hist", bins=32, details=True)
    assert torch.allclose(parts["x_metric"], I.x_metric(imgs, post, 32))
    assert torch.allclose(total, parts["x_metric"] + parts["expected_log_likelihood"])
    assert torch.allclose(parts["prior"], post.mean((1, 2)))
    # with π = mean γ and the soft read-out, Jensen gives Q >= -H(Z) - Σ_j H(U_j | Z) (per voxel), nearly equal
    h = D.class_histogram(imgs.reshape(3, -1), post.reshape(4, -1).T, 32)
    p = h / h.sum((1, 2), keepdim=True)
    hz = D.entropy(p[0].sum(1))
    h_cond = D.entropy(p, dim=(1, 2)) - hz
    bound = -hz - h_cond.sum()
    q = parts["expected_log_likelihood"]
    assert float(q) >= float(bound) - 1e-9 and float(q) < float(bound) + 0.5
    assert torch.allclose(I.x_objective(imgs, post, appearance=None, bins=32), parts["x_metric"])
    # Gaussian class model: finite, differentiable, better fit (higher Q) for the true labels than a random posterior
    im = imgs.clone().requires_grad_(True)
    tg, pg = I.x_objective(im, post, prior=torch.full((4,), 0.25), appearance="gauss", bins=32, details=True)
    tg.backward()
    assert torch.isfinite(im.grad).all() and im.grad.abs().sum() > 0
    rnd = torch.softmax(torch.randn(4, 64, 64, generator=_gen(3), dtype=torch.float64), 0)
    _, pr = I.x_objective(imgs, rnd, appearance="gauss", details=True)
    assert float(pg["expected_log_likelihood"].detach()) > float(pr["expected_log_likelihood"])


def test_labels_to_posterior():
    lab = torch.tensor([[0, 200], [500, 600]])
    p = I.labels_to_posterior(lab, values=(0, 200, 500, 600))
    assert p.shape == (4, 2, 2) and torch.equal(p.argmax(0), torch.tensor([[0, 1], [2, 3]]))
    assert torch.equal(I.labels_to_posterior(lab[None, None]), p)
    with pytest.raises(ValueError):
        I.labels_to_posterior(lab, 3)
    with pytest.raises(ValueError, match="K >= 2"):
        I.labels_to_posterior(torch.zeros(3, 3, dtype=torch.long))


def test_bad_inputs_raise_specific_errors():
    x = torch.rand(1, 1, 16, 16)
    imgs = torch.rand(3, 1, 16, 16)
    post = torch.softmax(torch.randn(4, 16, 16), 0)
    with pytest.raises(ValueError, match="same shape"):
        I.mutual_information(x, torch.rand(1, 1, 16, 17))
    bad = x.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        I.mutual_information(bad, x)
    with pytest.raises(ValueError, match="non-finite"):
        I.x_metric(torch.cat((imgs, bad)), post)
    with pytest.raises(ValueError, match="empty"):
        I.mutual_information(x, x, mask=torch.zeros(16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        I.mutual_information(x, x, mask=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="bins"):
        I.mutual_information(x, x, bins=1)
    with pytest.raises(ValueError, match="bins"):
        I.x_metric(imgs, post, bins=0)
    with pytest.raises(ValueError, match="sample_rate"):
        I.mutual_information(x, x, sample_rate=1.5)
    with pytest.raises(ValueError, match="sum to 1"):
        I.x_metric(imgs, 2 * post)
    with pytest.raises(ValueError, match="shape"):
        I.x_metric(imgs, post[:, :8])
    with pytest.raises(ValueError, match="K >= 2"):
        I.x_metric(imgs, torch.ones(1, 16, 16))
    with pytest.raises(ValueError, match="negative"):
        I.x_metric(imgs, post.roll(1, 0) * 2 - post)
    with pytest.raises(ValueError, match="N >= 2"):
        I.gaussian_total_correlation(x)
    with pytest.raises(ValueError, match="N <= 4"):
        I.posterior_information(torch.rand(5, 1, 16, 16), post)
    with pytest.raises(TypeError):
        I.mutual_information(x.numpy(), x)
    with pytest.raises(ValueError, match="shape"):
        I.mutual_information(imgs, imgs)


def test_3d_inputs():
    g = _gen(17)
    z = torch.randn(2, 32 ** 3, generator=g, dtype=torch.float64)
    x = z[0].reshape(1, 1, 32, 32, 32)
    y = (0.8 * z[0] + 0.6 * z[1]).reshape(1, 1, 32, 32, 32)
    assert abs(float(I.mutual_information(x, y, 32)) - (-0.5 * math.log(1 - 0.64))) < 0.05
    labels = (torch.rand(32, 32, 32, generator=g) * 3).long()
    post = I.labels_to_posterior(labels, 3, dtype=torch.float64)
    imgs = torch.stack((labels.double(), (2 - labels).double() ** 2))[:, None] + 0.05 * torch.randn(
        2, 1, 32, 32, 32, generator=g, dtype=torch.float64)
    assert float(I.x_metric(imgs, post, 16)) > 0.9 * 2 * math.log(3)


@cuda
def test_info_same_on_cuda():
    imgs, labels = _label_group(dtype=torch.float32)
    post = I.labels_to_posterior(labels, 4)
    x, y = _gaussian_pair(0.6, n=64, dtype=torch.float32)
    for f in (lambda a, p, u, v: I.mutual_information(u, v, 32),
              lambda a, p, u, v: I.x_metric_terms(a, p, 32),
              lambda a, p, u, v: I.total_correlation(a, "histogram", bins=16),
              lambda a, p, u, v: I.total_correlation(a, "gaussian"),
              lambda a, p, u, v: I.posterior_information(a, p, 16),
              lambda a, p, u, v: I.x_objective(a, p, appearance="hist")):
        cpu = f(imgs, post, x, y)
        gpu = f(imgs.cuda(), post.cuda(), x.cuda(), y.cuda())
        assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------- real images
@pytest.fixture(scope="module")
def open_ms_slice():
    """patient07 T1/T2/FLAIR (MNI, co-registered), middle axial slice, 2x2 average-pooled to 91x109, [0,1]."""
    import nibabel as nib

    out = []
    for mod in ("T1", "T2", "FLAIR"):
        path = open_ms_file(mod)
        vol = nib.load(str(path)).dataobj
        sl = torch.tensor(vol[:, :, vol.shape[2] // 2], dtype=torch.float32)
        sl = torch.nn.functional.avg_pool2d(sl[None, None], 2)[0, 0]
        sl = sl.clamp_min(0)
        out.append(sl / sl.max())
    return torch.stack(out)[:, None]                               # [3, 1, 91, 109]


def _tissue_posterior(t1: torch.Tensor) -> torch.Tensor:
    """'True' tissue labels of the aligned group: background (T1 = 0 outside the skull-stripped brain) and three
    T1 intensity terciles of the brain (~CSF / GM / WM) -> one-hot [4, *S]."""
    brain = t1 > 0.02
    q = torch.quantile(t1[brain], torch.tensor([1 / 3, 2 / 3]))
    lab = torch.zeros_like(t1, dtype=torch.long)
    lab[brain] = 1 + torch.bucketize(t1[brain], q)
    return I.labels_to_posterior(lab, 4)


def _crop(img, dy, dx, m=6):
    H, W = img.shape[-2:]
    return img[..., m + dy:H - m + dy, m + dx:W - m + dx]


def test_real_group_mi_and_x_metric_peak_at_zero_shift(open_ms_slice):
    t1, t2, fl = open_ms_slice
    post = _tissue_posterior(_crop(t1[0], 0, 0))
    shifts = range(-6, 7)
    for axis in (0, 1):
        mi, xm = [], []
        for t in shifts:
            dy, dx = (t, 0) if axis == 0 else (0, t)
            t2s = _crop(t2, dy, dx)[None]
            mi.append(float(I.mutual_information(_crop(t1, 0, 0)[None], t2s, bins=32)))
            grp = torch.stack((_crop(t1, 0, 0), _crop(t2, dy, dx), _crop(fl, 0, 0)))
            xm.append(float(I.x_metric(grp, post, bins=32)))
        assert max(range(13), key=lambda i: mi[i]) == 6, (axis, mi)
        assert max(range(13), key=lambda i: xm[i]) == 6, (axis, xm)


def test_real_group_x_metric_aligned_beats_misaligned(open_ms_slice):
    t1, t2, fl = open_ms_slice
    post = _tissue_posterior(_crop(t1[0], 0, 0))
    aligned = torch.stack((_crop(t1, 0, 0), _crop(t2, 0, 0), _crop(fl, 0, 0)))
    misaligned = torch.stack((_crop(t1, 0, 0), _crop(t2, 4, -3), _crop(fl, -3, 5)))
    xa = float(I.x_metric(aligned, post, bins=32))
    xm = float(I.x_metric(misaligned, post, bins=32))
    assert xa > xm + 0.1, (xa, xm)
    assert xa <= 3 * math.log(4)
    # TC and APE-style sums also prefer the aligned group (N = 3, small histogram)
    assert float(I.total_correlation(aligned, bins=16)) > float(I.total_correlation(misaligned, bins=16))
