"""The groupwise constraint: the common space is the group mean (spec §7.3)."""
from __future__ import annotations

from torch import Tensor


def recentre(params: Tensor) -> Tensor:
    """Subtract the group mean so the mean transform is the identity: ``[N, ...]`` -> ``[N, ...]``.

    Used as a re-parameterisation inside every module's forward, so the optimiser may move the raw parameters
    freely while the effective ones always satisfy ``(1/N) sum_j theta_j = 0``.
    """
    return params - params.mean(dim=0, keepdim=True)
