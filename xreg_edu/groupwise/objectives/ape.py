"""APE: accumulated pairwise estimates (Wachinger & Navab, TPAMI 2013) — the sum of all pairwise MIs."""
from __future__ import annotations

import torch
from torch import Tensor

from ... import density as D
from .base import GroupObjective, GroupSample


class APE(GroupObjective):
    """``L(phi) = -(2 / (N - 1)) sum_{i<j} MI(u_i o phi_i, u_j o phi_j)`` (N x the mean pairwise MI, as the official code).

    All N(N-1)/2 joint histograms come from one matrix product of the dense sample-by-bin B-spline membership
    matrices, ``W^T W`` (the official dense estimator), so the cost per iteration is O(L^2 N^2 |Omega|)
    (with M = rho |Omega| sampled voxels and L + 4 bins), quadratic in N; memory O(N L |Omega| + N^2 L^2).

    Args:
        bins: L.
    """

    name = "ape"

    def __init__(self, bins: int = 32) -> None:
        self.bins = bins

    def pairwise_mi(self, sample: GroupSample) -> Tensor:
        """``[N, N]`` matrix of pairwise MIs (diagonal = marginal entropies), differentiable."""
        sv = sample.sampled()
        n, m = sv.shape
        lo, hi = D.bin_range(sv, sample.bounds)                          # robust range: outliers -> edge bins
        dense = D.dense_weights(sv, self.bins, lo=lo, hi=hi)              # [N, M, B]
        b = dense.shape[2]
        flat = dense.permute(0, 2, 1).reshape(n * b, m)                   # [N*B, M]
        joint = (flat @ flat.t()).view(n, b, n, b).permute(0, 2, 1, 3)   # [N, N, B, B]
        return D.joint_mutual_information(joint)

    def loss(self, sample: GroupSample) -> Tensor:
        n = sample.num_images
        mi = self.pairwise_mi(sample)
        iu = torch.triu_indices(n, n, offset=1, device=mi.device)
        return -(2.0 / (n - 1)) * mi[iu[0], iu[1]].sum()
