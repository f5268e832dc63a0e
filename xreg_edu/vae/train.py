"""Training of BIGR-lite on the MAP-ELBO of eq. 9 alone (seeded, Adam), checkpoints, pretrained weights.

Our reconstruction, *inspired by* Luo et al. (arXiv 2401.02141); the papers give no training details, so every
hyper-parameter here is ours (spec §9.2). **No labels and no simulated ground-truth field enter any loss.**

Two stages (:func:`train`):

- **A, unsupervised warm start (declared).** The encoder is distilled towards X-CoReg's EM posterior of natively
  aligned *training* slices (:mod:`xreg_edu.vae.teacher`; class order made consistent by Hungarian matching of
  intensity profiles; with ``teacher_classes`` > K the EM classes that only one sequence separates are merged). Contrast augmentation replaces a member's image in place by a random monotone remap of itself
  (never an extra member).
- **B, registration.** The encoder is frozen (default) and the heads minimise the negative MAP-ELBO per voxel on
  misaligned training groups (random SVF misalignment, magnitude ramped up over the first 30 % of stage B).

Data parallel: ``torchrun --standalone --nproc_per_node=2 -m xreg_edu.vae.train ...`` trains with
DistributedDataParallel (gloo on CPU, NCCL on CUDA, :mod:`xreg_edu.vae.distributed`). Every rank draws the same
seeded global batch of ``batch`` groups and takes its contiguous share; the loss is the mean over the local groups,
and DDP averages the gradients, so the trajectory equals the single-process run with the same global batch. This is
the way to train on full datasets.

Command line (the exact command of every committed weight file is in its JSON)::

    python -m xreg_edu.vae.train --variant CD --out xreg_edu/weights/bigr_lite_cd.pt
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from .._env import is_quick
from . import distributed as dist
from .data import MISALIGNMENT, GroupSampler, intensity_remap, split_slices
from .inference import true_correction_field
from .model import BIGRConfig, BIGRLite, pair_agreement
from .teacher import distillation_loss, teacher_posteriors
from .weights import load_weights, save_weights

FORMAT = "xreg_edu.vae/bigr-lite-v2"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
#: the loss of every shipped weight file, stated in its JSON
OBJECTIVE = ("stage A: mean cross-entropy of each image's expert against X-CoReg's EM posterior of its natively "
             "aligned training slice (unsupervised teacher; Hungarian-matched class order; EM classes merged down to "
             "the student's K by the per-sequence confusion of the training slices); stage B: negative MAP-ELBO of "
             "eq. 9 per voxel (exact expected log-likelihood, closed-form f_jk, image voxels outside the common "
             "space with their prior-marginal likelihood, class-proportion prior, smoothness prior lam), encoder "
             "frozen (P: its per-channel log-variance offset trained with the heads). No labels, no simulated field.")


def quick_mode() -> bool:
    """True when ``XREG_EDU_QUICK=1`` asks for shrunken iteration counts."""
    return is_quick()


def augment_in_place(images: Tensor, generator: torch.Generator, prob: float) -> Tensor:
    """Replace each member, with probability ``prob``, by a random monotone remap of itself (same anatomy)."""
    out = images.clone()
    for j in range(len(images)):
        if float(torch.rand(1, generator=generator)) < prob:
            out[j:j + 1] = intensity_remap(images[j:j + 1], generator)
    return out



def agreement(model: BIGRLite, slices) -> float:
    """Mean cross-sequence pair agreement (:func:`~xreg_edu.vae.model.pair_agreement`) of the experts on aligned
    slices (e.g. the validation or test patients)."""
    model.eval()
    with torch.no_grad():
        return sum(pair_agreement(model.represent(s.images)[0]) for s in slices) / len(slices)


def train(config: BIGRConfig | None = None, *, dataset: str = "myops_cmr", distill_steps: int = 600,
          steps: int = 600, batch: int = 2, lr: float = 3e-3, seed: int = 0, size: int = 64,
          group_sizes=(3,), misalignment: dict | None = None, ramp: float = 0.3, augment: float = 0.3,
          freeze_encoder: bool = True, slices=None, teacher=None, progress: bool = True, callback=None,
          quick_steps: int = 60, device=None, encoder_state: dict | None = None, teacher_classes: int | None = None,
          anchor: float = 0.0, field_regression: float = 0.0) -> tuple[BIGRLite, list[dict]]:
    """Train BIGR-lite: stage A (distil the teacher into the encoder), stage B (heads on the MAP-ELBO).

    Args:
        config: model configuration (default :class:`BIGRConfig`).
        dataset: registry dataset (train part of :func:`~xreg_edu.vae.data.patient_split`) unless ``slices``.
        distill_steps: stage-A steps (0 = no warm start); steps: stage-B steps. Quick mode caps both.
        batch: global batch (groups per step), split across the DDP ranks.
        lr: Adam learning rate.
        seed: seeds the weights and the group stream (same seed -> same model, on any number of ranks).
        size: image size; group_sizes: the N drawn in stage B.
        misalignment: keywords of :func:`xreg_edu.simulate.misalign` (default ``xreg_edu.vae.data.MISALIGNMENT``).
        ramp: fraction of stage B over which the misalignment magnitude grows from 0 to full.
        augment: probability of the in-place contrast remap of a member (stage A).
        freeze_encoder: keep the encoder fixed in stage B.
        slices: aligned training slices (ImageGroup list) instead of the dataset's train part.
        teacher: optional precomputed ``[K, *S]`` teacher posteriors, one per slice.
        progress: tqdm bar (rank 0); callback: optional ``f(step, record)``.
        quick_steps: cap of each stage in quick mode.
        device: training device (default: CUDA if available; DDP: ``cuda:LOCAL_RANK``).
        encoder_state: optional encoder weights to start from (e.g. a committed stage-A encoder, then
            ``distill_steps=0``).
        teacher_classes: EM classes of the teacher (default ``config.channels``); when larger, the teacher's classes
            are merged down to ``config.channels`` (:func:`~xreg_edu.vae.teacher.merge_plan`, from these slices).
        anchor: weight of the distillation loss (on one aligned slice per step) kept in stage B; > 0 trains the
            encoder jointly with the heads, anchored to the teacher (0 = encoder as ``freeze_encoder`` says).
        field_regression: **supervised ablation only** — weight of the mean squared error (mm²) between the
            predicted latent field and the simulated true correction, added to the stage-B loss. Never used for
            shipped weights (their JSON lists no supervised term); recorded in ``train_info``.

    Returns:
        ``(model in eval mode, history)``: one dict per step (stage, loss, ELBO terms per voxel, seconds).
    """
    from tqdm.auto import tqdm

    cfg = config or BIGRConfig()
    if quick_mode():
        distill_steps, steps = min(distill_steps, quick_steps), min(steps, quick_steps)
    torch.set_flush_denormal(True)
    with dist.session(device) as ctx:
        if anchor > 0 and ctx.world_size > 1:
            raise ValueError("anchor > 0 runs its distillation term outside the DDP wrapper: train it in one process "
                             "(or use anchor=0 under torchrun)")
        torch.manual_seed(seed)
        model = BIGRLite(cfg)
        if encoder_state is not None:
            model.encoder.load_state_dict(encoder_state)
        model = model.to(ctx.device)
        if slices is None:
            slices = split_slices(dataset, size, "train")
        plan = None
        if teacher is None and (distill_steps > 0 or anchor > 0):
            teacher, _, plan = teacher_posteriors(slices, k=teacher_classes or cfg.channels, bins=cfg.bins, seed=seed,
                                                  classes=cfg.channels)
        gen = torch.Generator().manual_seed(seed)
        history, t0 = [], time.perf_counter()
        bar = tqdm(total=distill_steps + steps, disable=not (progress and ctx.is_main), desc=f"BIGR-lite {cfg.variant}")

        # stage A: distil the EM teacher into the encoder (aligned slices, in-place contrast augmentation)
        model.train()
        enc = dist.wrap_model(model.encoder, ctx)
        opt = torch.optim.Adam(enc.parameters(), lr=lr)
        for step in range(distill_steps):
            picks = [int(torch.randint(len(slices), (1,), generator=gen)) for _ in range(batch)]
            augs = [augment_in_place(slices[i].images, gen, augment) for i in picks]
            local = dist.shard(list(zip(picks, augs)), ctx)
            loss = 0.0
            for i, imgs in local:
                out = enc(imgs.to(ctx.device))
                logits = out if cfg.categorical else out[0]
                loss = loss + distillation_loss(logits, teacher[i].to(ctx.device)) / len(local)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec = {"step": step, "stage": "A", "loss": dist.reduce_mean(loss, ctx), "seconds": time.perf_counter() - t0}
            history.append(rec)
            bar.update(1)
            if callback is not None:
                callback(step, rec)

        # stage B: registration heads on the MAP-ELBO alone
        del enc, opt  # the stage-A DDP wrapper must not see stage-B gradients
        if freeze_encoder and anchor == 0:
            for p in model.encoder.parameters():
                p.requires_grad_(False)
        net = dist.wrap_model(model, ctx)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        mis = dict(MISALIGNMENT if misalignment is None else misalignment)
        full = float(mis.get("magnitude_mm", 15.0))
        sampler = GroupSampler(slices, group_sizes, seed=seed + 1, misalignment=mis)
        for step in range(steps):
            frac = min(1.0, step / max(1.0, ramp * steps)) if ramp > 0 else 1.0
            sampler.misalignment = {**mis, "magnitude_mm": full * frac}
            local = dist.shard([sampler() for _ in range(batch)], ctx)
            loss, terms = 0.0, []
            for g, truth in local:
                out = net(g.images.to(ctx.device), g.spacing)
                loss = loss + out.terms.loss() / len(local)
                if field_regression > 0:  # SUPERVISED ablation: the simulated correction enters the loss
                    target = true_correction_field(model, truth).to(out.field)
                    loss = loss + field_regression * (out.field - target).pow(2).mean() / len(local)
                terms.append(out.terms.as_dict())
            if anchor > 0:  # the declared distillation anchor: one aligned, augmented training slice per step
                i = int(torch.randint(len(slices), (1,), generator=gen))
                imgs = augment_in_place(slices[i].images, gen, augment).to(ctx.device)
                loss = loss + anchor * distillation_loss(model.logits(imgs), teacher[i].to(ctx.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec = {"step": distill_steps + step, "stage": "B", "loss": dist.reduce_mean(loss, ctx),
                   **{k: sum(t[k] for t in terms) / len(terms) for k in terms[0]},
                   "seconds": time.perf_counter() - t0}
            history.append(rec)
            bar.update(1)
            if progress and ctx.is_main and step % 10 == 0:
                bar.set_postfix(elbo=f"{rec['elbo']:.4f}")
            if callback is not None:
                callback(distill_steps + step, rec)
        bar.close()
        model = dist.unwrap(net)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    model.train_info = {"dataset": dataset, "distill_steps": distill_steps, "steps": steps, "batch": batch, "lr": lr,
                        "seed": seed, "size": size, "group_sizes": list(group_sizes), "misalignment": mis,
                        "ramp": ramp, "augment": augment, "freeze_encoder": freeze_encoder and anchor == 0,
                        "anchor": anchor, "field_regression": field_regression, "teacher_classes": teacher_classes or cfg.channels, "merge_plan": plan,
                        "world_size": ctx.world_size, "seconds": time.perf_counter() - t0,
                        "final_loss": history[-1]["loss"] if history else None}
    return model.cpu(), history


def save_checkpoint(model: BIGRLite, path: str | Path, meta: dict | None = None) -> Path:
    """Weights + JSON sidecar (:func:`~xreg_edu.vae.weights.save_weights`); ``meta`` adds e.g. held-out numbers."""
    meta = dict(meta or {})
    meta.setdefault("command", "(not from the command line)")
    info = getattr(model, "train_info", {})
    return save_weights(model.state_dict(), path, {"format": FORMAT, **meta, "config": model.config.to_dict(),
                                                    "train": {**info, **meta.get("train", {})}})


def _config_diff(stored: dict, wanted: dict) -> list[str]:
    diffs = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key, "<missing>"), wanted.get(key, "<missing>")
        a, b = (list(a) if isinstance(a, tuple) else a), (list(b) if isinstance(b, tuple) else b)
        if a != b:
            diffs.append(f"{key}: checkpoint has {a!r}, requested {b!r}")
    return diffs


def load_checkpoint(path: str | Path, config: BIGRConfig | dict | None = None, map_location="cpu") -> BIGRLite:
    """Rebuild a model from weights written by :func:`save_checkpoint` (sha256 checked first).

    Args:
        path: ``.pt`` file with its ``.json`` sidecar.
        config: optional expected configuration; a difference is a ``ValueError`` naming every differing field.

    Returns:
        model in eval mode, with ``train_info`` and ``meta`` (the sidecar) attached.
    """
    state, meta = load_weights(path, map_location)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a BIGR-lite v2 checkpoint (format {meta.get('format')!r}, expected "
                         f"{FORMAT!r}); retrain it with: {meta.get('command')}")
    stored = BIGRConfig.from_dict(meta["config"])
    if config is not None:
        wanted = config if isinstance(config, BIGRConfig) else BIGRConfig.from_dict({**stored.to_dict(), **config})
        diffs = _config_diff(stored.to_dict(), wanted.to_dict())
        if diffs:
            raise ValueError(f"checkpoint {Path(path).name} was trained with a different config: " + "; ".join(diffs))
    model = BIGRLite(stored)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {Path(path).name} does not match its own config {stored}: {err}") from err
    model.eval()
    model.train_info, model.meta = meta.get("train", {}), meta
    return model


def pretrained_path(variant: str = "CD") -> Path:
    """Path of a committed weight file, e.g. ``xreg_edu/weights/bigr_lite_cd.pt``."""
    path = WEIGHTS_DIR / f"bigr_lite_{variant.lower()}.pt"
    if not path.exists():
        have = sorted(p.name for p in WEIGHTS_DIR.glob("bigr_lite_*.pt"))
        raise FileNotFoundError(f"no pretrained weights {path.name}; available: {have}")
    return path


def load_pretrained(variant: str = "CD") -> BIGRLite:
    """The committed pretrained model (its JSON says exactly how it was made and what it scores)."""
    return load_checkpoint(pretrained_path(variant))


def heldout_numbers(model: BIGRLite, n_groups: int | None = None) -> dict:
    """Dice before/after on the shared held-out groups (:func:`~xreg_edu.vae.data.heldout_groups`) and the
    experts' pair agreement on the aligned test slices."""
    from ..evaluate import group_dice
    from .data import HELDOUT, heldout_groups
    from .inference import register

    groups = heldout_groups(n_groups=n_groups)
    before = [float(group_dice(g.labels)) for g, _ in groups]
    after = [float(group_dice(register(model, g).warped_labels)) for g, _ in groups]
    test = split_slices(HELDOUT["dataset"], HELDOUT["size"], "test")
    return {"protocol": {**HELDOUT, "groups": len(groups), "function": "xreg_edu.vae.data.heldout_groups"},
            "dice_none": sum(before) / len(before), "dice": sum(after) / len(after),
            "agreement_test": agreement(model, test)}


def main(argv=None) -> None:
    """``python -m xreg_edu.vae.train ...`` (also under ``torchrun``)."""
    p = argparse.ArgumentParser(description="Train BIGR-lite on the MAP-ELBO (hierarchical VAE, groupwise registration)")
    p.add_argument("--dataset", default="myops_cmr")
    p.add_argument("--variant", default="CD", choices=["CD", "CN", "PD", "PN"])
    p.add_argument("--distill-steps", type=int, default=600)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=2, help="global batch (groups per step), split across ranks")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channels", type=int, default=None)
    p.add_argument("--encoder", default=None, choices=["unet", "dilated"])
    p.add_argument("--appearance", default=None, choices=["parzen", "gaussian"])
    p.add_argument("--lam", type=float, default=None, help="precision of the smoothness prior p(v)")
    p.add_argument("--magnitude", type=float, default=None, help="misalignment magnitude (mm)")
    p.add_argument("--teacher-classes", type=int, default=None,
                   help="EM classes of the teacher, merged down to --channels (default: --channels)")
    p.add_argument("--anchor", type=float, default=0.0, help="distillation weight kept in stage B (trains the encoder)")
    p.add_argument("--joint", action="store_true", help="keep training the encoder in stage B")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--eval", action="store_true", help="record the held-out numbers in the JSON (rank 0)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    overrides = {"variant": a.variant}
    for key in ("channels", "encoder", "appearance", "lam"):
        if getattr(a, key) is not None:
            overrides[key] = getattr(a, key)
    mis = None if a.magnitude is None else {**MISALIGNMENT, "magnitude_mm": a.magnitude}
    torch.set_num_threads(max(1, a.threads))
    model, hist = train(BIGRConfig(**overrides), dataset=a.dataset, distill_steps=a.distill_steps, steps=a.steps,
                        batch=a.batch, lr=a.lr, seed=a.seed, size=a.size, misalignment=mis,
                        freeze_encoder=not a.joint, progress=not a.no_progress, device=a.device,
                        teacher_classes=a.teacher_classes, anchor=a.anchor)
    if not dist.launched_by_torchrun() or int(__import__("os").environ.get("RANK", "0")) == 0:
        val = split_slices(a.dataset, a.size, "val")
        meta = {"command": "python -m xreg_edu.vae.train " + " ".join(shlex.quote(x) for x in
                                                                      (sys.argv[1:] if argv is None else argv)),
                "objective": OBJECTIVE, "supervised_terms": [],
                "environment": f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
                               f"world size {model.train_info['world_size']}",
                "agreement_val": agreement(model, val),
                "loss_curve": [round(h["loss"], 5) for h in hist[:: max(1, len(hist) // 50)]]}
        if a.eval:
            meta["held_out"] = heldout_numbers(model)
        if a.out:
            save_checkpoint(model, a.out, meta)
        print(json.dumps({"variant": a.variant, "steps": len(hist), "seconds": model.train_info["seconds"],
                          **{k: meta[k] for k in ("agreement_val",)}, **({"held_out": meta["held_out"]}
                                                                          if a.eval else {})}, indent=1))


if __name__ == "__main__":
    main()
