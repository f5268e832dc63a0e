"""CG: congealing (Learned-Miller, TPAMI 2006) — the sum of voxel-wise stack entropies (mono-modal)."""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .base import GroupObjective, GroupSample


def _stack_entropy(sv: Tensor, sigma: float) -> Tensor:
    """Sum over voxels of the leave-in Parzen entropy of the N values of each voxel stack; ``sv [N, M]``."""
    n = sv.shape[0]
    d = sv[:, None, :] - sv[None, :, :]                                  # [N, N, M]
    log_k = -0.5 * (d / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))
    log_p = torch.logsumexp(log_k, dim=1) - math.log(n)                  # [N, M]
    return -(log_p.mean(0)).sum()


class Congealing(GroupObjective):
    """``L(phi) = -(1/|M|) sum_x (1/N) sum_i log[(1/N) sum_j G_sigma(u_i(x) - u_j(x))]`` (spec §6.1, ``win = 1``).

    Assumes the intensities agree across images (mono-modal); the images are z-scored by the loop. Cost per
    iteration O(N^2 |Omega|) (all pairs at every voxel); the voxels are processed in chunks with gradient
    checkpointing so memory stays O(N^2 chunk).

    Args:
        kernel_sigma: Gaussian Parzen width in z-score units (official default 1).
        chunk_elements: maximal N^2 x voxels handled at once.
    """

    name = "cg"

    def __init__(self, kernel_sigma: float = 1.0, chunk_elements: int = 1 << 24) -> None:
        if kernel_sigma <= 0:
            raise ValueError(f"kernel_sigma must be > 0, got {kernel_sigma}")
        self.sigma = float(kernel_sigma)
        self.chunk_elements = int(chunk_elements)

    def loss(self, sample: GroupSample) -> Tensor:
        sv = sample.sampled()
        n, m = sv.shape
        step = max(1, self.chunk_elements // (n * n))
        if step >= m:
            return _stack_entropy(sv, self.sigma) / m
        total = sv.new_zeros(())
        for start in range(0, m, step):
            part = sv[:, start:start + step]
            if part.requires_grad:
                total = total + checkpoint(_stack_entropy, part, self.sigma, use_reentrant=False)
            else:
                total = total + _stack_entropy(part, self.sigma)
        return total / m
