"""BIGR-lite: the hierarchical model of eq. 7–8 with inference steps #1 (geometry) and #2 (anatomy).

Our reconstruction, *inspired by* Luo, Wang, Shapiro, Yuan, Feng & Zhuang, "Bayesian Intrinsic Groupwise Image
Registration: Unsupervised Disentanglement of Anatomy and Geometry" (arXiv 2401.02141) and Wang, Luo & Zhuang
(IPMI 2023). The official code is not public; every architectural choice below is ours (spec §9.2, tagged [R]).

One forward pass, for a group of any size N:

1. Structural encoder (shared weights): r_j = E_θ(u_j) in image space.
2. Geometry inference q(v|u), coarse → fine. At every level the representations are warped to the common space,
   s̃_j = s_j ∘ φ_j, the group-mean template t = mean_j s̃_j is formed, a shared head predicts an increment from
   [s̃_j, t], and the fields are re-centred to group mean zero (this defines the common space, spec §7.3).
   D variants: velocities v_j (added in the log domain), φ_j = id + exp(v_j) (scaling and squaring).
   N variants: displacements d_j (composed), φ_j = id + d_j.
3. Anatomy inference q(z|u,v): product of the N experts s̃_j (categorical "C" or Gaussian "P").
4. Generation p(u|z,v): û_j = f_j(z ∘ φ_j⁻¹) with a pointwise imaging functional (eq. 8), φ_j⁻¹ = exp(−v_j) for D
   and a fixed-point inverse for N.

Variants: "CD", "CN", "PD", "PN" (C = categorical anatomy, P = Gaussian/probabilistic features; D = diffeomorphic
SVF, N = non-diffeomorphic displacement). The letters' meaning in the talk is itself our reading (spec §9.1).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import spatial
from .._checks import check_group
from . import elbo as E
from .functional import categorical_functional, class_means, linear_coefficients, linear_functional
from .networks import RegistrationHead, StructuralEncoder
from .posterior import leave_one_out_categorical, leave_one_out_gaussian, poe_categorical, poe_gaussian

VARIANTS = ("PN", "CN", "PD", "CD")


@dataclass
class BIGRConfig:
    """Everything that fixes the architecture and the objective (saved with every checkpoint).

    Attributes:
        variant: "CD", "CN", "PD" or "PN".
        dim: 2 or 3.
        channels: K structures (C) or feature channels (P).
        width: encoder width.
        dilations: encoder dilations (one 3×3 conv each).
        head_width: registration-head width.
        levels: downsampling factor of each coarse-to-fine level (one head per level): the field increment of that
            level lives on a grid this much coarser than the image and is upsampled (bilinear), so a field cannot
            carry image detail finer than the level's grid.
        head_input: downsampling factor of what the heads *see* (the warped maps and the template). It must be
            small (1–2): a head that sees the maps at its level's coarse grid (e.g. 4×4 for 64² images) is blind
            to the structures it should align.
        max_step_mm: bound on one increment (mm per component).
        svf_steps: scaling-and-squaring steps (D).
        inverse_iterations: fixed-point iterations to invert a displacement (N).
        beta_z: weight of the anatomy KL (1 = the ELBO).
        lam: precision λ of the smoothness prior p(v).
        cross_reconstruction: generate image j from the product of the *other* experts (leave-one-out), so that
            an image cannot explain itself and only alignment with the rest of the group improves its
            reconstruction. Our choice (a pseudo-likelihood reading of eq. 9's reconstruction term); False gives
            the plain ELBO with the full posterior in every term.
        template: what the registration head compares s̃_j with: ``"mean"`` = the group mean t (spec §9.2), or
            ``"others"`` = the mean of the *other* images, t_{-j} = (N t − s̃_j)/(N − 1), so that image j's own map
            cannot steer its field towards itself (our choice; the two agree for large N).
    """

    variant: str = "CD"
    dim: int = 2
    channels: int = 4
    width: int = 16
    dilations: tuple[int, ...] = (1, 2, 4, 1)
    head_width: int = 16
    levels: tuple[int, ...] = (16, 8)
    max_step_mm: float = 10.0
    svf_steps: int = 6
    inverse_iterations: int = 6
    beta_z: float = 1.0
    lam: float = 1.0
    cross_reconstruction: bool = True
    template: str = "mean"
    head_input: int = 2

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        self.dilations = tuple(int(d) for d in self.dilations)
        self.levels = tuple(int(f) for f in self.levels)
        if self.head_input < 1:
            raise ValueError(f"head_input must be >= 1, got {self.head_input}")
        if self.template not in ("mean", "others"):
            raise ValueError(f"template must be 'mean' or 'others', got {self.template!r}")
        if not self.levels or any(f < 1 for f in self.levels):
            raise ValueError(f"levels must be positive downsampling factors, got {self.levels}")

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
    """Everything one pass of the model produces (shapes for a group of N images, spatial shape S, d axes).

    Attributes:
        field: ``[N, d, *S]`` velocity (D) or displacement (N) in mm, group mean zero.
        displacement: ``[N, d, *S]`` φ_j − id (mm).
        points: ``[N, d, *S]`` φ_j(x): where common-space point x samples image j.
        inverse_displacement: ``[N, d, *S]`` φ_j⁻¹ − id.
        representation: ``[N, K, *S]`` structural maps in image space (probabilities for C, means for P).
        warped_representation: ``[N, K, *S]`` the same maps in the common space.
        posterior: ``[1, K, *S]`` q(z|u,v) (C: probabilities; P: mean); ``posterior_logvar`` for P.
        anatomy: ``[1|N, K, *S]`` the z used for generation (common space): the posterior, or with
            ``cross_reconstruction`` one leave-one-out posterior per image; a sample during training for P.
        recon: ``[N, 1, *S]`` û_j.
        warped: ``[N, 1, *S]`` u_j ∘ φ_j (registered images).
        appearance: per-image functional parameters (C: ``[N, K]`` class means; P: ``[N, K + 1]``).
        terms: the ELBO terms (:class:`~xreg_edu.vae.elbo.ELBOTerms`) or None.
        history: fields after each level (for plots).
    """

    field: Tensor
    displacement: Tensor
    points: Tensor
    inverse_displacement: Tensor
    representation: Tensor
    warped_representation: Tensor
    posterior: Tensor
    anatomy: Tensor
    recon: Tensor
    warped: Tensor
    appearance: Tensor
    terms: E.ELBOTerms | None = None
    posterior_logvar: Tensor | None = None
    history: list = field(default_factory=list)


def _pool(x: Tensor, factor: int) -> Tensor:
    if factor == 1:
        return x
    return (F.avg_pool2d if x.dim() == 4 else F.avg_pool3d)(x, factor, ceil_mode=True)


def _upsample(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    return F.interpolate(x, size=shape, mode="bilinear" if x.dim() == 4 else "trilinear", align_corners=False)


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
        self.encoder = StructuralEncoder(cfg.dim, cfg.channels, gaussian=not cfg.categorical, width=cfg.width,
                                         dilations=cfg.dilations)
        self.heads = nn.ModuleList(
            RegistrationHead(cfg.dim, cfg.channels, cfg.head_width, cfg.max_step_mm) for _ in cfg.levels)

    # ----------------------------------------------------------------------------------------------------------
    def represent(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Structural representation of each image (image space).

        Args:
            images: ``[N, 1, *S]``.

        Returns:
            ``(maps [N, K, *S], logvar)``: C: softmax probabilities and None; P: feature means and log-variances.
        """
        out = self.encoder(images)
        if self.config.categorical:
            return torch.softmax(out, dim=1), None
        return out

    def field_to_displacement(self, field: Tensor, spacing: tuple[float, ...], inverse: bool = False) -> Tensor:
        """φ − id (or φ⁻¹ − id) from the latent geometry.

        Args:
            field: ``[N, d, *S]`` velocity (D) or displacement (N), mm.
            spacing: d floats.
            inverse: return the inverse map's displacement.
        """
        cfg = self.config
        if cfg.diffeomorphic:
            return spatial.svf_exp(-field if inverse else field, spacing, steps=cfg.svf_steps)
        return spatial.invert_displacement(field, spacing, cfg.inverse_iterations) if inverse else field

    def fit_appearance(self, anatomy_image_space: Tensor, images: Tensor) -> Tensor:
        """Closed-form parameters of each image's pointwise functional f_j.

        Args:
            anatomy_image_space: ``[N, K, *S]`` z ∘ φ_j⁻¹.
            images: ``[N, 1, *S]``.

        Returns:
            C: ``[N, K]`` class means; P: ``[N, K + 1]`` linear coefficients.
        """
        if self.config.categorical:
            return class_means(anatomy_image_space, images)
        return linear_coefficients(anatomy_image_space, images)

    def imaging_functional(self, anatomy: Tensor, appearance: Tensor) -> Tensor:
        """f_j applied pointwise: ``[N|1, K, *S]`` anatomy + ``[N, ·]`` appearance -> ``[N, 1, *S]`` images."""
        if self.config.categorical:
            return categorical_functional(anatomy, appearance)
        return linear_functional(anatomy, appearance)

    def generate(self, anatomy: Tensor, field: Tensor, appearance: Tensor, spacing: tuple[float, ...]) -> Tensor:
        """Generation step (eq. 7): û_j = f_j(z ∘ φ_j⁻¹) for a given anatomy, geometry and appearance.

        Args:
            anatomy: ``[1|N, K, *S]`` z in the common space.
            field: ``[N, d, *S]`` velocity (D) or displacement (N), mm.
            appearance: ``[N, ·]`` from :meth:`fit_appearance`.
            spacing: d floats.

        Returns:
            ``[N, 1, *S]``.
        """
        n = field.shape[0]
        grid = spatial.identity_grid(tuple(field.shape[2:]), spacing, device=field.device, dtype=field.dtype)
        inv_points = grid + self.field_to_displacement(field, spacing, inverse=True)
        z = anatomy.expand(n, *anatomy.shape[1:]) if anatomy.shape[0] == 1 else anatomy
        return self.imaging_functional(spatial.warp(z, inv_points, spacing, padding="border"), appearance)

    def infer_geometry(self, maps: Tensor, spacing: tuple[float, ...]) -> tuple[Tensor, list[Tensor]]:
        """Inference step #1: coarse-to-fine fields against the group-mean template, re-centred to mean zero.

        Args:
            maps: ``[N, K, *S]`` structural maps in image space.
            spacing: d floats.

        Returns:
            ``(field [N, d, *S], history)``.
        """
        cfg = self.config
        shape = tuple(maps.shape[2:])
        grid = spatial.identity_grid(shape, spacing, device=maps.device, dtype=maps.dtype)
        fld = maps.new_zeros((maps.shape[0], cfg.dim) + shape)
        history = []
        for factor, head in zip(cfg.levels, self.heads):
            disp = self.field_to_displacement(fld, spacing)
            warped = spatial.warp(maps, grid + disp, spacing, padding="border")
            template = warped.mean(0, keepdim=True)
            if cfg.template == "others" and maps.shape[0] > 1:
                n = maps.shape[0]
                template = (n * template - warped) / (n - 1)  # [N, K, *S]: t_{-j}
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

    def forward(self, images: Tensor, spacing: tuple[float, ...], *, compute_elbo: bool = True,
                sample: bool | None = None, geometry: bool = True) -> BIGROutput:
        """Register and reconstruct a group.

        Args:
            images: ``[N, 1, *S]`` float, N >= 2 (any N; the model was typically trained with N = 3–4).
            spacing: d floats (mm).
            compute_elbo: also assemble the ELBO terms of eq. 9.
            sample: draw z by reparameterisation (P variants); default = ``self.training``.
            geometry: run inference step #1; False fixes every φ_j = id (used to pre-train the encoder on natively
                aligned groups, and to show what the anatomy model alone explains).

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
        sample = self.training if sample is None else sample
        shape = tuple(images.shape[2:])
        n = images.shape[0]
        grid = spatial.identity_grid(shape, spacing, device=images.device, dtype=images.dtype)

        maps, logvar = self.represent(images)
        if geometry:
            fld, history = self.infer_geometry(maps, spacing)
        else:
            fld, history = maps.new_zeros((n, cfg.dim) + shape), []
        disp = self.field_to_displacement(fld, spacing)
        points = grid + disp
        inv_disp = self.field_to_displacement(fld, spacing, inverse=True)
        inv_points = grid + inv_disp
        warped_maps = spatial.warp(maps, points, spacing, padding="border")
        votes = spatial.inside_fov(points, shape, spacing).to(images.dtype)

        # inference step #2: product of experts
        post_logvar = None
        loo = cfg.cross_reconstruction
        if cfg.categorical:
            log_experts = torch.log(warped_maps.clamp_min(1e-6))
            posterior = poe_categorical(log_experts, weights=votes)
            kl_z = E.kl_categorical_uniform(posterior)
            anatomy = leave_one_out_categorical(log_experts, votes) if loo else posterior
        else:
            warped_logvar = spatial.warp(logvar, points, spacing, padding="border")
            posterior, post_logvar = poe_gaussian(warped_maps, warped_logvar, weights=votes)
            kl_z = E.kl_gaussian_standard(posterior, post_logvar)
            mean, lv = leave_one_out_gaussian(warped_maps, warped_logvar, votes) if loo else (posterior, post_logvar)
            anatomy = mean + torch.randn_like(mean) * torch.exp(0.5 * lv) if sample else mean

        # generation: z_j = z ∘ φ_j⁻¹, then the pointwise imaging functional
        z_img = spatial.warp(anatomy.expand(n, *anatomy.shape[1:]) if anatomy.shape[0] == 1 else anatomy,
                             inv_points, spacing, padding="border")
        appearance = self.fit_appearance(z_img, images)
        recon = self.imaging_functional(z_img, appearance)

        terms = None
        if compute_elbo:
            kl_v = E.kl_geometry_delta(fld, spacing, cfg.lam)
            terms = E.elbo_terms(images, recon, kl_z, kl_v, beta_z=cfg.beta_z)
        warped = spatial.warp(images, points, spacing, padding="zeros")
        return BIGROutput(field=fld, displacement=disp, points=points, inverse_displacement=inv_disp,
                          representation=maps, warped_representation=warped_maps, posterior=posterior,
                          anatomy=anatomy, recon=recon, warped=warped, appearance=appearance, terms=terms,
                          posterior_logvar=post_logvar, history=history)
