"""Data-parallel training with ``torch.distributed``: the way to train on full datasets.

Four small functions make a single-process training loop data-parallel without changing its result:

    >>> from xreg_edu.vae import distributed as dist
    >>> with dist.session() as ctx:                    # torchrun's environment, or a no-op single process
    ...     net = dist.wrap_model(Net().to(ctx.device), ctx)
    ...     for step in range(steps):
    ...         batch = draw_global_batch(step)          # the SAME seeded global batch on every rank
    ...         loss = loss_fn(net, dist.shard(batch, ctx))   # mean over this rank's share
    ...         opt.zero_grad(); loss.backward(); opt.step()  # DDP averages the gradients over the ranks
    ...         log(dist.reduce_mean(loss, ctx))         # the global-batch loss, identical on every rank

**Why the trajectory is the single-process one.** Every rank draws the same global batch of B items from the same
seeded stream and keeps a contiguous share of B / W items (W = world size; :func:`shard` refuses a B that W does
not divide). Each rank's loss is the mean over its share, and DistributedDataParallel averages the gradients over
the ranks, so the update is the gradient of the mean over the global batch -- exactly the single-process update.
DDP also broadcasts rank 0's initial parameters. The model must not hold cross-item state (no BatchNorm).
``tests/test_distributed.py`` checks the equality with 2 CPU processes.

**How to train on full datasets.** Launch the same command under ``torchrun``; ``--batch`` is the *global* batch::

    # one machine, 2 CPU processes (gloo)
    torchrun --standalone --nproc_per_node=2 -m xreg_edu.vae.regnet --loss xmetric --batch 8 --steps 2000
    torchrun --standalone --nproc_per_node=2 -m xreg_edu.vae.train --variant CD ...
    # one machine with G GPUs: one process per GPU (NCCL, cuda:LOCAL_RANK)
    torchrun --standalone --nproc_per_node=G -m xreg_edu.vae.regnet --loss xmetric --batch 32 --device cuda
    # several machines: the same command on each, with --nnodes=M --node_rank=i --rdzv-endpoint=HOST:PORT

Without ``torchrun`` (no ``RANK``/``WORLD_SIZE`` in the environment) :func:`session` yields a single-process
context and every function here is the identity, so one code path serves both.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.distributed as td
from torch import Tensor, nn

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device``, the ``backend`` in use
    (None for the single-process no-op context); ``owner``: this context created the process group (only the owner
    destroys it, so a nested :func:`session` leaves the outer one intact)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owner: bool = field(default=False, compare=False)

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes files and prints)."""
        return self.rank == 0


def launched_by_torchrun(environ=None) -> bool:
    """True when ``RANK`` and ``WORLD_SIZE`` are set (torchrun, or a launcher that sets the same variables)."""
    env = os.environ if environ is None else environ
    return "RANK" in env and "WORLD_SIZE" in env


def _resolve_device(device, local_rank: int) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but CUDA is not available; pass device='cpu'")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


def init(device=None) -> DistContext:
    """Join the process group described by torchrun's environment, or return the single-process context.

    Args:
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available). On CUDA each process takes
            ``cuda:LOCAL_RANK`` and the backend is NCCL; on CPU it is gloo.

    Returns:
        :class:`DistContext`.
    """
    env = os.environ
    if not launched_by_torchrun(env):
        return DistContext(device=_resolve_device(device, 0))
    missing = [v for v in _TORCHRUN_VARS if v not in env]
    if missing:
        raise RuntimeError(f"RANK/WORLD_SIZE are set but {missing} are not: launch with torchrun "
                           f"(torchrun --standalone --nproc_per_node=2 -m ...) or set them all")
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    dev = _resolve_device(device, local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owner = not td.is_initialized()
    if owner:
        td.init_process_group(backend=backend, rank=rank, world_size=world,
                              device_id=dev if dev.type == "cuda" else None)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend, owner=owner)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group created by :func:`init` (no-op for the single-process context or a nested one)."""
    if ctx.owner and td.is_initialized():
        td.destroy_process_group()


@contextmanager
def session(device=None):
    """``with session() as ctx:`` -- :func:`init` on entry, :func:`shutdown` on exit (also after an error)."""
    ctx = init(device)
    try:
        yield ctx
    finally:
        shutdown(ctx)


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel(model)`` in a distributed context (model already on ``ctx.device``), else ``model``.

    DDP broadcasts rank 0's parameters and buffers, then averages the gradients in every backward pass.
    """
    if not ctx.is_distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (what to save), or the model itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard(batch: Sequence | Tensor, ctx: DistContext):
    """This rank's contiguous share of a global batch (list, tuple or tensor along dim 0).

    Args:
        batch: the global batch, B items, identical on every rank.
        ctx: :class:`DistContext`; B must be a multiple of ``ctx.world_size``.

    Returns:
        items ``[rank * B / W, (rank + 1) * B / W)`` (the whole batch in a single process).
    """
    b, w = len(batch), ctx.world_size
    if b % w:
        raise ValueError(f"global batch size {b} is not a multiple of the world size {w}: choose a batch that "
                         f"{w} processes can split evenly (e.g. {w * max(1, -(-b // w))})")
    per = b // w
    return batch[ctx.rank * per:(ctx.rank + 1) * per]


def reduce_mean(value: Tensor | float, ctx: DistContext) -> float:
    """Mean of a scalar over the ranks (for logging; with equal shares it is the global-batch mean)."""
    t = torch.as_tensor(value.detach() if isinstance(value, Tensor) else value, dtype=torch.float64)
    if not ctx.is_distributed:
        return float(t)
    t = t.to(ctx.device).reshape(1).clone()
    td.all_reduce(t, op=td.ReduceOp.SUM)
    return float(t) / ctx.world_size
