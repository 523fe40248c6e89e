"""Benchmark of NeuMF training and evaluation on ML-1M-sized data (the synthetic set: 6,040
users, 3,706 items, about 1M positives; 4 negatives each, so about 5M samples an epoch).

- ``test_epoch``: one training epoch at the paper's defaults (factors 8, layers [64,32,16,8],
  Adam), negative sampling and shuffling included, reported as samples/s with the validation
  HR@10 after the epoch.  The baseline is the paper's NeuMF as a user writes it in plain
  PyTorch (``PlainNeuMF`` below: separate GMF/MLP ``nn.Embedding``s, an ``nn.Sequential``
  tower, ``torch.optim.Adam`` with its defaults), in eager mode (``eager``).  All providers
  train on the same epoch samples through the same loop (``train_epoch``), with the torch
  threads that ``neumf-fast train`` sets for the batch size (``configure_threads``: 1 thread up to
  batch 1024, else every core).
  - CPU, batch 256 and 8192, fp32: ``eager``; ``compiled`` (``torch.compile`` of it);
    ``cpu_kernel`` (``neumf_fast.NeuMF`` on the C++ kernel with fused Adam, as ``neumf-fast
    train`` runs it).
  - CUDA, batch 4096, fp32 and bf16 autocast: ``eager``; ``eager_graphs`` (the same model and
    loop with the whole step captured in a CUDA graph, fused capturable Adam: what graphs alone
    give); ``fused`` (``neumf_fast.NeuMF``, backend ``auto``, fused Adam); ``fused_graphs``
    (that, as ``neumf-fast train --cuda-graphs`` runs it).
- ``test_evaluate`` (CPU): leave-one-out evaluation of all 6,040 users (100 candidates each),
  and a full ranking over all items.
- ``test_negative_sampling`` (CPU): one epoch's negatives and shuffle alone.

    python -m pytest benchmarks/test_bench_train.py --benchmark-json=benchmarks/results/train.json
    python benchmarks/report.py benchmarks/results/train.json

Targets: on the 2-core CPU, an epoch <= 20 s at batch 256 and <= 5 s at batch 8192, evaluation
of 6,040 users <= 2 s, and against the plain loop >= 3x at batch 256 and >= 2x at batch 8192;
on an H200 at batch 4096, >= 8M samples/s (issue "Training throughput is the step").
"""

from __future__ import annotations

import functools

import pytest
import torch

from neumf_fast.config import TrainConfig
from neumf_fast.data import NegativeSampler, leave_one_out, synthetic
from neumf_fast.evaluate import evaluate_candidates, evaluate_full
from neumf_fast.models import NeuMF
from neumf_fast.ops import _library
from neumf_fast.parallel import configure_threads
from neumf_fast.train import epoch_samples, train_epoch
from neumf_fast.train_step import TrainStep


@functools.lru_cache(maxsize=1)
def _split():
    return leave_one_out(synthetic(0), num_negatives=99, seed=0)


def _tensors():
    split = _split()
    sampler = NegativeSampler(split.train_user, split.train_item, split.num_items, split.num_users, device=DEVICE)
    return split, sampler, torch.from_numpy(split.train_user).to(DEVICE), torch.from_numpy(split.train_item).to(DEVICE)


class PlainNeuMF(torch.nn.Module):
    """The paper's NeuMF as a user writes it in plain PyTorch: the baseline.  Initialised as
    the paper's (authors') code does, and as ``neumf_fast.NeuMF`` is: embeddings N(0, 0.01),
    Glorot-uniform tower, LeCun-uniform prediction layer, zero biases.  With PyTorch's default
    ``nn.Linear`` init instead, the two models' validation HR@10 after two batch-8192 epochs
    differed by 0.09 (0.4382 against 0.5247), which is initialisation, not the step."""

    def __init__(self, num_users, num_items, factors=8, layers=(64, 32, 16, 8)):
        super().__init__()
        self.mf_user, self.mf_item = torch.nn.Embedding(num_users, factors), torch.nn.Embedding(num_items, factors)
        self.mlp_user = torch.nn.Embedding(num_users, layers[0] // 2)
        self.mlp_item = torch.nn.Embedding(num_items, layers[0] // 2)
        tower = []
        for width_in, width_out in zip(layers[:-1], layers[1:]):
            tower += [torch.nn.Linear(width_in, width_out), torch.nn.ReLU()]
        self.tower = torch.nn.Sequential(*tower)
        self.predict = torch.nn.Linear(factors + layers[-1], 1)
        for table in (self.mf_user, self.mf_item, self.mlp_user, self.mlp_item):
            torch.nn.init.normal_(table.weight, std=0.01)
        for layer in self.tower[::2]:
            torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
        bound = (3.0 / self.predict.in_features) ** 0.5
        torch.nn.init.uniform_(self.predict.weight, -bound, bound)
        torch.nn.init.zeros_(self.predict.bias)

    def forward(self, user, item):
        gmf = self.mf_user(user) * self.mf_item(item)
        mlp = self.tower(torch.cat([self.mlp_user(user), self.mlp_item(item)], dim=1))
        return self.predict(torch.cat([gmf, mlp], dim=1)).squeeze(1)

    def score(self, user, items):
        """Logits of each user's ``[U, C]`` candidates, pair by pair (for the evaluation)."""
        return self(user[:, None].expand_as(items).reshape(-1), items.reshape(-1)).view(items.shape)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cuda":
    PROVIDERS, BATCHES, PRECISIONS = ["eager", "eager_graphs", "fused", "fused_graphs"], [4096], ["fp32", "bf16"]
else:
    PROVIDERS, BATCHES, PRECISIONS = ["eager", "compiled", "cpu_kernel"], [256, 8192], ["fp32"]


def _model(provider: str):
    """(model, optimizer, whether the step is captured) for a provider, on ``DEVICE``."""
    split = _split()
    if provider == "cpu_kernel" and _library.EXTENSION_ERROR is not None:
        pytest.skip(_library.EXTENSION_ERROR)
    torch.manual_seed(0)
    lr = TrainConfig().learning_rate()
    graphs = provider.endswith("_graphs")
    if provider.startswith(("cpu_kernel", "fused")):
        model = NeuMF(split.num_users, split.num_items, 8, (64, 32, 16, 8),
                      backend="cpu" if provider == "cpu_kernel" else "auto").to(DEVICE)
        return model, torch.optim.Adam(model.parameters(), lr=lr, fused=True, capturable=graphs), graphs
    model = PlainNeuMF(split.num_users, split.num_items).to(DEVICE)
    if graphs:  # capture needs a capturable Adam; fused, as the trainer's
        return model, torch.optim.Adam(model.parameters(), lr=lr, fused=True, capturable=True), True
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return (torch.compile(model) if provider == "compiled" else model), optimizer, False


cpu_only = pytest.mark.skipif(DEVICE == "cuda", reason="a CPU benchmark (test_epoch is the GPU one)")


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("batch_size", BATCHES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_epoch(benchmark, provider, batch_size, precision):
    split, sampler, train_user, train_item = _tensors()
    threads = configure_threads(None, batch_size)  # the trainer's rule, for every provider alike
    model, optimizer, graphs = _model(provider)
    step = TrainStep(model, optimizer, batch_size, precision=precision, capture=graphs)
    # warm-up: compilation, graph capture and first-touch allocations happen outside the timed epoch
    warm = epoch_samples(train_user[:20000], train_item[:20000], sampler, 4, 0, 99)
    train_epoch(model, optimizer, warm, batch_size, step=step)
    epoch = iter(range(1000))

    def one_epoch():
        samples = epoch_samples(train_user, train_item, sampler, 4, 0, next(epoch))
        loss = train_epoch(model, optimizer, samples, batch_size, step=step)
        _sync()
        return loss

    loss = benchmark.pedantic(one_epoch, rounds=1 if batch_size == 256 or DEVICE == "cuda" else 2, iterations=1)
    assert 0 < loss < 1
    assert (step.graph is not None) == graphs
    samples = 5 * len(train_user)
    hr = evaluate_candidates(model, split, "valid", device=DEVICE)["hr@10"]
    benchmark.extra_info.update(direction="train epoch", shape=f"ML-1M-sized, batch {batch_size}",
                                dtype="float32" if precision == "fp32" else "bf16 autocast", provider=provider,
                                samples=samples, samples_per_s=samples / benchmark.stats.stats.median,
                                valid_hr10=round(hr, 4), threads=threads, device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu")


PAIRED_BLOCKS = 40


@cpu_only
@pytest.mark.parametrize("batch_size", BATCHES)
def test_epoch_paired(benchmark, batch_size):
    """The plain loop (``eager``) and neumf_fast (``cpu_kernel``) over one epoch, interleaved:
    the epoch is cut into ``PAIRED_BLOCKS`` blocks of whole batches, and each provider trains on
    a block in turn (who goes first alternates).  On a VM whose speed drifts by 30-60% over
    tens of seconds, providers timed one after the other can land in different phases;
    interleaved, each phase slows both alike, so their ratio holds.

    Each provider's epoch is its blocks' time plus one epoch's negative sampling and shuffle
    (the same code for both, timed once), as in ``test_epoch``.  Both train on the same
    samples in the same order and report the validation HR@10 after the epoch."""
    import math
    from time import perf_counter

    split, sampler, train_user, train_item = _tensors()
    threads = configure_threads(None, batch_size)
    runs = {}
    for provider in ("eager", "cpu_kernel"):
        model, optimizer, _ = _model(provider)
        step = TrainStep(model, optimizer, batch_size)
        warm = epoch_samples(train_user[:20000], train_item[:20000], sampler, 4, 0, 99)
        train_epoch(model, optimizer, warm, batch_size, step=step)
        runs[provider] = (model, optimizer, step)
    start = perf_counter()
    samples = epoch_samples(train_user, train_item, sampler, 4, 0, 0)
    sampling = perf_counter() - start
    steps = math.ceil(len(samples[0]) / batch_size)
    bounds = [round(k * steps / PAIRED_BLOCKS) * batch_size for k in range(PAIRED_BLOCKS + 1)]
    seconds = dict.fromkeys(runs, 0.0)

    def paired_epoch():
        for k in range(PAIRED_BLOCKS):
            block = tuple(t[bounds[k]:bounds[k + 1]] for t in samples)
            for provider in (list(runs) if k % 2 == 0 else list(runs)[::-1]):
                model, optimizer, step = runs[provider]
                begin = perf_counter()
                train_epoch(model, optimizer, block, batch_size, step=step)
                seconds[provider] += perf_counter() - begin

    benchmark.pedantic(paired_epoch, rounds=1, iterations=1)
    epoch = {p: sampling + seconds[p] for p in runs}
    hr = {p: evaluate_candidates(model, split, "valid")["hr@10"] for p, (model, _, _) in runs.items()}
    benchmark.extra_info.update(direction="train epoch, paired", shape=f"ML-1M-sized, batch {batch_size}",
                                dtype="float32", provider="eager+cpu_kernel", threads=threads, blocks=PAIRED_BLOCKS,
                                paired={p: {"seconds": round(epoch[p], 3), "valid_hr10": round(hr[p], 4)} for p in runs},
                                sampling_s=round(sampling, 3), samples=len(samples[0]))


@cpu_only
@pytest.mark.parametrize("protocol", ["100 candidates", "full ranking"])
def test_evaluate(benchmark, protocol):
    split = _split()
    model, _, _ = _model("cpu_kernel")
    fn = evaluate_candidates if protocol == "100 candidates" else evaluate_full
    result = benchmark.pedantic(lambda: fn(model, split, "test"), rounds=3, iterations=1)
    assert result["users"] == 6040
    benchmark.extra_info.update(direction="evaluate", shape=f"6040 users, {protocol}", dtype="float32",
                                provider="cpu_kernel")


@cpu_only
def test_negative_sampling(benchmark):
    split, sampler, train_user, train_item = _tensors()
    epoch = iter(range(1000))
    user, _, _ = benchmark.pedantic(lambda: epoch_samples(train_user, train_item, sampler, 4, 0, next(epoch)),
                                    rounds=3, iterations=1)
    assert len(user) == 5 * len(train_user)
    benchmark.extra_info.update(direction="epoch negatives + shuffle", shape="ML-1M-sized, 4 per positive",
                                dtype="-", provider="cpu_kernel")


@cpu_only
@pytest.mark.parametrize("loop", ["dataloader", "device_resident"])
def test_epoch_loop_style(benchmark, loop):
    """The classic NCF port's loop against ours, at batch 8192, on the C++ kernel.

    ``dataloader``: each epoch's samples in a ``TensorDataset`` behind a shuffling ``DataLoader``
    (per-sample indexing and collation, then batches moved to the device).  ``device_resident``:
    ``epoch_samples`` shuffles by one permutation on the device and ``train_epoch`` slices
    batches, with the loss kept on the device until the end.  Both start from the same model
    and report the validation HR@10 after their epoch."""
    from torch.utils.data import DataLoader, TensorDataset

    split, sampler, train_user, train_item = _tensors()
    model, optimizer, _ = _model("cpu_kernel")
    samples = epoch_samples(train_user, train_item, sampler, 4, 0, 0)

    def dataloader_epoch():
        g = torch.Generator().manual_seed(0)
        loader = DataLoader(TensorDataset(*samples), batch_size=8192, shuffle=True, generator=g)
        model.train()
        for u, i, y in loader:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(u, i), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()  # the usual per-batch logging sync

    def resident_epoch():
        train_epoch(model, optimizer, epoch_samples(train_user, train_item, sampler, 4, 0, 0), 8192)

    benchmark.pedantic(dataloader_epoch if loop == "dataloader" else resident_epoch, rounds=1, iterations=1)
    hr = evaluate_candidates(model, split, "valid")["hr@10"]
    benchmark.extra_info.update(direction=f"train epoch ({loop} loop)", shape="ML-1M-sized, batch 8192",
                                dtype="float32", provider="cpu_kernel", valid_hr10_after_epoch=round(hr, 4))
