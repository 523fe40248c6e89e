"""Training throughput at ML-20M scale, and time to quality.

The data is the synthetic set shaped like ML-20M: 138,493 users, 26,744 items and 20M
positives, with 4 negatives each.  The model uses NVIDIA's reference configuration for this
workload: NeuMF with factors 64, MLP layers [256, 256, 128, 64] and batch 2^20.  The
CPU runs it at a reduced scale: users, positives and batch are multiplied by
``NEUMF_FAST_SCALE`` (default 0.01 on the CPU, 1.0 with CUDA), and the item catalogue keeps its
full size.

- ``test_epoch_throughput``: one full epoch with negative sampling, reported as samples/s, in
  fp32 and under bf16 autocast (fp32 parameters and Adam).  Providers: eager PyTorch with no
  fused op (``nn.Embedding`` lookups, slicing and ``cat``; same parameters), and the model on
  the fused op with the fastest backend for the device.
- ``test_time_to_quality``: wall time (training only) until the validation HR@10 reaches the
  popularity baseline's HR@10 + 0.05 on the same split, so popularity ranking cannot reach
  it.

    NEUMF_FAST_SCALE=0.01 python -m pytest benchmarks/test_bench_scale.py --benchmark-json=...
"""

from __future__ import annotations

import functools
import math
import os
import time

import pytest
import torch

from neumf_fast.data import NegativeSampler, leave_one_out, synthetic
from neumf_fast.evaluate import evaluate_candidates, popularity_scores
from neumf_fast.models import NeuMF, _run_tower
from neumf_fast.train import epoch_samples, train_epoch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SCALE = float(os.environ.get("NEUMF_FAST_SCALE", "1.0" if DEVICE == "cuda" else "0.01"))
USERS, ITEMS, POSITIVES = 138_493, 26_744, 20_000_263
FACTORS, LAYERS, BATCH = 64, (256, 256, 128, 64), 2**20
batch_size = max(256, round(BATCH * SCALE))
learning_rate = 0.001 * math.sqrt(batch_size / 256)  # the trainer's default rule


class PlainNeuMF(NeuMF):
    """The same NeuMF (same parameters) with no fused op: the usual eager PyTorch forward."""

    def forward(self, user, item):
        u, i, f = self.user_embedding(user), self.item_embedding(item), self.factors
        mlp_in = torch.cat([u[:, f:], i[:, f:]], dim=-1)
        return self.predict(torch.cat([u[:, :f] * i[:, :f], _run_tower(self.tower, mlp_in)], dim=-1)).squeeze(-1)


@functools.lru_cache(maxsize=1)
def _split():
    # on a GPU the data is drawn there: the numpy path takes minutes at full scale
    data = synthetic(0, num_users=round(USERS * SCALE), num_items=ITEMS, num_interactions=round(POSITIVES * SCALE),
                     device=DEVICE if DEVICE == "cuda" else None)
    return leave_one_out(data, num_negatives=99, seed=0, device=DEVICE)


def _setup(provider):
    split = _split()
    torch.manual_seed(0)
    cls = PlainNeuMF if provider == "no_fused_op" else NeuMF
    model = cls(split.num_users, split.num_items, FACTORS, LAYERS).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)
    sampler = NegativeSampler(split.train_user, split.train_item, split.num_items, split.num_users, device=DEVICE)
    users = torch.from_numpy(split.train_user).to(DEVICE)
    items = torch.from_numpy(split.train_item).to(DEVICE)
    return split, model, optimizer, sampler, users, items


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("provider", ["no_fused_op", "fused_op"])
def test_epoch_throughput(benchmark, provider, precision):
    split, model, optimizer, sampler, users, items = _setup(provider)
    train_epoch(model, optimizer, epoch_samples(users[:50_000], items[:50_000], sampler, 4, 0, 99), batch_size,
                precision=precision)
    epoch = iter(range(1000))

    def one_epoch():
        loss = train_epoch(model, optimizer, epoch_samples(users, items, sampler, 4, 0, next(epoch)), batch_size,
                           precision=precision)
        _sync()
        return loss

    loss = benchmark.pedantic(one_epoch, rounds=2, iterations=1)
    assert 0 < loss < 1
    samples = 5 * len(users)
    benchmark.extra_info.update(
        direction="train epoch", shape=f"ML-20M x {SCALE:g}, batch {batch_size}",
        dtype="float32" if precision == "fp32" else "bf16 autocast", provider=provider, samples=samples,
        samples_per_s=samples / benchmark.stats.stats.median, device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu")


def test_time_to_quality(benchmark):
    split, model, optimizer, sampler, users, items = _setup("fused_op")
    pop = evaluate_candidates(None, split, "valid", popularity=popularity_scores(split))["hr@10"]
    target = pop + 0.05
    trace = []

    def train_until_target():
        elapsed = 0.0
        for epoch in range(10):
            start = time.perf_counter()
            train_epoch(model, optimizer, epoch_samples(users, items, sampler, 4, 0, epoch), batch_size)
            _sync()
            elapsed += time.perf_counter() - start
            hr = evaluate_candidates(model, split, "valid", device=DEVICE)["hr@10"]
            trace.append((epoch + 1, round(elapsed, 2), round(hr, 4)))
            if hr >= target:
                break
        return elapsed

    elapsed = benchmark.pedantic(train_until_target, rounds=1, iterations=1)
    benchmark.extra_info.update(direction="time to quality", shape=f"ML-20M x {SCALE:g}, batch {batch_size}",
                                dtype="float32", provider="fused_op", popularity_hr10=round(pop, 4),
                                target_hr10=round(target, 4), trace=trace, train_seconds=elapsed)
    assert trace[-1][2] >= target, f"did not reach HR@10 {target:.4f} in 10 epochs: {trace}"
