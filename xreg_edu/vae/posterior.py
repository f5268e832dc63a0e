"""Inference step #2 of BIGR-lite: the anatomy posterior q(z | u, v) as a product of experts (PoE).

Our reconstruction, *inspired by* Luo et al. (arXiv 2401.02141) and Wang, Luo & Zhuang (IPMI 2023); the official code
is not public (spec §9.2). Given the geometry, every image j contributes one "expert" — its structural representation
warped to the common space. Conditional independence of the images given Z (eq. 3) makes the posterior the
normalised product of the experts, exactly like X-CoReg's E-step (spec §4.2) with network probabilities in place of
histogram look-ups. No parameters; defined for any N.

- Categorical (C variants): ``q(z(x)=k) ∝ p(z=k) · Π_j s̃_jk(x)`` — computed as a log-sum followed by a softmax so
  that a product of hundreds of experts never underflows (spec §10 pitfall 3).
- Gaussian (P variants): the product of Gaussians is Gaussian with precision = Σ precisions and mean = the
  precision-weighted mean.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _weights(weights: Tensor | None, like: Tensor) -> Tensor | None:
    if weights is None:
        return None
    if weights.shape[0] != like.shape[0] or weights.shape[1] != 1 or weights.shape[2:] != like.shape[2:]:
        raise ValueError(f"weights must be [N, 1, *S] = [{like.shape[0]}, 1, *{tuple(like.shape[2:])}], "
                         f"got {tuple(weights.shape)}")
    return weights.to(like.dtype)


def poe_categorical(log_probs: Tensor, weights: Tensor | None = None, log_prior: Tensor | None = None) -> Tensor:
    """Normalised product of categorical experts, voxel by voxel.

    Args:
        log_probs: ``[N, K, *S]`` log-probabilities of the N experts (``log_softmax`` of the warped logits).
        weights: optional ``[N, 1, *S]`` exponents in [0, 1] (1 = the expert votes, 0 = abstains, e.g. outside
            image j's field of view). ``None`` = all experts vote.
        log_prior: optional ``[1, K, *S]`` or ``[K]`` log prior ``log p(z)``; ``None`` = uniform.

    Returns:
        ``[1, K, *S]`` posterior probabilities, summing to 1 over K at every voxel.
    """
    if log_probs.dim() < 3:
        raise ValueError(f"log_probs must be [N, K, *S], got {tuple(log_probs.shape)}")
    w = _weights(weights, log_probs)
    total = (log_probs if w is None else log_probs * w).sum(0, keepdim=True)
    if log_prior is not None:
        if log_prior.dim() == 1:
            log_prior = log_prior.view(1, -1, *([1] * (log_probs.dim() - 2)))
        total = total + log_prior
    return torch.softmax(total, dim=1)


def poe_gaussian(mean: Tensor, logvar: Tensor, weights: Tensor | None = None,
                 prior_expert: bool = False) -> tuple[Tensor, Tensor]:
    """Product of diagonal Gaussian experts (precision-weighted mean).

    Args:
        mean: ``[N, C, *S]`` expert means.
        logvar: ``[N, C, *S]`` expert log-variances.
        weights: optional ``[N, 1, *S]`` exponents (a weight w scales the expert's precision by w).
        prior_expert: include the prior N(0, 1) as one more expert (as in multimodal VAEs).

    Returns:
        ``(mean [1, C, *S], logvar [1, C, *S])`` of the product.
    """
    if mean.shape != logvar.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} must have the same shape")
    w = _weights(weights, mean)
    precision = torch.exp(-logvar)
    if w is not None:
        precision = precision * w
    total_precision = precision.sum(0, keepdim=True)
    weighted = (precision * mean).sum(0, keepdim=True)
    if prior_expert:
        total_precision = total_precision + 1.0
    total_precision = total_precision.clamp_min(1e-6)
    return weighted / total_precision, -torch.log(total_precision)

