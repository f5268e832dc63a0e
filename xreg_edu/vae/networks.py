"""Networks of BIGR-lite: a shared structural encoder and a shared registration head.

Our reconstruction, *inspired by* Luo et al., "Bayesian Unsupervised Disentanglement of Anatomy and Geometry for
Deep Groupwise Image Registration" (arXiv 2401.02141, v2) and Wang, Luo & Zhuang (IPMI 2023). The official code is not public; these architectures are our own choice
(spec §9.2): small, fully convolutional, the same weights for every image of a group, so that a group of any size N
can be processed.

- :class:`StructuralEncoder` maps one image ``u_j`` to its structural representation in *image* space. It has no
  pooling and no strides (dilated 3×3 convolutions instead), so it is equivariant to integer translations away
  from the border — the numerical face of eq. 8 that the book shows.
- :class:`UNetEncoder`: the same job with two poolings (a field of view of about 60 voxels), the lever that lets
  one shared encoder give the same structure in bSSFP, LGE and T2 (issue 9's representation study).
- :class:`RegistrationHead` compares a warped representation with the group-mean template and predicts a velocity
  (or displacement) increment. Its last layer starts at zero, so an untrained head predicts the identity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv(dim: int):
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    return nn.Conv2d if dim == 2 else nn.Conv3d


def normalize_intensity(images: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-image standardisation (zero mean, unit std over all voxels).

    Args:
        images: ``[N, 1, *S]`` float.

    Returns:
        ``[N, 1, *S]``; the statistics are global per image, so an integer translation of the content that keeps it
        inside the field of view leaves them unchanged (equivariance is kept).
    """
    flat = images.flatten(1)
    mean = flat.mean(1).view(-1, *([1] * (images.dim() - 1)))
    std = flat.std(1, unbiased=False).view(-1, *([1] * (images.dim() - 1)))
    return (images - mean) / (std + eps)


class StructuralEncoder(nn.Module):
    """Shared, modality-agnostic encoder ``E_θ``: image -> structural representation (image space).

    Args:
        dim: 2 or 3 spatial dimensions.
        channels: K for the categorical variant (logits of K structures) or C latent features for the Gaussian
            variant.
        gaussian: if True the encoder returns ``(mean, logvar)`` (P variants), else logits (C variants).
        width: hidden channels.
        dilations: one 3×3 convolution per entry, with that dilation (receptive field 1 + 2·Σ dilations).
    """

    def __init__(self, dim: int = 2, channels: int = 4, gaussian: bool = False, width: int = 16,
                 dilations: tuple[int, ...] = (1, 2, 4, 1)) -> None:
        super().__init__()
        conv = _conv(dim)
        self.dim, self.channels, self.gaussian = dim, channels, gaussian
        layers, c_in = [], 1
        for d in dilations:
            layers += [conv(c_in, width, 3, padding=d, dilation=d), nn.LeakyReLU(0.1)]
            c_in = width
        self.body = nn.Sequential(*layers)
        self.out = conv(width, channels * (2 if gaussian else 1), 1)
        self.receptive_radius = sum(dilations)

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Structural representation of each image.

        Args:
            images: ``[N, 1, *S]`` float (any modality; standardised inside).

        Returns:
            logits ``[N, K, *S]`` (categorical), or ``(mean [N, C, *S], logvar [N, C, *S])`` (Gaussian).
        """
        h = self.out(self.body(normalize_intensity(images)))
        if not self.gaussian:
            return h
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-8.0, 8.0)


class UNetEncoder(nn.Module):
    """Shared encoder with a large field of view: a two-pooling U-Net (same interface as
    :class:`StructuralEncoder`). Pooling makes it equivariant only to shifts by multiples of 4 voxels; its receptive
    field (about 60 voxels) lets it use the shape context that tells myocardium from blood pool in every sequence.

    Args:
        dim, channels, gaussian, width: as :class:`StructuralEncoder`.
    """

    def __init__(self, dim: int = 2, channels: int = 5, gaussian: bool = False, width: int = 16) -> None:
        super().__init__()
        conv = _conv(dim)
        self.dim, self.channels, self.gaussian = dim, channels, gaussian
        w = width
        self.e1 = nn.Sequential(conv(1, w, 3, padding=1), nn.LeakyReLU(0.1), conv(w, w, 3, padding=1), nn.LeakyReLU(0.1))
        self.e2 = nn.Sequential(conv(w, 2 * w, 3, padding=1), nn.LeakyReLU(0.1),
                                conv(2 * w, 2 * w, 3, padding=1), nn.LeakyReLU(0.1))
        self.e3 = nn.Sequential(conv(2 * w, 2 * w, 3, padding=2, dilation=2), nn.LeakyReLU(0.1),
                                conv(2 * w, 2 * w, 3, padding=4, dilation=4), nn.LeakyReLU(0.1))
        self.d2 = nn.Sequential(conv(4 * w, 2 * w, 3, padding=1), nn.LeakyReLU(0.1))
        self.d1 = nn.Sequential(conv(3 * w, w, 3, padding=1), nn.LeakyReLU(0.1))
        self.out = conv(w, channels * (2 if gaussian else 1), 1)

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """``[N, 1, *S]`` -> logits ``[N, K, *S]`` or ``(mean, logvar)`` (S divisible by 4 is exact)."""
        pool = F.avg_pool2d if self.dim == 2 else F.avg_pool3d
        h1 = self.e1(normalize_intensity(images))
        h2 = self.e2(pool(h1, 2, ceil_mode=True))
        h3 = self.e3(pool(h2, 2, ceil_mode=True))
        g2 = self.d2(torch.cat([RegistrationHead._up(h3, h2), h2], 1))
        g1 = self.d1(torch.cat([RegistrationHead._up(g2, h1), h1], 1))
        h = self.out(g1)
        if not self.gaussian:
            return h
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-8.0, 8.0)


class RegistrationHead(nn.Module):
    """Shared head ``R_ψ``: ``[s̃_j, t]`` -> increment of image j's velocity/displacement (mm).

    A small encoder–decoder (two 2× poolings) so that a 3×3 kernel sees a wide neighbourhood. The output is
    ``max_step · tanh(·)`` mm per component, and the last layer is zero-initialised (identity at start). The group
    mean of the raw output is subtracted before the bound (it would be removed by re-centring anyway).

    Args:
        dim: 2 or 3.
        in_channels: channels of one representation (K or C); the head sees ``2·in_channels``.
        width: hidden channels.
        max_step: bound on one increment, in mm.
    """

    def __init__(self, dim: int, in_channels: int, width: int = 16, max_step: float = 8.0) -> None:
        super().__init__()
        conv = _conv(dim)
        self.dim, self.max_step = dim, float(max_step)
        self.enc1 = conv(2 * in_channels, width, 3, padding=1)
        self.enc2 = conv(width, width, 3, padding=1)
        self.enc3 = conv(width, width, 3, padding=1)
        self.dec2 = conv(2 * width, width, 3, padding=1)
        self.dec1 = conv(2 * width, width, 3, padding=1)
        # no bias: a constant increment is removed by the group-mean subtraction below, so a bias would have an
        # exactly-zero gradient that Adam turns into full-size steps on rounding noise
        self.out = conv(width, dim, 3, padding=1, bias=False)
        nn.init.zeros_(self.out.weight)

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2, ceil_mode=True) if self.dim == 2 else F.avg_pool3d(x, 2, ceil_mode=True)

    @staticmethod
    def _up(x: Tensor, like: Tensor) -> Tensor:
        mode = "bilinear" if x.dim() == 4 else "trilinear"
        return F.interpolate(x, size=like.shape[2:], mode=mode, align_corners=False)

    def forward(self, warped: Tensor, template: Tensor) -> Tensor:
        """Increment for every image.

        Args:
            warped: ``[N, C, *S]`` representations already warped to the common space.
            template: ``[1, C, *S]`` group-mean template (broadcast over N), or ``[N, C, *S]`` one template per
                image (e.g. the mean of the other images).

        Returns:
            ``[N, d, *S]`` increment in mm (channel k <-> spatial axis k).
        """
        x = torch.cat([warped, template.expand_as(warped)], dim=1)
        act = nn.functional.leaky_relu
        h1 = act(self.enc1(x), 0.1)
        h2 = act(self.enc2(self._pool(h1)), 0.1)
        h3 = act(self.enc3(self._pool(h2)), 0.1)
        g2 = act(self.dec2(torch.cat([self._up(h3, h2), h2], 1)), 0.1)
        g1 = act(self.dec1(torch.cat([self._up(g2, h1), h1], 1)), 0.1)
        raw = self.out(g1)
        # the part common to the whole group is removed by re-centring anyway; removing it *before* the bound
        # keeps tanh out of saturation (a drifting common offset would otherwise silence the gradient)
        raw = raw - raw.mean(0, keepdim=True)
        return self.max_step * torch.tanh(raw)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
