"""CTE: conditional template entropy (Polfliet et al., MedIA 2018) with a PCA template."""
from __future__ import annotations

import torch
from torch import Tensor

from ...density import bin_range, dense_weights, entropy
from .base import GroupObjective, GroupSample


class CTE(GroupObjective):
    """``L(phi) = sum_j H(T | u_j o phi_j)``, ``T = sum_j e_j u_j o phi_j`` with e the principal eigenvector of the N x N
    correlation matrix of the z-scored warped images (statistics detached, gradient through T and e as in the
    official code, spec §6.3).

    Cost per iteration O(N^2 |Omega| + N^3 + L^2 N |Omega|): the correlation matrix, its eigen-decomposition, and N
    dense template-image joint histograms. Here the PCA uses the sampled mask voxels (the official code uses every
    voxel of the grid, background included, spec §10 item 6).

    Args:
        bins: L.
    """

    name = "cte"

    def __init__(self, bins: int = 32) -> None:
        self.bins = bins

    def template(self, sv: Tensor) -> Tensor:
        """``[M]`` PCA template from ``[N, M]`` warped intensities."""
        m = sv.shape[1]
        mean = sv.detach().mean(1, keepdim=True)
        std = sv.detach().std(1, keepdim=True).clamp_min(1e-6)
        x = (sv - mean) / std
        corr = x @ x.t() / m
        lam, vecs = torch.linalg.eigh(corr)
        lam = lam.detach()
        e = vecs[:, -1]
        # eigh's gradient has 1 / (lambda_i - lambda_j): with a (near-)degenerate top eigenvalue (e.g. constant
        # images) keep the eigenvector fixed instead of producing NaN
        gap, top = float(lam[-1] - lam[-2]), float(lam[-1].abs())
        if gap <= 1e-6 * max(top, 1e-12):
            e = e.detach()
        return e @ sv

    def loss(self, sample: GroupSample) -> Tensor:
        sv = sample.sampled()
        t = self.template(sv)[None]                                      # [1, M]
        allv = torch.cat([t, sv], 0)                                     # [N+1, M]
        lo, hi = bin_range(allv)
        dense = dense_weights(allv, self.bins, lo=lo, hi=hi)             # [N+1, M, B]
        joint = torch.einsum("mb,nmc->nbc", dense[0], dense[1:])         # [N, B, B] (template x image)
        h_joint = entropy(joint, dim=(1, 2))
        h_img = entropy(joint.sum(1), dim=1)
        return (h_joint - h_img).sum()
