"""CPU benchmark of the first half of a NeuMF forward pass: one function per provider, the same
inputs and weights for all.

Providers:
- ``eager``, the baseline, what a user writes instead: for dense input the design's plain module,
  four ``nn.Linear`` on ``user.sum(1)``; for ids ``nn.EmbeddingBag`` (sum, padding id 0) and
  ``nn.Embedding`` into the same four ``nn.Linear``;
- ``compiled``: ``torch.compile`` of that module;
- ``cpu_kernel``: ``neumf_fast.FusedUserItem(backend="cpu")`` with the same weights, so the
  module's own cost is in the figure.

The ``*_paired`` tests time the three interleaved in one run (the ratios to read); ``test_model_paired``
times the seed's whole model (``baselines.RecoClsNMF``: the first half, the tower and the predict
layer) at the serving shape against the same model with its four nn.Linear a ``FusedUserItem``.

Run (not part of the test suite):

    bash dev.sh bench op      (pytest benchmarks/test_bench_cpu.py --benchmark-json=...; report.py)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from baselines import PlainFirstHalf, RecoClsNMF, fused_twin, reco_twin
from neumf_fast.ops import _library

SHAPES = {
    # name: (B, L, D, H_mf = H_mlp, ids)
    "demo_B16_L10_D128": (16, 10, 128, 128, False),
    "B4096_L10_D128": (4096, 10, 128, 128, False),
    "ids_B4096_L50_D64_N100k": (4096, 50, 64, 64, True),
}
NUM_ROWS = 100_000
PROVIDERS = ["eager", "compiled", "cpu_kernel"]


def make_case(batch, seq_len, dim, hidden, ids, seed=0):
    """(baseline module, inputs): user and item tensors, dense ones requiring grad."""
    torch.manual_seed(seed)
    module = PlainFirstHalf(dim, hidden, NUM_ROWS if ids else None)
    g = torch.Generator().manual_seed(seed)
    if ids:
        user = torch.randint(1, NUM_ROWS, (batch, seq_len), generator=g)
        user[:, seq_len // 2:][torch.rand(batch, seq_len - seq_len // 2, generator=g) < 0.3] = 0  # padding
        item = torch.randint(0, NUM_ROWS, (batch,), generator=g)
    else:
        user = (torch.randn(batch, seq_len, dim, generator=g) * 0.1).requires_grad_()
        item = (torch.randn(batch, dim, generator=g) * 0.1).requires_grad_()
    return module, user, item


def provider_module(provider, baseline: PlainFirstHalf) -> nn.Module:
    if provider == "eager":
        return baseline
    if provider == "compiled":
        return torch.compile(baseline)
    return fused_twin(baseline, backend="cpu")


def test_providers_agree():
    """The benchmarks compare like with like: the baseline and its FusedUserItem twin compute
    the same outputs, dense (with and without a mask) and with ids."""
    if _library.EXTENSION_ERROR:
        pytest.skip(_library.EXTENSION_ERROR)
    for ids in (False, True):
        baseline, user, item = make_case(5, 4, 8, 6, ids)
        mask = None if ids else torch.rand(5, 4) > 0.3
        for a, b in zip(baseline(user, item, mask), provider_module("cpu_kernel", baseline)(user, item, mask)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
def test_cpu(benchmark, direction, shape, provider):
    batch, seq_len, dim, hidden, ids = SHAPES[shape]
    if provider == "cpu_kernel" and _library.EXTENSION_ERROR:
        pytest.skip(_library.EXTENSION_ERROR)
    torch._dynamo.reset()
    baseline, user, item = make_case(batch, seq_len, dim, hidden, ids)
    step = _step(direction, provider_module(provider, baseline), user, item)
    for _ in range(3):  # compile and warm caches outside the timed region
        step()
    benchmark.extra_info.update(direction=direction, shape=shape, provider=provider, dtype="float32",
                                B=batch, L=seq_len, D=dim, H=hidden, ids=ids)
    benchmark.pedantic(step, rounds=_rounds(batch), iterations=_iterations(batch), warmup_rounds=1)


def _rounds(batch: int) -> int:
    return 30 if batch <= 16 else 10


def _iterations(batch: int) -> int:
    return 20 if batch <= 16 else 1


def _step(direction: str, module, user, item):
    """One timed call: the forward under no_grad, or forward and backward (gradients dropped)."""
    leaves = [t for t in (user, item, *module.parameters()) if t.requires_grad]

    def step():
        if direction == "fwd":
            with torch.no_grad():
                return module(user, item)[0]
        gmf, mlp_in = module(user, item)
        torch.autograd.backward((gmf, mlp_in), (torch.ones_like(gmf), torch.ones_like(mlp_in)))
        for t in leaves:
            t.grad = None
        return gmf

    return step


PAIRED_ROUNDS = 3  # times test_cpu's rounds
PAIRED_SIDES = ("eager", "compiled", "cpu_kernel")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
def test_cpu_paired(benchmark, direction, shape):
    """The baseline (``eager``), ``torch.compile`` of it and ``cpu_kernel`` timed in interleaved
    rounds of one run (who goes first rotates), so that the VM's drifts, up to 60% over seconds,
    slow all alike; the ratio of their median rounds is the one to read against a target."""
    batch, seq_len, dim, hidden, ids = SHAPES[shape]
    if _library.EXTENSION_ERROR:
        pytest.skip(_library.EXTENSION_ERROR)
    torch._dynamo.reset()
    baseline, user, item = make_case(batch, seq_len, dim, hidden, ids)
    steps = {p: _step(direction, provider_module(p, baseline), user, item) for p in PAIRED_SIDES}
    _run_paired(benchmark, steps, _iterations(batch), PAIRED_ROUNDS * _rounds(batch))
    benchmark.extra_info.update(direction=direction, shape=shape, dtype="float32", B=batch, L=seq_len, D=dim,
                                H=hidden, ids=ids)


MODEL_SHAPE = "model_B16_L10_D128"  # the seed's whole model at the serving shape, forward


def test_model_paired(benchmark):
    """The seed's whole model (``RecoClsNMF``) against the same weights with its first half a
    ``FusedUserItem`` (``cpu_kernel``) and ``torch.compile`` of the plain model, forward, interleaved
    as above.  The tower's GEMMs are the same on every side and bound the ratio."""
    if _library.EXTENSION_ERROR:
        pytest.skip(_library.EXTENSION_ERROR)
    torch._dynamo.reset()
    batch, seq_len, dim = 16, 10, 128
    torch.manual_seed(0)
    plain = RecoClsNMF(dim)
    _, user, item = make_case(batch, seq_len, dim, dim, False)
    models = {"eager": plain, "compiled": torch.compile(plain), "cpu_kernel": reco_twin(plain, backend="cpu")}
    torch.testing.assert_close(models["cpu_kernel"](user, item), plain(user, item), atol=1e-5, rtol=1e-5)

    def forward(model):
        def step():
            with torch.no_grad():
                return model(user, item)
        return step

    _run_paired(benchmark, {p: forward(m) for p, m in models.items()}, _iterations(batch),
                PAIRED_ROUNDS * _rounds(batch))
    benchmark.extra_info.update(direction="fwd", shape=MODEL_SHAPE, dtype="float32", B=batch, L=seq_len, D=dim,
                                tower_mult=list(plain.tower_mult))


def _run_paired(benchmark, steps: dict, calls: int, n_rounds: int) -> None:
    """Times ``steps`` (provider -> one call) in ``n_rounds`` rounds of ``calls`` calls each, the
    providers one after another in every round, the first one rotating; records the median round
    of each in ``extra_info['paired']``."""
    from time import perf_counter

    for step in steps.values():
        for _ in range(3):  # compile and warm caches outside the timed region
            step()
    order = list(steps)
    rounds = {p: [] for p in order}

    def paired():
        for r in range(n_rounds):
            for p in order[r % len(order):] + order[:r % len(order)]:
                begin = perf_counter()
                for _ in range(calls):
                    steps[p]()
                rounds[p].append((perf_counter() - begin) / calls)

    benchmark.pedantic(paired, rounds=1, iterations=1)
    median = {p: sorted(t)[len(t) // 2] for p, t in rounds.items()}
    benchmark.extra_info.update(provider="+".join(order), rounds=n_rounds, calls_per_round=calls,
                                paired={p: {"seconds": median[p]} for p in order})
