"""Training loop and checkpoints of BIGR-lite (seeded, Adam, tqdm).

Our reconstruction, *inspired by* Luo et al. (arXiv 2401.02141); the papers give no training details, so every
hyper-parameter here is ours (spec §9.2). The loss is the negative ELBO of eq. 9 (per voxel); labels are never used.
Each step draws one real slice from the training patients, N ∈ ``group_sizes`` images of it (its modalities, repeated
if N > 3) and a fresh random misalignment. Two stages (see :func:`train`): A = the encoder alone on natively aligned
groups (plus random-contrast copies), B = the registration heads on misaligned groups, with the misalignment
magnitude ramping up (a curriculum).

**Departure from a purely unsupervised model (read this before you reuse the weights).** The committed weights were
trained with an *optional auxiliary term* that is not part of eq. 9: ``field_supervision`` × the mean squared error
between the estimated velocity and the simulated one (the training groups are misaligned by us, so the correction is
known; no labels are involved). With the ELBO alone (``field_supervision=0``) our small model improves Dice on large
groups (N ≥ 10) but not on the three-modality groups (N = 3): its encoder does not learn the same structure for
bSSFP, LGE and T2 in a few minutes of CPU training, and the heads then align mismatched structures. See
``xreg_edu/weights/README.md`` for the numbers of both.

Checkpoint = ``torch.save({"format": ..., "config": BIGRConfig dict, "state_dict": ..., "train": {...}})``.
Loading with a config that differs from the stored one raises a ``ValueError`` naming every differing field.

Command line (the exact command of every committed weight file is in ``xreg_edu/weights/README.md``)::

    python -m xreg_edu.vae.train --variant CD --steps 2000 --seed 0 --warmup 0.4,0.6 --joint \\
        --field-supervision 0.05 --out xreg_edu/weights/bigr_lite_cd.pt
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .._env import is_quick
from .data import MISALIGNMENT, GroupSampler, split_slices
from .model import BIGRConfig, BIGRLite

FORMAT = "xreg_edu.vae/bigr-lite-v1"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def quick_mode() -> bool:
    """True when the env var ``XREG_EDU_QUICK=1`` asks for shrunken iteration counts."""
    return is_quick()


def train(config: BIGRConfig | None = None, *, dataset: str = "myops_cmr", steps: int = 600, lr: float = 3e-3,
          seed: int = 0, size: int = 64, group_sizes=(3, 4), misalignment: dict | None = None,
          warmup: tuple[float, float] = (0.4, 0.7), progress: bool = True, out: str | Path | None = None, slices=None,
          callback=None, freeze_encoder: bool = True, augment: int = 3, field_supervision: float = 0.0,
          quick_steps: int = 150) -> tuple[BIGRLite, list[dict]]:
    """Train BIGR-lite on misaligned real groups, in two stages.

    Stage A (steps before ``warmup[0]``): anatomy only. φ_j = id, natively aligned groups, and only the encoder is
    updated; each group also gets ``augment`` copies of its images through random intensity maps
    (:func:`~xreg_edu.vae.data.intensity_remap`), so that the shared encoder learns structure that does not depend on
    the contrast. Stage B: the encoder is frozen (``freeze_encoder``) and the registration heads learn on misaligned
    groups; the misalignment magnitude grows linearly from 0 at ``warmup[0]`` to its full value at ``warmup[1]``.
    Both stages minimise the negative ELBO of eq. 9 per voxel (labels are never used).

    Args:
        config: model configuration (default :class:`BIGRConfig`).
        dataset: registry dataset for :func:`~xreg_edu.vae.data.split_slices` (ignored if ``slices`` is given).
        steps: optimiser steps (one group each); quick mode (``XREG_EDU_QUICK=1``) caps it at ``quick_steps``.
        lr: Adam learning rate.
        seed: seeds the weights and the group stream (same seed -> same model).
        size: image size (pixels per side).
        group_sizes: the N drawn per step.
        misalignment: keywords of :func:`xreg_edu.simulate.misalign` (default :data:`~xreg_edu.vae.data.MISALIGNMENT`).
        warmup: ``(start, end)`` as fractions of the steps: stage A before ``start``; the misalignment reaches its
            full magnitude at ``end``.
        progress: tqdm bar.
        out: optional checkpoint path written at the end.
        slices: optional list of aligned training slices (ImageGroup) instead of the dataset's train split.
        callback: optional ``f(step, terms_dict)``.
        freeze_encoder: keep the encoder fixed in stage B (joint training lets the encoder and the heads co-adapt
            to fields that reconstruct each image better than the true alignment does).
        augment: maximum number of intensity-remapped copies added to a group in stage A (0 = none).
        field_supervision: weight of an *optional, non-ELBO* auxiliary term, the mean squared error (mm²) between
            the estimated field and the simulated correction (−v for SVF misalignment; no labels). 0 = purely
            unsupervised (the default, as in the papers).
        quick_steps: step cap in quick mode.

    Returns:
        ``(model in eval mode, history)``; history = one dict per step (elbo and its terms per voxel, N, stage,
        seconds).
    """
    from tqdm.auto import tqdm

    from .data import intensity_remap

    cfg = config or BIGRConfig()
    if quick_mode():
        steps = min(steps, quick_steps)
    torch.set_flush_denormal(True)  # tiny probabilities/gradients otherwise slow the CPU down
    torch.manual_seed(seed)
    model = BIGRLite(cfg)
    model.train()
    if slices is None:
        slices, _ = split_slices(dataset, size)
    mis = dict(MISALIGNMENT if misalignment is None else misalignment)
    full = float(mis.get("magnitude_mm", 5.0))
    if field_supervision and mis.get("kind", "svf") != "svf":
        raise ValueError("field_supervision needs an SVF misalignment (its correction is the negated velocity)")
    sampler = GroupSampler(slices, group_sizes, seed=seed, misalignment=mis)
    start, end = warmup
    stage_a = int(round(start * steps))
    opt = torch.optim.Adam(model.encoder.parameters() if stage_a > 0 else model.parameters(), lr=lr)
    history, t0 = [], time.perf_counter()
    bar = tqdm(range(steps), disable=not progress, desc=f"BIGR-lite {cfg.variant}")
    for step in bar:
        if step == stage_a and stage_a > 0:  # stage B: registration heads (encoder frozen)
            if freeze_encoder:
                for p in model.encoder.parameters():
                    p.requires_grad_(False)
            opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        in_a = step < stage_a
        ramp = min(1.0, max(0.0, (step / max(1, steps) - start) / max(1e-6, end - start)))
        sampler.misalignment = {**mis, "magnitude_mm": full * ramp}
        group, truth = sampler()
        images = group.images
        if in_a and augment > 0:
            n_extra = int(torch.randint(1, augment + 1, (1,), generator=sampler.generator))
            pick = torch.randint(len(group), (n_extra,), generator=sampler.generator)
            images = torch.cat([images, intensity_remap(images[pick], sampler.generator)])
        result = model(images, group.spacing, geometry=not in_a)
        loss = result.terms.loss()
        if field_supervision and not in_a:
            loss = loss + field_supervision * (result.field + truth.params.to(result.field)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec = {"step": step, "n": len(images), "stage": "A" if in_a else "B", "seconds": time.perf_counter() - t0,
               **result.terms.as_dict()}
        history.append(rec)
        if progress and step % 10 == 0:
            bar.set_postfix(elbo=f"{rec['elbo']:.3f}", stage=rec["stage"])
        if callback is not None:
            callback(step, rec)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    if out is not None:
        save_checkpoint(model, out, train_info={"dataset": dataset, "steps": steps, "lr": lr, "seed": seed,
                                                "size": size, "group_sizes": list(group_sizes),
                                                "misalignment": mis, "warmup": list(warmup),
                                                "freeze_encoder": freeze_encoder, "augment": augment,
                                                "field_supervision": field_supervision,
                                                "seconds": time.perf_counter() - t0,
                                                "final_elbo": history[-1]["elbo"] if history else None})
    return model, history


def save_checkpoint(model: BIGRLite, path: str | Path, train_info: dict | None = None) -> Path:
    """``torch.save`` of the state dict plus the config dict (and how it was trained)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "config": model.config.to_dict(), "state_dict": state,
                "train": train_info or {}}, path)
    return path


def _config_diff(stored: dict, wanted: dict) -> list[str]:
    diffs = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key, "<missing>"), wanted.get(key, "<missing>")
        if isinstance(a, tuple):
            a = list(a)
        if isinstance(b, tuple):
            b = list(b)
        if a != b:
            diffs.append(f"{key}: checkpoint has {a!r}, requested {b!r}")
    return diffs


def load_checkpoint(path: str | Path, config: BIGRConfig | dict | None = None, map_location="cpu") -> BIGRLite:
    """Rebuild a model from a checkpoint.

    Args:
        path: file written by :func:`save_checkpoint`.
        config: optional expected configuration; if it differs from the stored one a ``ValueError`` lists the
            differing fields (instead of a cryptic state-dict size mismatch).
        map_location: passed to ``torch.load``.

    Returns:
        model in eval mode.
    """
    ckpt = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a BIGR-lite checkpoint (expected format {FORMAT!r})")
    stored = BIGRConfig.from_dict(ckpt["config"])
    if config is not None:
        wanted = config if isinstance(config, BIGRConfig) else BIGRConfig.from_dict({**stored.to_dict(), **config})
        diffs = _config_diff(stored.to_dict(), wanted.to_dict())
        if diffs:
            raise ValueError(f"checkpoint {Path(path).name} was trained with a different config: " + "; ".join(diffs))
    model = BIGRLite(stored)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint {Path(path).name} does not match its own config {stored}: {err}") from err
    model.eval()
    model.train_info = ckpt.get("train", {})
    return model


def pretrained_path(variant: str = "CD", dataset: str = "myops_cmr") -> Path:
    """Path of a committed weight file, e.g. ``xreg_edu/weights/bigr_lite_cd.pt``."""
    name = f"bigr_lite_{variant.lower()}.pt" if dataset == "myops_cmr" else f"bigr_lite_{variant.lower()}_{dataset}.pt"
    path = WEIGHTS_DIR / name
    if not path.exists():
        have = sorted(p.name for p in WEIGHTS_DIR.glob("*.pt"))
        raise FileNotFoundError(f"no pretrained weights {name}; available: {have}")
    return path


def load_pretrained(variant: str = "CD", dataset: str = "myops_cmr") -> BIGRLite:
    """The committed pretrained model (see ``xreg_edu/weights/README.md`` for how it was made)."""
    return load_checkpoint(pretrained_path(variant, dataset))


def main(argv=None) -> None:
    """``python -m xreg_edu.vae.train ...`` (see the module docstring)."""
    p = argparse.ArgumentParser(description="Train BIGR-lite (hierarchical VAE for groupwise registration)")
    p.add_argument("--dataset", default="myops_cmr")
    p.add_argument("--variant", default="CD", choices=["CD", "CN", "PD", "PN"])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channels", type=int, default=None)
    p.add_argument("--levels", default=None, help="comma-separated downsampling factors, e.g. 16,8")
    p.add_argument("--lam", type=float, default=None, help="precision of the smoothness prior p(v)")
    p.add_argument("--magnitude", type=float, default=None, help="misalignment magnitude (mm)")
    p.add_argument("--warmup", default="0.4,0.7", help="stage-A end and full-misalignment point (fractions)")
    p.add_argument("--augment", type=int, default=3, help="intensity-remapped copies per group in stage A")
    p.add_argument("--beta-z", type=float, default=None, help="weight of the anatomy KL (1 = the ELBO)")
    p.add_argument("--max-step", type=float, default=None, help="bound on one field increment (mm)")
    p.add_argument("--template", default=None, choices=["mean", "others"])
    p.add_argument("--joint", action="store_true", help="keep training the encoder in stage B")
    p.add_argument("--field-supervision", type=float, default=0.0,
                   help="weight of the optional non-ELBO simulated-field term (0 = unsupervised)")
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these small nets)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    overrides = {"variant": a.variant}
    if a.channels is not None:
        overrides["channels"] = a.channels
    if a.levels is not None:
        overrides["levels"] = tuple(int(f) for f in a.levels.split(","))
    if a.lam is not None:
        overrides["lam"] = a.lam
    if a.beta_z is not None:
        overrides["beta_z"] = a.beta_z
    if a.max_step is not None:
        overrides["max_step_mm"] = a.max_step
    if a.template is not None:
        overrides["template"] = a.template
    mis = None if a.magnitude is None else {**MISALIGNMENT, "magnitude_mm": a.magnitude}
    cfg = BIGRConfig(**overrides)
    torch.set_num_threads(max(1, a.threads))
    model, hist = train(cfg, dataset=a.dataset, steps=a.steps, lr=a.lr, seed=a.seed, size=a.size,
                        progress=not a.no_progress, out=a.out, misalignment=mis,
                        warmup=tuple(float(f) for f in a.warmup.split(",")), augment=a.augment,
                        freeze_encoder=not a.joint, field_supervision=a.field_supervision)
    print(json.dumps({"variant": a.variant, "steps": len(hist), "final": hist[-1] if hist else None}, indent=1))


if __name__ == "__main__":
    main()
