"""Data-parallel training (xreg_edu.vae.distributed): 2 CPU processes under torchrun reproduce the single-process
loss trajectory for the same global batch (the regnet trainer and BIGR-lite's xreg_edu.vae.train.train).

Run as a script (``torchrun --nproc_per_node=2 tests/test_distributed.py OUT.json``) it is the worker of the test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xreg_edu.vae import distributed as dist

STEPS, BATCH = 4, 4


def _train(ctx):
    from test_regnet import MIS, _tiny, phantom_slices
    from xreg_edu.vae import regnet as R

    opts = R.TrainOptions(steps=STEPS, batch=BATCH, lr=3e-3, seed=0, misalignment=MIS)
    model, hist = R.train(_tiny("xmetric"), phantom_slices(6), opts, ctx=ctx)
    return hist, [float(p.detach().double().sum()) for p in model.parameters()]


def _train_bigr():
    """BIGR-lite's trainer (xreg_edu.vae.train.train; it opens its own session, nested in the worker's).

    Its loss trajectory is compared; its parameters after several Adam steps are not, because they legitimately
    differ: DDP sums the two ranks' half-batch gradients, a single process the whole batch's, and the rounding
    difference (1e-7 relative) is turned by Adam into O(lr) steps for the gradient entries that nearly cancel (the
    group-mean subtraction of the heads makes shared biases' gradients cancel up to the leaky-ReLU slopes). The same
    divergence appears without DDP, in one process that averages two half-batch gradients. What DDP must get
    right — the averaged gradient — is checked exactly by :func:`_bigr_gradients`.
    """
    from test_regnet import phantom_slices
    from xreg_edu.vae.model import BIGRConfig
    from xreg_edu.vae.train import train

    model, hist = train(BIGRConfig(levels=(8,)), distill_steps=0, steps=3, batch=BATCH, seed=0,
                        slices=phantom_slices(6), misalignment={"kind": "svf", "magnitude_mm": 3.0}, ramp=0.0,
                        progress=False, device="cpu")
    return [h["loss"] for h in hist]


def _bigr_gradients(ctx):
    """Gradients of BIGR-lite's stage-B loss for one fixed global batch of 4 groups, after DDP's averaging."""
    from test_regnet import phantom_slices
    from xreg_edu.vae.data import GroupSampler
    from xreg_edu.vae.model import BIGRConfig, BIGRLite

    torch.manual_seed(0)
    model = BIGRLite(BIGRConfig(levels=(8,)))
    with torch.no_grad():
        for p in model.heads[0].out.parameters():
            p.normal_(0, 0.05)                                   # away from the zero init: every layer has a gradient
    net = dist.wrap_model(model, ctx)
    sampler = GroupSampler(phantom_slices(6), (3,), seed=1, misalignment={"kind": "svf", "magnitude_mm": 3.0})
    groups = dist.shard([sampler()[0] for _ in range(BATCH)], ctx)
    loss = sum(net(g.images, g.spacing).terms.loss() for g in groups) / len(groups)
    loss.backward()
    return [p.grad.flatten().tolist() for p in model.parameters()]


def test_single_process_context_is_identity():
    ctx = dist.init()
    assert not ctx.is_distributed and ctx.world_size == 1 and ctx.is_main
    net = torch.nn.Linear(2, 2)
    assert dist.wrap_model(net, ctx) is net and dist.unwrap(net) is net
    assert dist.shard([1, 2, 3], ctx) == [1, 2, 3]
    assert dist.reduce_mean(torch.tensor(2.5), ctx) == 2.5


def test_shard_is_contiguous_and_rejects_uneven_batches():
    ranks = [dist.DistContext(rank=r, world_size=2, backend="gloo") for r in range(2)]
    assert [dist.shard(list(range(6)), c) for c in ranks] == [[0, 1, 2], [3, 4, 5]]
    assert torch.equal(dist.shard(torch.arange(4), ranks[1]), torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="global batch size 5 is not a multiple of the world size 2"):
        dist.shard(list(range(5)), ranks[0])


def test_two_processes_match_one(tmp_path, one_thread_full_budget):
    out = tmp_path / "ranks.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]

    ref_hist, ref_params = _train(dist.DistContext())
    ref = [h["loss"] for h in ref_hist]
    assert len(set(round(v, 6) for v in ref)) > 1                     # the loss moves: a real trajectory
    for r in ranks:
        assert r["world_size"] == 2 and r["backend"] == "gloo"
        assert r["loss"] == pytest.approx(ref, rel=1e-5, abs=1e-6)
        assert r["params"] == pytest.approx(ref_params, rel=1e-5, abs=1e-6)
    # a different global batch gives a different trajectory (the comparison above can fail)
    from test_regnet import MIS, _tiny, phantom_slices
    from xreg_edu.vae import regnet as R

    _, half = R.train(_tiny("xmetric"), phantom_slices(6),
                      R.TrainOptions(steps=STEPS, batch=BATCH // 2, lr=3e-3, seed=0, misalignment=MIS))
    assert [h["loss"] for h in half] != pytest.approx(ref, rel=1e-3)
    # python -m xreg_edu.vae.train's trainer: same check
    bigr_loss = _train_bigr()
    assert len(set(round(v, 6) for v in bigr_loss)) > 1
    grads = _bigr_gradients(dist.DistContext())
    assert sum(abs(x) for g in grads for x in g) > 0
    for r in ranks:
        assert r["bigr_loss"] == pytest.approx(bigr_loss, rel=1e-5, abs=1e-6)
        for mine, ref in zip(r["bigr_grads"], grads):              # DDP's averaged gradient = the full batch's
            assert mine == pytest.approx(ref, rel=1e-4, abs=1e-8)


def _worker(out: str) -> None:
    torch.set_num_threads(1)
    with dist.session("cpu") as ctx:
        hist, params = _train(ctx)
        bigr_loss = _train_bigr()
        bigr_grads = _bigr_gradients(ctx)
        record = {"rank": ctx.rank, "world_size": ctx.world_size, "backend": ctx.backend,
                  "loss": [h["loss"] for h in hist], "params": params,
                  "bigr_loss": bigr_loss, "bigr_grads": bigr_grads}
    Path(f"{out}.{ctx.rank}").write_text(json.dumps(record))


if __name__ == "__main__":
    _worker(sys.argv[1])
