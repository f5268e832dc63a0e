"""Learning-based groupwise baselines of the talk's deep tables: one network, three unsupervised similarity losses.

In the talk's MS-CMRSeg / BraTS / Learn2Reg / OASIS tables, APE, CTE and X-CoReg are *networks* (spec §8.5, §9.2
"Learning-based baselines", §8.4(c)): a registration network (0.154 M parameters on MS-CMRSeg) takes the whole group,
the N images stacked as channels, and outputs N stationary velocity fields with zero group mean; it is trained
without labels with that similarity as its loss plus smoothness. The official architecture is not given; ours
(:class:`GroupRegNet`) is a small 2-D/3-D U-Net of about the same size (0.15 M parameters for N = 3 in 2-D).

Losses (all from :mod:`xreg_edu.groupwise.objectives`, evaluated on the warped group inside the overlap of the fields
of view, differentiable through the B-spline Parzen windows):

- ``ape``: :class:`~xreg_edu.groupwise.objectives.APE`, ``-(2/(N-1)) sum_{i<j} MI(u_i o phi_i, u_j o phi_j)``;
- ``cte``: :class:`~xreg_edu.groupwise.objectives.CTE`, ``sum_j H(T | u_j o phi_j)`` with the PCA template T;
- ``xmetric``: :class:`~xreg_edu.groupwise.objectives.XCoReg`, ``-sum_j I(U_j o phi_j; Z)`` with Z the E-step
  posterior of the warped group (``em_sweeps`` EM sweeps from a seeded random posterior, no gradient through it);

each plus ``lam x sum_j mean_x ||grad v_j||^2`` (membrane energy of the velocity, mm/mm). phi_j = exp(v_j) by scaling
and squaring (:func:`xreg_edu.spatial.svf_exp`). The network is tied to N (its input channels) -- exactly what the
variable-N design of BIGR improves on.

Training (:func:`train`) draws a seeded global batch of misaligned training groups per step
(:func:`xreg_edu.vae.data.make_group`) and is data-parallel under ``torchrun`` (:mod:`xreg_edu.vae.distributed`)::

    python -m xreg_edu.vae.regnet --loss ape --steps 250 --batch 4 --out xreg_edu/weights/regnet_ape.pt
    torchrun --standalone --nproc_per_node=2 -m xreg_edu.vae.regnet --loss xmetric --batch 8 ...

The exact command, config, sha256 and held-out numbers of every committed weight file are in its ``.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import spatial
from ..group import ImageGroup
from . import distributed as dist
from .networks import _conv, count_parameters, normalize_intensity

LOSSES = ("ape", "cte", "xmetric")
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
FORMAT = "xreg_edu.vae/regnet-v1"


@dataclass
class RegNetConfig:
    """Architecture and loss of a group registration network.

    Attributes:
        loss: ``"ape"``, ``"cte"`` or ``"xmetric"``.
        num_images: N (fixed: the input channels).
        dim: 2 or 3.
        widths: channels of the encoder levels (each level after the first halves the resolution).
        velocity_level: the decoder level where the velocity is predicted (0 = full resolution, 2 = 1/4); it is
            upsampled bilinearly to the image grid (a coarse, smooth parameterisation, like control points).
        lam: weight of the velocity smoothness (membrane energy).
        bins: histogram bins L of the similarity.
        num_classes: K of the X-metric's posterior.
        em_sweeps: E-step sweeps per group for the X-metric (from a seeded random posterior).
        svf_steps: squarings of the scaling-and-squaring integration.
    """

    loss: str = "ape"
    num_images: int = 3
    dim: int = 2
    widths: tuple[int, ...] = (16, 32, 64, 80)
    velocity_level: int = 2
    lam: float = 5.0
    bins: int = 32
    num_classes: int = 4
    em_sweeps: int = 10
    svf_steps: int = 7

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.num_images < 2:
            raise ValueError(f"num_images must be >= 2, got {self.num_images}")
        if self.dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {self.dim}")
        if len(self.widths) < 2:
            raise ValueError(f"widths needs at least 2 levels, got {self.widths}")
        if not 0 <= self.velocity_level < len(self.widths):
            raise ValueError(f"velocity_level must lie in [0, {len(self.widths) - 1}], got {self.velocity_level}")
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        self.widths = tuple(int(w) for w in self.widths)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RegNetConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown RegNetConfig fields {unknown}; known: {sorted(known)}")
        return cls(**{**d, "widths": tuple(d.get("widths", cls.widths))})


class GroupRegNet(nn.Module):
    """U-Net: the N images of a group stacked as channels -> N velocity fields (mm), zero mean over the group.

    Each image is standardised first; encoder levels are 3x3 convolutions (stride 2 after the first level),
    the decoder upsamples and concatenates the skip connection up to ``velocity_level``, where a 3x3 convolution
    predicts the N velocities, upsampled bilinearly to the image grid; LeakyReLU(0.2); no normalisation layer (every
    group is processed independently, so data-parallel training is exact). The output layer starts at zero: an
    untrained network predicts the identity.
    """

    def __init__(self, config: RegNetConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = config or RegNetConfig(**overrides)
        self.config = cfg
        conv, w = _conv(cfg.dim), cfg.widths
        self.enc = nn.ModuleList([conv(cfg.num_images if i == 0 else w[i - 1], w[i], 3, stride=1 if i == 0 else 2,
                                       padding=1) for i in range(len(w))])
        self.dec = nn.ModuleList([conv(w[i + 1] + w[i], w[i], 3, padding=1)
                                  for i in reversed(range(cfg.velocity_level, len(w) - 1))])
        self.out = conv(w[cfg.velocity_level], cfg.num_images * cfg.dim, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, images: Tensor) -> Tensor:
        """Velocities of a batch of groups.

        Args:
            images: ``[B, N, *S]`` (N = ``config.num_images``; each spatial size divisible by 2^(levels-1) is not
                required).

        Returns:
            ``[B, N, d, *S]`` velocity in mm, ``sum_j v_j = 0`` at every voxel.
        """
        cfg = self.config
        if images.dim() != cfg.dim + 2 or images.shape[1] != cfg.num_images:
            raise ValueError(f"images must be [B, {cfg.num_images}, *S] with {cfg.dim} spatial axes, "
                             f"got {tuple(images.shape)}")
        b, n = images.shape[:2]
        x = normalize_intensity(images.reshape(b * n, 1, *images.shape[2:])).reshape(images.shape)
        skips = []
        for conv in self.enc:
            x = F.leaky_relu(conv(x), 0.2)
            skips.append(x)
        mode = "bilinear" if cfg.dim == 2 else "trilinear"
        for conv, skip in zip(self.dec, reversed(skips[cfg.velocity_level:-1])):
            x = F.interpolate(x, size=skip.shape[2:], mode=mode, align_corners=False)
            x = F.leaky_relu(conv(torch.cat([x, skip], 1)), 0.2)
        v = self.out(x)
        if v.shape[2:] != images.shape[2:]:
            v = F.interpolate(v, size=images.shape[2:], mode=mode, align_corners=True)
        v = v.reshape(b, n, cfg.dim, *images.shape[2:])
        return v - v.mean(1, keepdim=True)


# ---------------------------------------------------------------------------------------------- functional layer
def integrate(velocity: Tensor, spacing, steps: int = 7) -> tuple[Tensor, Tensor]:
    """``phi_j = exp(v_j)``: velocity ``[N, d, *S]`` mm -> (points ``[N, d, *S]``, displacement ``[N, d, *S]``) mm."""
    disp = spatial.svf_exp(velocity, spacing, steps)
    grid = spatial.identity_grid(tuple(velocity.shape[2:]), spacing, device=velocity.device, dtype=velocity.dtype)
    return grid + disp, disp


def _objective(config: RegNetConfig):
    from ..groupwise.objectives import APE, CTE, XCoReg

    if config.loss == "ape":
        return APE(bins=config.bins)
    if config.loss == "cte":
        return CTE(bins=config.bins)
    return XCoReg(num_classes=config.num_classes, bins=config.bins, warmup=config.em_sweeps - 1)


def similarity_loss(warped: Tensor, inside: Tensor, config: RegNetConfig, seed: int = 0) -> Tensor:
    """The configured groupwise similarity loss of one warped group (lower = better aligned).

    Args:
        warped: ``[N, 1, *S]`` images in the common space (differentiable).
        inside: ``[P] bool`` voxels inside every field of view.
        config: :class:`RegNetConfig` (``loss``, ``bins``, ``num_classes``, ``em_sweeps``).
        seed: seeds the X-metric's initial posterior (a group-specific seed keeps sharded training exact).

    Returns:
        0-dim tensor.
    """
    from ..groupwise.objectives import GroupSample

    index = inside.nonzero().squeeze(1)
    if index.numel() < 16:
        raise ValueError("the warped images no longer overlap: lower the learning rate or raise lam")
    sample = GroupSample(values=warped.flatten(1), mask=inside, index=index, shape=tuple(warped.shape[2:]))
    objective = _objective(config)
    gen = torch.Generator(device=warped.device).manual_seed(int(seed))
    objective.reset(warped.shape[0], sample.shape, device=warped.device, dtype=warped.dtype, generator=gen)
    return objective.step(sample)


def group_loss(images: Tensor, velocity: Tensor, spacing, config: RegNetConfig, seed: int = 0) -> dict:
    """Similarity + lam x smoothness of one group under its predicted velocities.

    Args:
        images: ``[N, 1, *S]``; velocity: ``[N, d, *S]`` mm; spacing: mm per axis.

    Returns:
        dict of 0-dim tensors ``loss``, ``similarity``, ``smoothness``.
    """
    from ..groupwise.loop import warp_with_overlap

    points, _ = integrate(velocity, spacing, config.svf_steps)
    warped, inside = warp_with_overlap(images, points, tuple(spacing))
    sim = similarity_loss(warped, inside, config, seed)
    smooth = spatial.membrane_energy(velocity, spacing, reduction="sum")
    return {"loss": sim + config.lam * smooth, "similarity": sim, "smoothness": smooth}


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainOptions:
    """Budget and data stream of :func:`train` (identical for the three losses).

    ``pool``: None = a fresh misalignment every draw; an integer = a fixed training set of that many
    (slice, misalignment) groups drawn once, like the official pre-generated FFDs (spec §8.4(a)).
    """

    steps: int = 250
    batch: int = 4
    lr: float = 3e-3
    seed: int = 0
    misalignment: dict | None = None
    pool: int | None = None

    def groups(self, num_slices: int):
        """Iterator over the global batches of ``(slice index, misalignment seed)``, one per step."""
        gen = torch.Generator().manual_seed(self.seed)
        fixed = None if self.pool is None else _draw_specs(gen, num_slices, self.pool)
        for _ in range(self.steps):
            if fixed is None:
                yield _draw_specs(gen, num_slices, self.batch)
            else:
                yield [fixed[i] for i in torch.randint(len(fixed), (self.batch,), generator=gen).tolist()]


def _draw_specs(generator: torch.Generator, num_slices: int, batch: int) -> list[tuple[int, int]]:
    idx = torch.randint(num_slices, (batch,), generator=generator).tolist()
    seeds = torch.randint(2 ** 31 - 1, (batch,), generator=generator).tolist()
    return list(zip(idx, seeds))


def train(config: RegNetConfig, slices: list[ImageGroup], options: TrainOptions | None = None, *,
          ctx: dist.DistContext | None = None, progress: bool = False, callback=None,
          freeze: bool = False) -> tuple[GroupRegNet, list[dict]]:
    """Train a :class:`GroupRegNet` on misaligned groups drawn from aligned slices (no labels are used).

    Each step draws a global batch of ``options.batch`` (slice, misalignment seed) pairs from a stream seeded by
    ``options.seed`` -- the same on every rank -- and each rank builds and processes its share
    (:func:`xreg_edu.vae.distributed.shard`); the loss is the mean over the groups.

    Args:
        config: :class:`RegNetConfig`.
        slices: aligned groups with N = ``config.num_images`` images (e.g. :func:`xreg_edu.vae.data.load_slices`).
        options: :class:`TrainOptions`.
        ctx: distributed context (default: single process on CPU).
        progress: tqdm bar (rank 0 only).
        callback: optional ``f(step, record)``.
        freeze: leave the parameters untouched (the optimiser steps are skipped; a control for tests).

    Returns:
        ``(model in eval mode, history)``; history = one dict per step (global-batch means of loss, similarity,
        smoothness; seconds).
    """
    from tqdm.auto import tqdm

    from .data import make_group

    opts = options or TrainOptions()
    ctx = ctx or dist.DistContext()
    if not slices:
        raise ValueError("slices is empty: pass the aligned training slices")
    bad = [i for i, s in enumerate(slices) if len(s) != config.num_images]
    if bad:
        raise ValueError(f"slices {bad[:5]} do not hold N = {config.num_images} images (the network's input size)")
    torch.manual_seed(opts.seed)
    model = GroupRegNet(config).to(ctx.device)
    model.train()
    net = dist.wrap_model(model, ctx)
    opt = torch.optim.Adam(net.parameters(), lr=opts.lr)
    history, t0 = [], time.perf_counter()
    stream = opts.groups(len(slices))
    for step in tqdm(range(opts.steps), disable=not (progress and ctx.is_main), desc=f"regnet {config.loss}"):
        specs = dist.shard(next(stream), ctx)
        groups = [make_group(slices[i], config.num_images, seed=s, misalignment=opts.misalignment)[0]
                  for i, s in specs]
        images = torch.stack([g.images[:, 0] for g in groups]).to(ctx.device)
        velocity = net(images)
        terms = [group_loss(images[b][:, None], velocity[b], g.spacing, config, seed=s)
                 for b, (g, (_, s)) in enumerate(zip(groups, specs))]
        loss = torch.stack([t["loss"] for t in terms]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not freeze:
            opt.step()
        rec = {"step": step, "seconds": time.perf_counter() - t0}
        for key in ("loss", "similarity", "smoothness"):
            rec[key] = dist.reduce_mean(torch.stack([t[key] for t in terms]).mean(), ctx)
        history.append(rec)
        if callback is not None:
            callback(step, rec)
    model.eval()
    return model, history


# ---------------------------------------------------------------------------------------------- inference
@dataclass
class RegNetRegistration:
    """Result of :func:`register`: ``points``/``displacement``/``velocity`` ``[N, d, *S]`` mm, ``warped``
    ``[N, 1, *S]``, ``warped_labels`` (if the group had labels), ``seconds`` of the forward pass + integration."""

    points: Tensor
    displacement: Tensor
    velocity: Tensor
    warped: Tensor
    warped_labels: Tensor | None
    seconds: float


def register(model: GroupRegNet, group: ImageGroup) -> RegNetRegistration:
    """Register one group (N = ``model.config.num_images``) in one forward pass."""
    if len(group) != model.config.num_images:
        raise ValueError(f"this network registers groups of N = {model.config.num_images}, got N = {len(group)}")
    device = next(model.parameters()).device
    images = group.images.to(device)
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        v = model(images[:, 0][None])[0]
        points, disp = integrate(v, group.spacing, model.config.svf_steps)
    seconds = time.perf_counter() - t0
    warped = spatial.warp(images, points, group.spacing)
    wl = None if group.labels is None else spatial.warp_labels(group.labels.to(device), points, group.spacing)
    return RegNetRegistration(points, disp, v, warped, wl, seconds)


def evaluate_group(model: GroupRegNet | None, group: ImageGroup) -> dict:
    """Groupwise Dice (mean and per class), ASSD (mm), folding % and time for one labelled group.

    ``model=None`` evaluates the unregistered group (the table's "None" row).
    """
    from ..evaluate import assd, folding_percentage, group_dice

    if group.labels is None:
        raise ValueError("evaluate_group needs a group with labels")
    if model is None:
        labels, fold, seconds = group.labels, 0.0, 0.0
    else:
        res = register(model, group)
        labels, seconds = res.warped_labels, res.seconds
        fold = float(folding_percentage(res.displacement, group.spacing).mean())
    per = group_dice(labels, per_class=True)
    return {"dice": float(group_dice(labels)), "dice_per_class": {int(k): float(v) for k, v in per.items()},
            "assd": float(assd(labels, group.spacing)), "folding_percent": fold, "seconds": seconds}


# ---------------------------------------------------------------------------------------------- weights
def save(model: GroupRegNet, path: str | Path, meta: dict | None = None) -> Path:
    """Write the weights with :func:`xreg_edu.vae.weights.save_weights` (config in the metadata, sha256 recorded)."""
    from .weights import save_weights

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_weights(state, path, {"format": FORMAT, "config": model.config.to_dict(), **(meta or {})})


def load(path: str | Path, map_location="cpu") -> GroupRegNet:
    """Rebuild a network from :func:`save`'s files; the sha256 is verified by :func:`xreg_edu.vae.weights.load_weights`."""
    from .weights import load_weights

    state, meta = load_weights(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a group registration network (format {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    model = GroupRegNet(RegNetConfig.from_dict(meta["config"]))
    model.load_state_dict(state)
    model.to(map_location).eval()
    model.meta = meta
    return model


def pretrained_path(loss: str) -> Path:
    """``xreg_edu/weights/regnet_{loss}.pt``."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return WEIGHTS_DIR / f"regnet_{loss}.pt"


def load_pretrained(loss: str) -> GroupRegNet:
    """The committed network trained with ``loss`` (see its ``.json`` for command, config and held-out numbers)."""
    return load(pretrained_path(loss))


def main(argv=None) -> None:
    """``python -m xreg_edu.vae.regnet --loss ape ...`` (also under ``torchrun``; ``--batch`` is the global batch)."""
    import sys

    p = argparse.ArgumentParser(description="Train a learning-based groupwise baseline (APE / CTE / X-metric loss)")
    p.add_argument("--loss", required=True, choices=LOSSES)
    p.add_argument("--steps", type=int, default=TrainOptions.steps)
    p.add_argument("--batch", type=int, default=4, help="global batch (groups per step, split over the ranks)")
    p.add_argument("--lr", type=float, default=TrainOptions.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lam", type=float, default=RegNetConfig.lam)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--magnitude", type=float, default=None, help="misalignment magnitude (mm), default data's")
    p.add_argument("--subjects", default="train",
                   help="'train' (vae.data.patient_split()['train']: the card's train split less the validation "
                        "patients) or comma-separated names")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    from .data import MISALIGNMENT, load_slices, patient_split

    torch.set_num_threads(max(1, a.threads))
    torch.set_flush_denormal(True)
    split = patient_split("myops_cmr")
    subjects = list(split["train"]) if a.subjects == "train" else a.subjects.split(",")
    test = set(split["test"])
    if test & set(subjects):
        raise ValueError(f"--subjects includes test patients {sorted(test & set(subjects))}: train on the train split")
    mis = dict(MISALIGNMENT) if a.magnitude is None else {**MISALIGNMENT, "magnitude_mm": a.magnitude}
    cfg = RegNetConfig(loss=a.loss, lam=a.lam)
    opts = TrainOptions(steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, misalignment=mis)
    with dist.session(a.device) as ctx:
        slices = load_slices("myops_cmr", subjects, a.size)
        model, hist = train(cfg, slices, opts, ctx=ctx, progress=not a.no_progress)
        if ctx.is_main:
            info = {"command": "python -m xreg_edu.vae.regnet " + " ".join(sys.argv[1:] if argv is None else argv),
                    "world_size": ctx.world_size, "subjects": subjects, "size": a.size, "threads": a.threads,
                    "train": {**asdict(opts), "seconds": hist[-1]["seconds"], "first": hist[0], "last": hist[-1]},
                    "parameters": count_parameters(model), "labels_used": False}
            if a.out:
                save(model, a.out, info)
            print(json.dumps({k: info[k] for k in ("parameters", "train")}, indent=1))


if __name__ == "__main__":
    main()
