"""BIGR-lite: the hierarchical model of eq. 7–8 with inference steps #1 (geometry) and #2 (anatomy).

Our reconstruction, *inspired by* Luo, Wang, Shapiro, Yuan, Feng & Zhuang, "Bayesian Unsupervised
Disentanglement of Anatomy and Geometry for Deep Groupwise Image Registration" (arXiv 2401.02141, v2) and Wang, Luo & Zhuang
(IPMI 2023). The official code is not public; every architectural choice below is ours (spec §9.2, tagged [R]).

One forward pass, for a group of any size N:

1. Structural encoder (shared weights): an expert r_j = E_θ(u_j) per image, in image space.
2. Geometry q(v|u), coarse → fine, a point mass (MAP). At level l the experts are warped with the fields of level
   l − 1, s̃_j = s_j ∘ φ_j; the template is their **product of experts** (the current q(z)); a shared head predicts
   an increment from [s̃_j, template]; the fields are re-centred to group mean zero (the common space, §7.3).
   D variants: velocities (added in the log domain), φ_j = id + exp(v_j). N variants: displacements (composed).
3. Anatomy q(z|u,v): the product of the N warped experts and the prior (C: categorical with class proportions π,
   closed-form update; P: Gaussian with the N(0, I) prior as one more expert). The same q enters the
   reconstruction and the KL.
4. Likelihood: exact E_q[log p(u|z,v)] with pointwise class-conditional appearance fitted in closed form
   (:mod:`xreg_edu.vae.elbo`), evaluated **in the common space** on u_j ∘ φ_j, as X-CoReg does, each voxel weighted
   by |det Dφ_j| (change of variables, so the sum stands for the image-space likelihood); the image voxels that
   no common-space voxel reaches (φ_j⁻¹(y) outside the grid) enter with their anatomy marginalised under the prior,
   so that no image voxel drops out of the likelihood. Declared: the image-space version needs γ warped back,
   which blurs it (spec §9.2).

Variants: "CD", "CN", "PD", "PN" (C = categorical anatomy, P = Gaussian features; D = diffeomorphic SVF, N =
displacement). The letters' meaning in the talk is itself our reading (spec §9.1).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import spatial
from .._checks import check_group
from . import elbo as E
from .functional import categorical_functional, linear_functional
from .networks import RegistrationHead, StructuralEncoder, UNetEncoder
from .posterior import poe_categorical, poe_gaussian

VARIANTS = ("PN", "CN", "PD", "CD")


@dataclass
class BIGRConfig:
    """Everything that fixes the architecture and the objective (saved with every checkpoint).

    Attributes:
        variant: "CD", "CN", "PD" or "PN".
        dim: 2 or 3.
        channels: K structures (C) or feature channels (P).
        encoder: ``"unet"`` (two poolings, large field of view) or ``"dilated"`` (no pooling, exactly
            translation-equivariant).
        width: encoder width.
        dilations: dilations of the ``"dilated"`` encoder.
        head_width: registration-head width.
        levels: downsampling factor of each coarse-to-fine level's field increment (one head per level).
        head_input: downsampling factor of what the heads see (1–2).
        max_step_mm: bound on one increment (mm per component).
        svf_steps: scaling-and-squaring steps (D).
        inverse_iterations: fixed-point iterations to invert a displacement (N, generation only).
        lam: precision λ of the smoothness prior p(v) (≈ 0.1: λ = 1 outweighs the alignment margin, spec §9.2).
        appearance: f_jk of the C variants: ``"parzen"`` (X-CoReg's B-spline Parzen density) or ``"gaussian"``.
        bins: Parzen bins L.
    """

    variant: str = "CD"
    dim: int = 2
    channels: int = 5
    encoder: str = "unet"
    width: int = 16
    dilations: tuple[int, ...] = (1, 2, 4, 1)
    head_width: int = 16
    levels: tuple[int, ...] = (16, 8)
    head_input: int = 2
    max_step_mm: float = 10.0
    svf_steps: int = 6
    inverse_iterations: int = 6
    lam: float = 0.1
    appearance: str = "parzen"
    bins: int = 32

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        self.dilations = tuple(int(d) for d in self.dilations)
        self.levels = tuple(int(f) for f in self.levels)
        if self.encoder not in ("unet", "dilated"):
            raise ValueError(f"encoder must be 'unet' or 'dilated', got {self.encoder!r}")
        if self.appearance not in ("parzen", "gaussian"):
            raise ValueError(f"appearance must be 'parzen' or 'gaussian', got {self.appearance!r}")
        if self.head_input < 1:
            raise ValueError(f"head_input must be >= 1, got {self.head_input}")
        if not self.levels or any(f < 1 for f in self.levels):
            raise ValueError(f"levels must be positive downsampling factors, got {self.levels}")
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")

    @property
    def categorical(self) -> bool:
        return self.variant[0] == "C"

    @property
    def diffeomorphic(self) -> bool:
        return self.variant[1] == "D"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dilations"], d["levels"] = list(self.dilations), list(self.levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BIGRConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown BIGRConfig keys {sorted(unknown)}")
        return cls(**d)


@dataclass
class BIGROutput:
    """One pass of the model (group of N images, spatial shape S, d axes, K channels).

    Attributes:
        field: ``[N, d, *S]`` velocity (D) or displacement (N) in mm, group mean zero.
        displacement: ``[N, d, *S]`` φ_j − id (mm).
        points: ``[N, d, *S]`` φ_j(x): where common-space point x samples image j.
        representation: ``[N, K, *S]`` the experts in image space (C: probabilities; P: means).
        warped_representation: ``[N, K, *S]`` the experts in the common space.
        posterior: ``[1, K, *S]`` q(z|u,v) (C: probabilities; P: mean); ``posterior_var`` for P.
        prior: ``[K]`` class proportions π (C) or None.
        warped: ``[N, 1, *S]`` u_j ∘ φ_j (registered images).
        appearance: C: ``[N, K]`` class means of f_jk; P: ``[N, K + 1]`` (a_j, b_j).
        terms: :class:`~xreg_edu.vae.elbo.ELBOTerms` or None.
        history: fields after each level.
    """

    field: Tensor
    displacement: Tensor
    points: Tensor
    representation: Tensor
    warped_representation: Tensor
    posterior: Tensor
    warped: Tensor
    appearance: Tensor
    terms: E.ELBOTerms | None = None
    posterior_var: Tensor | None = None
    prior: Tensor | None = None
    history: list = field(default_factory=list)


def _pool(x: Tensor, factor: int) -> Tensor:
    if factor == 1:
        return x
    return (F.avg_pool2d if x.dim() == 4 else F.avg_pool3d)(x, factor, ceil_mode=True)


def _upsample(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    return F.interpolate(x, size=shape, mode="bilinear" if x.dim() == 4 else "trilinear", align_corners=False)


def _flat(x: Tensor) -> Tensor:
    """``[1, K, *S]`` -> ``[M, K]``."""
    return x.flatten(2)[0].t()


class BIGRLite(nn.Module):
    """The hierarchical VAE for groupwise registration (variants PN/CN/PD/CD).

    Args:
        config: a :class:`BIGRConfig` (or None for the defaults); keyword overrides are applied on top.
    """

    def __init__(self, config: BIGRConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = config or BIGRConfig()
        if overrides:
            cfg = BIGRConfig.from_dict({**cfg.to_dict(), **overrides})
        self.config = cfg
        gauss = not cfg.categorical
        if cfg.encoder == "unet":
            self.encoder = UNetEncoder(cfg.dim, cfg.channels, gaussian=gauss, width=cfg.width)
        else:
            self.encoder = StructuralEncoder(cfg.dim, cfg.channels, gaussian=gauss, width=cfg.width,
                                             dilations=cfg.dilations)
        self.heads = nn.ModuleList(
            RegistrationHead(cfg.dim, cfg.channels, cfg.head_width, cfg.max_step_mm) for _ in cfg.levels)
        if gauss:
            # P: a per-channel log-variance offset of the experts, trained with the heads on the ELBO (the
            # distilled encoder is frozen): it sets how many nats the features cost in KL against what they buy
            # in reconstruction; without it, frozen over-confident experts make abstaining pay (chapter 9)
            self.logvar_offset = nn.Parameter(torch.zeros(cfg.channels))

    # ------------------------------------------------------------------------------------------------ pieces
    def represent(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Experts in image space: C: ``(probabilities [N, K, *S], None)``; P: ``(means, log-variances)``."""
        out = self.encoder(images)
        if self.config.categorical:
            return torch.softmax(out, dim=1), None
        mean, logvar = out
        return mean, logvar + self.logvar_offset.view(1, -1, *([1] * self.config.dim))

    def logits(self, images: Tensor) -> Tensor:
        """Class scores of each image's expert (C: logits; P: the feature means read as logits), ``[N, K, *S]``:
        what the unsupervised warm start distils the teacher posterior into."""
        out = self.encoder(images)
        return out if self.config.categorical else out[0]

    def field_to_displacement(self, field: Tensor, spacing: tuple[float, ...], inverse: bool = False) -> Tensor:
        """φ − id (or φ⁻¹ − id) of the latent geometry ``[N, d, *S]`` (mm)."""
        cfg = self.config
        if cfg.diffeomorphic:
            return spatial.svf_exp(-field if inverse else field, spacing, steps=cfg.svf_steps)
        return spatial.invert_displacement(field, spacing, cfg.inverse_iterations) if inverse else field

    def product_of_experts(self, warped: Tensor, warped_logvar: Tensor | None, votes: Tensor,
                           log_prior: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """q(z|u,v) from warped experts: C: ``(probs [1, K, *S], None)``; P: ``(mean, var)`` (prior expert in)."""
        if self.config.categorical:
            return poe_categorical(torch.log(warped.clamp_min(1e-6)), weights=votes, log_prior=log_prior), None
        mean, logvar = poe_gaussian(warped, warped_logvar, weights=votes, prior_expert=True)
        return mean, logvar.exp()

    def infer_geometry(self, maps: Tensor, logvar: Tensor | None, spacing: tuple[float, ...]
                       ) -> tuple[Tensor, list[Tensor]]:
        """Inference step #1: coarse-to-fine fields; the template of each level is the PoE of the previous level.

        Args:
            maps: ``[N, K, *S]`` experts (image space); logvar: P only; spacing: d floats.

        Returns:
            ``(field [N, d, *S], history)``.
        """
        cfg = self.config
        shape = tuple(maps.shape[2:])
        grid = spatial.identity_grid(shape, spacing, device=maps.device, dtype=maps.dtype)
        fld = maps.new_zeros((maps.shape[0], cfg.dim) + shape)
        history = []
        for factor, head in zip(cfg.levels, self.heads):
            points = grid + self.field_to_displacement(fld, spacing)
            warped = spatial.warp(maps, points, spacing, padding="border")
            wlv = None if logvar is None else spatial.warp(logvar, points, spacing, padding="border")
            votes = spatial.inside_fov(points, shape, spacing).to(maps.dtype)
            template, _ = self.product_of_experts(warped, wlv, votes)
            hin = min(cfg.head_input, factor)
            inc = head(_pool(warped, hin), _pool(template, hin))
            inc = _upsample(_pool(inc, max(1, factor // hin)), shape)
            if cfg.diffeomorphic:
                fld = fld + inc  # first-order composition in the log domain
            else:
                fld = spatial.compose_displacements(inc, fld, spacing)  # φ ← φ ∘ (id + inc)
            fld = fld - fld.mean(0, keepdim=True)
            history.append(fld)
        return fld, history

    def evaluate(self, images: Tensor, spacing: tuple[float, ...], fld: Tensor, maps: Tensor,
                 logvar: Tensor | None = None, history=None) -> BIGROutput:
        """Step #2 and the MAP-ELBO of eq. 9 for given experts and a given geometry (any field: the model's, the
        identity, the true correction — what the gate test compares).

        Args:
            images: ``[N, 1, *S]``; spacing: d floats; fld: ``[N, d, *S]`` (mm); maps/logvar: from
                :meth:`represent`.
        """
        cfg = self.config
        shape = tuple(images.shape[2:])
        grid = spatial.identity_grid(shape, spacing, device=images.device, dtype=images.dtype)
        disp = self.field_to_displacement(fld, spacing)
        points = grid + disp
        warped_maps = spatial.warp(maps, points, spacing, padding="border")
        votes = spatial.inside_fov(points, shape, spacing).to(images.dtype)          # [N, 1, *S]
        warped = spatial.warp(images, points, spacing, padding="zeros")
        # change of variables: a common-space voxel x stands for |det Dφ_j(x)| voxels of image j, so the
        # common-space sum approximates the image-space likelihood (without it, compressing a homogeneous region
        # into many common voxels raises the objective)
        jac = spatial.jacobian_determinant(disp, spacing).clamp_min(0)
        values, w = warped.flatten(1), (votes * jac).flatten(1)                      # [N, M]
        # image voxels that no common-space voxel reaches: their anatomy is marginalised under the prior
        inv_points = grid + self.field_to_displacement(fld, spacing, inverse=True)
        outside = 1 - spatial.inside_fov(inv_points, shape, spacing).to(images.dtype).flatten(1)
        own = images.flatten(1)
        if cfg.categorical:
            q0, _ = self.product_of_experts(warped_maps, None, votes)
            pi = E.class_proportions(_flat(q0))                                      # closed-form prior update
            post, post_var = self.product_of_experts(warped_maps, None, votes, log_prior=pi.log())
            q = _flat(post)
            log_f = E.fit_class_density(values, q, cfg.appearance, cfg.bins, weights=w)
            rec = E.expected_log_likelihood(log_f(values), q, w)
            if outside.any():
                rec = rec + E.marginal_log_likelihood(log_f(own), pi.log(), outside)
            kl_z = E.kl_categorical(q, pi.log())
            appearance = E.gaussian_class_fit(values, q, w)[0]
        else:
            wlv = spatial.warp(logvar, points, spacing, padding="border")
            post, post_var = self.product_of_experts(warped_maps, wlv, votes)
            m, s2 = _flat(post), _flat(post_var)
            coef, noise = E.linear_gaussian_fit(m, s2, values, w)
            rec = E.linear_gaussian_expected_log_likelihood(m, s2, values, coef, noise, w)
            if outside.any():
                rec = rec + E.linear_gaussian_marginal_log_likelihood(own, coef, noise, outside)
            kl_z = E.kl_gaussian_standard(post, post_var.log())
            appearance, pi = coef, None
        kl_v = E.kl_geometry_delta(fld, spacing, cfg.lam)
        terms = E.elbo_terms(rec, kl_z, kl_v, int(images.numel()))
        return BIGROutput(field=fld, displacement=disp, points=points, representation=maps,
                          warped_representation=warped_maps, posterior=post, warped=warped, appearance=appearance,
                          terms=terms, posterior_var=post_var, prior=pi, history=history or [])

    def forward(self, images: Tensor, spacing, *, field: Tensor | None = None) -> BIGROutput:
        """Register a group and evaluate its MAP-ELBO.

        Args:
            images: ``[N, 1, *S]`` float, N >= 2 (any N).
            spacing: d floats (mm).
            field: optional ``[N, d, *S]`` geometry to use instead of inference step #1 (e.g. zeros = identity).

        Returns:
            :class:`BIGROutput`.
        """
        check_group(images)
        cfg = self.config
        if images.dim() - 2 != cfg.dim:
            raise ValueError(f"model built for {cfg.dim}-D images, got images of shape {tuple(images.shape)}")
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != cfg.dim:
            raise ValueError(f"spacing must hold {cfg.dim} values, got {spacing}")
        maps, logvar = self.represent(images)
        if field is None:
            fld, history = self.infer_geometry(maps, logvar, spacing)
        else:
            if field.shape != (images.shape[0], cfg.dim) + tuple(images.shape[2:]):
                raise ValueError(f"field must be [N, {cfg.dim}, *S] = {(images.shape[0], cfg.dim, *images.shape[2:])},"
                                 f" got {tuple(field.shape)}")
            fld, history = field.to(images), []
        return self.evaluate(images, spacing, fld, maps, logvar, history)

    def generate(self, anatomy: Tensor, field: Tensor, appearance: Tensor, spacing: tuple[float, ...]) -> Tensor:
        """Mean image of p(u|z,v) for a given anatomy, geometry and appearance: û_j = E[f_j(z ∘ φ_j⁻¹)].

        Args:
            anatomy: ``[1|N, K, *S]`` z in the common space (C: class probabilities; P: features).
            field: ``[N, d, *S]`` (mm); appearance: from :class:`BIGROutput`; spacing: d floats.

        Returns:
            ``[N, 1, *S]`` (for C the class-mean intensities of f_jk are mixed by z).
        """
        n = field.shape[0]
        grid = spatial.identity_grid(tuple(field.shape[2:]), spacing, device=field.device, dtype=field.dtype)
        inv_points = grid + self.field_to_displacement(field, spacing, inverse=True)
        z = anatomy.expand(n, *anatomy.shape[1:]) if anatomy.shape[0] == 1 else anatomy
        z_img = spatial.warp(z, inv_points, spacing, padding="border")
        if self.config.categorical:
            return categorical_functional(z_img, appearance)
        return linear_functional(z_img, appearance)


def pair_agreement(maps: Tensor) -> float:
    """Cross-sequence agreement of the experts: mean over image pairs i < j and over the classes present of the
    Dice of their hard maps (argmax over K). ``[N, K, *S]`` -> float in [0, 1]."""
    hard = maps.argmax(1)
    n, k = maps.shape[:2]
    scores = []
    for i in range(n):
        for j in range(i + 1, n):
            dice = []
            for c in range(k):
                a, b = hard[i] == c, hard[j] == c
                tot = int(a.sum() + b.sum())
                if tot:
                    dice.append(2 * float((a & b).sum()) / tot)
            scores.append(sum(dice) / max(1, len(dice)))
    return sum(scores) / max(1, len(scores))

