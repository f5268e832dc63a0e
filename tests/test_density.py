"""Known-answer tests for xreg_edu.density (B-spline Parzen histograms, entropies, KDE, sampling)."""
import math

import pytest
import torch

from xreg_edu import density as D

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_bspline_kernel_values_and_partition_of_unity():
    d = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, -1.0])
    expect = torch.tensor([4 / 6, 23 / 48, 1 / 6, 1 / 48, 0.0, 0.0, 1 / 6])
    assert torch.allclose(D.bspline_kernel(d), expect, atol=1e-7)
    s = torch.rand(1000, generator=_gen()) * 10
    total = D.bspline_kernel(s[:, None] - torch.arange(-3, 14)).sum(1)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


def test_parzen_weights_match_kernel_and_sum_to_one():
    x = torch.randn(2, 500, generator=_gen(1), dtype=torch.float64)
    L = 16
    index, w = D.parzen_weights(x, L)
    s, lo, width = D.bin_coordinates(x, L)
    assert index.shape == (2, 500, 4) and w.shape == (2, 500, 4)
    assert int(index.min()) >= 0 and int(index.max()) <= L + 3
    assert torch.allclose(w.sum(-1), torch.ones(2, 500, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(w, D.bspline_kernel(s.unsqueeze(-1) - index.to(s.dtype)), atol=1e-12)
    # detached range: lo / width carry no gradient, s spans [2, L + 2]
    assert not lo.requires_grad and torch.allclose(s.amin(-1), torch.full((2,), 2.0, dtype=s.dtype))
    assert torch.allclose(s.amax(-1), torch.full((2,), L + 2.0, dtype=s.dtype))


def test_sparse_joint_histogram_equals_dense_reference():
    g = _gen(2)
    x = torch.randn(3000, generator=g, dtype=torch.float64)
    y = x ** 2 + 0.3 * torch.randn(3000, generator=g, dtype=torch.float64)
    for L in (8, 32):
        sparse = D.joint_histogram(x, y, L)
        dense = D.dense_joint_histogram(x, y, L)
        assert sparse.shape == (L + 4, L + 4)
        assert torch.allclose(sparse, dense, atol=1e-9)
        assert math.isclose(float(sparse.sum()), 3000.0, rel_tol=1e-12)
    # gradients agree too
    xs = x.clone().requires_grad_(True)
    xd = x.clone().requires_grad_(True)
    probe = torch.randn(36, 36, generator=g, dtype=torch.float64)
    (D.joint_histogram(xs, y, 32) * probe).sum().backward()
    (D.dense_joint_histogram(xd, y, 32) * probe).sum().backward()
    assert torch.allclose(xs.grad, xd.grad, atol=1e-9)


def test_marginals_batching_and_class_histogram():
    g = _gen(3)
    v = torch.randn(3, 2000, generator=g, dtype=torch.float64)
    L = 20
    h = D.histogram(v, L)                                   # batched [3, L+4]
    for j in range(3):
        assert torch.allclose(h[j], D.histogram(v[j], L), atol=1e-10)
    jh = D.joint_histogram(v[0], v[1], L)
    assert torch.allclose(jh.sum(1), h[0], atol=1e-9) and torch.allclose(jh.sum(0), h[1], atol=1e-9)
    # batched joint histogram of pairs
    pairs = D.joint_histogram(v[:2], v[1:], L)
    assert torch.allclose(pairs[1], D.joint_histogram(v[1], v[2], L), atol=1e-9)
    # class histogram with a one-hot posterior = per-class weighted histograms; sums over k = 1-D histogram
    labels = torch.randint(0, 4, (2000,), generator=g)
    post = torch.nn.functional.one_hot(labels, 4).double()
    ch = D.class_histogram(v, post, L)
    assert ch.shape == (3, 4, L + 4)
    for k in range(4):
        assert torch.allclose(ch[1, k], D.histogram(v[1], L, weights=(labels == k).double()), atol=1e-9)
    assert torch.allclose(ch.sum(1), h, atol=1e-9)
    assert torch.allclose(D.class_histogram(v[2], post, L), ch[2], atol=1e-10)


def test_nd_histogram_reduces_to_joint_and_marginals():
    g = _gen(4)
    v = torch.randn(3, 1500, generator=g, dtype=torch.float64)
    L = 10
    h3 = D.nd_histogram(v, L)
    assert h3.shape == (L + 4,) * 3
    assert torch.allclose(h3.sum(2), D.joint_histogram(v[0], v[1], L), atol=1e-9)
    assert torch.allclose(h3.sum((0, 1)), D.histogram(v[2], L), atol=1e-9)
    assert torch.allclose(D.nd_histogram(v[:2], L), D.joint_histogram(v[0], v[1], L), atol=1e-9)
    with pytest.raises(ValueError, match="curse of dimensionality"):
        D.nd_histogram(torch.randn(8, 10), 32)


def test_entropy_known_answers_and_safe_log():
    assert math.isclose(float(D.entropy(torch.ones(16))), math.log(16), rel_tol=1e-6)
    p = torch.tensor([3.0, 1.0, 0.0, 0.0], requires_grad=True)   # unnormalised, with empty bins
    H = D.entropy(p)
    assert math.isclose(H.item(), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel_tol=1e-6)
    H.backward()
    assert torch.isfinite(p.grad).all()
    batched = D.entropy(torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]), dim=1)
    assert torch.allclose(batched, torch.tensor([math.log(2), math.log(4)]))


def test_kde_entropy_gaussian_known_answer():
    # H(N(0, s²)) = ½ log(2πe s²); leave-one-out KDE with Silverman bandwidth, M = 2000: bias ≈ +½log(1+h²) ≈ 0.03
    g = _gen(5)
    for sd in (1.0, 3.0):
        x = sd * torch.randn(2000, generator=g, dtype=torch.float64)
        true = 0.5 * math.log(2 * math.pi * math.e * sd ** 2)
        assert abs(float(D.kde_entropy(x)) - true) < 0.06
    x2 = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    assert abs(float(D.kde_entropy(x2)) - math.log(2 * math.pi * math.e)) < 0.1
    with pytest.raises(ValueError):
        D.kde_entropy(torch.randn(1, 2))


def test_sample_indices_seeded_and_masked():
    mask = torch.zeros(40, 50, dtype=torch.bool)
    mask[5:25, 10:40] = True
    a = D.sample_indices(mask, 0.25, _gen(7))
    b = D.sample_indices(mask, 0.25, _gen(7))
    c = D.sample_indices(mask, 0.25, _gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.numel() == round(0.25 * 600) and torch.unique(a).numel() == a.numel()
    assert bool(mask.reshape(-1)[a].all())
    assert torch.equal(D.sample_indices(mask, 1.0), mask.reshape(-1).nonzero().squeeze(1))
    assert D.sample_indices(None, 0.1, _gen(0), numel=1000).numel() == 100
    with pytest.raises(ValueError, match="empty"):
        D.sample_indices(torch.zeros(4, 4, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError, match="sample rate"):
        D.sample_indices(mask, 0.0)


def test_bin_lookup_consistent_with_parzen_window():
    x = torch.randn(2, 1000, generator=_gen(9), dtype=torch.float64)
    L = 32
    s, lo, width = D.bin_coordinates(x, L)
    b = D.bin_lookup(x, lo, width, L)
    assert torch.equal(b, s.round().long().clamp(0, L + 3))
    index, weight = D.parzen_weights(x, L)
    heaviest = index.gather(-1, weight.argmax(-1, keepdim=True)).squeeze(-1)
    assert torch.equal(b, heaviest)                              # the nearest bin is the tap of largest weight
    far = D.bin_lookup(torch.tensor([[-1e3, 1e3]], dtype=torch.float64), lo[:1], width[:1], L)
    assert far.tolist() == [[0, L + 3]]


def test_class_log_likelihood_recovers_separated_classes():
    g = _gen(10)
    labels = torch.randint(0, 3, (3000,), generator=g)
    means = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 1.0]])
    values = means[:, labels] + 0.05 * torch.randn(2, 3000, generator=g)
    post = torch.nn.functional.one_hot(labels, 3).float()
    ll = D.class_log_likelihood(values, values, post, 32)       # [N, K, V]
    assert ll.shape == (2, 3, 3000) and not ll.requires_grad
    assert (ll.sum(0).argmax(0) == labels).float().mean() > 0.99


def test_degenerate_and_bad_inputs():
    const = torch.full((100,), 3.0, requires_grad=True)
    h = D.histogram(const, 8)                                    # width clamped with eps: no NaN
    assert torch.isfinite(h).all() and math.isclose(h.sum().item(), 100.0, rel_tol=1e-5)
    h.sum().backward()
    assert torch.isfinite(const.grad).all()
    with pytest.raises(ValueError, match="bins"):
        D.histogram(torch.randn(10), 1)
    with pytest.raises(ValueError, match="bins"):
        D.joint_histogram(torch.randn(10), torch.randn(10), 1.5)
    with pytest.raises(ValueError, match="same shape"):
        D.joint_histogram(torch.randn(10), torch.randn(11), 8)
    with pytest.raises(ValueError, match="empty"):
        D.histogram(torch.randn(0), 8)
    with pytest.raises(ValueError, match="samples"):
        D.class_histogram(torch.randn(10), torch.rand(9, 2), 8)
    with pytest.raises(TypeError):
        D.histogram(torch.arange(10), 8)


def test_gradient_flows_through_weights():
    x = torch.randn(500, generator=_gen(11), dtype=torch.float64, requires_grad=True)
    y = x.detach() + 0.1 * torch.randn(500, generator=_gen(12), dtype=torch.float64)
    h = D.joint_histogram(x, y, 16)
    H = D.entropy(h)
    H.backward()
    assert x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


@cuda
def test_density_same_on_cuda():
    g = _gen(13)
    x = torch.randn(2, 4000, generator=g)
    post = torch.softmax(torch.randn(4000, 4, generator=g), 1)
    for f in (lambda a, p: D.joint_histogram(a[0], a[1], 32), lambda a, p: D.class_histogram(a, p, 32),
              lambda a, p: D.nd_histogram(a, 16), lambda a, p: D.histogram(a, 32)):
        cpu = f(x, post)
        gpu = f(x.cuda(), post.cuda())
        assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, rtol=1e-4, atol=1e-3)
    assert torch.allclose(D.kde_entropy(x.T.cuda()).cpu(), D.kde_entropy(x.T), atol=1e-4)
