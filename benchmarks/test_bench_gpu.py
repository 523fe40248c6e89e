"""GPU benchmark of the first stage of NeuMF (run by benchmarks/gpu_check.sh; skipped without CUDA).

Providers, the same inputs and weights for all (``benchmarks/baselines.py``):
- ``eager``, the baseline, what a user writes instead: the design's four ``nn.Linear`` on the
  masked ``user.sum(1)``; for ids, ``nn.EmbeddingBag`` (sum, padding id 0) and ``nn.Embedding``
  into the same four ``nn.Linear``; for NeuMF's own call, two ``nn.Embedding`` sliced into the
  GMF product and the MLP input (``PlainNeuMFInput``);
- ``compiled``: ``torch.compile`` of that module, in the mode ``NEUMF_FAST_BENCH_COMPILE_MODE``
  names (default: torch.compile's default mode; ``max-autotune-no-cudagraphs`` searches GEMM
  configs for minutes, more than the 5-minute GPU check holds); the rows say which;
- each GPU kernel backend that can run (``triton``, ``cuda``) on the same weights.
The first calls of a fresh process (compile included) are ``benchmarks/first_call.py``'s.
Shapes (``SHAPES``): the design's B=4096 L=10 D=H=128, serving B=16, B=65536 L=50 D=H=64 dense
and with ids into a 1,000,000 x 64 table, and ML-20M NeuMF training (B=2^20, one user id and
one item id, tables 138,493 and 26,744 rows of 64 + 128, no projection); float32 and bfloat16;
forward (under ``no_grad``), and forward+backward (``autograd.grad`` of every input and
parameter).  Cases run shape by shape (``RUN_ORDER``), every provider of a case after another,
so a run cut short loses whole shapes, not one provider's column.

Timing is pytest-benchmark's own (``--benchmark-min-rounds``, ``--benchmark-max-time``,
``--benchmark-warmup``), after three untimed calls (compile, autotune, first touch); every timed
call ends with ``torch.cuda.synchronize()``.  Each row records the bytes the op must move at
least (inputs read once, outputs written once; the backward's reads and writes added for
forward+backward), so the report divides them by the time and compares the rate with the
device-to-device copy bandwidth measured in the same run (``test_copy_bandwidth``).

With ``NEUMF_FAST_BENCH_ROWS=FILE``, each row is also appended to FILE (one JSON object a line,
pytest-benchmark's shape) the moment its benchmark ends: a process stopped at its deadline keeps
every row it finished, whether or not pytest got to write its JSON.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest
import torch

from baselines import PlainFirstHalf, PlainNeuMFInput, fused_twin, neumf_input_twin
from neumf_fast.ops.dispatch import unavailable_reasons

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: no CUDA device")
DEVICE = "cuda"  # a smoke test of this file's set-up may point it at "cpu"

SHAPES = {
    # name: (B, L, D = H_mf = H_mlp, ids, table rows); report.GPU_SHAPES labels them, in this order
    "design_B4096_L10_D128": (4096, 10, 128, False, 0),
    "serving_B16_L10_D128": (16, 10, 128, False, 0),
    "B65536_L50_D64": (65536, 50, 64, False, 0),
    "ids_B65536_L50_D64_N1M": (65536, 50, 64, True, 1_000_000),
    # D = factors 64 + MLP half 128, user table rows; the item table has NEUMF_ITEMS rows
    "neumf_ml20m_B1048576": (2**20, 1, 192, True, 138_493),
}
# The order the cases run in: the targets first (B=65536 against eager and torch.compile),
# so that a step stopped at its deadline has lost the shapes that matter least.
RUN_ORDER = ["B65536_L50_D64", "ids_B65536_L50_D64_N1M", "design_B4096_L10_D128", "serving_B16_L10_D128",
             "neumf_ml20m_B1048576"]
NEUMF_SHAPE, NEUMF_FACTORS, NEUMF_ITEMS = "neumf_ml20m_B1048576", 64, 26_744
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
KERNEL_PROVIDERS = ["triton", "cuda"]
COMPILE_MODE = os.environ.get("NEUMF_FAST_BENCH_COMPILE_MODE", "default")


def _providers(*names):
    """Each provider carries a mark, ``provider_<name>``, so that gpu_check.sh can time each in its
    own process (``-m provider_triton``): one that runs out of time loses no other's rows."""
    return [pytest.param(name, marks=getattr(pytest.mark, f"provider_{name}")) for name in names]


def _inputs(shape, dtype, seed=0):
    """(baseline module, user, item, user_mask) on the GPU in ``dtype``."""
    batch, seq_len, dim, ids, rows = SHAPES[shape]
    torch.manual_seed(seed)
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    if shape == NEUMF_SHAPE:
        plain = PlainNeuMFInput(rows, NEUMF_ITEMS, NEUMF_FACTORS, dim - NEUMF_FACTORS).to(DEVICE, dtype)
        user = torch.randint(0, rows, (batch, 1), generator=g, device=DEVICE)
        return plain, user, torch.randint(0, NEUMF_ITEMS, (batch,), generator=g, device=DEVICE), None
    plain = PlainFirstHalf(dim, dim, rows if ids else None).to(DEVICE, dtype)
    if ids:
        user = torch.randint(1, rows, (batch, seq_len), generator=g, device=DEVICE)
        user[:, seq_len // 2:] = torch.where(torch.rand(batch, seq_len - seq_len // 2, generator=g, device=DEVICE) < 0.3,
                                             0, user[:, seq_len // 2:])
        item = torch.randint(0, rows, (batch,), generator=g, device=DEVICE)
        return plain, user, item, None
    p = lambda *s: (torch.randn(*s, generator=g, device=DEVICE) * 0.1).to(dtype).requires_grad_()
    mask = torch.rand(batch, seq_len, generator=g, device=DEVICE) > 0.2
    return plain, p(batch, seq_len, dim), p(batch, dim), mask


def _min_bytes(shape, dtype, backward: bool) -> int:
    """Compulsory traffic: the sequence (or its ids and gathered rows), the item, the weights,
    and the outputs; forward+backward adds reading the output gradients and the saved pooled
    rows, re-reading the inputs the gradients need, and writing every gradient once."""
    batch, seq_len, dim, ids, _rows = SHAPES[shape]
    e = torch.finfo(dtype).bits // 8
    if shape == NEUMF_SHAPE:  # no projection: gather two rows, write the GMF product and the MLP input
        f = NEUMF_FACTORS
        fwd = batch * 2 * (8 + dim * e) + batch * (f + 2 * (dim - f)) * e
        if not backward:
            return fwd
        # the output gradients, the ids and the MF halves again, and one gradient row per side
        return fwd + batch * (f + 2 * (dim - f)) * e + batch * 2 * (8 + f * e) + batch * 2 * (8 + dim * 4)
    seq = batch * seq_len * (8 + dim * e) if ids else batch * seq_len * (dim * e + 1)
    item = batch * (8 + dim * e) if ids else batch * dim * e
    weights = 2 * (2 * dim * dim + 2 * dim) * e
    outputs = batch * 3 * dim * e
    fwd = seq + item + weights + outputs
    if not backward:
        return fwd
    saved = batch * 2 * dim * 4 + batch * 2 * dim * 4  # pooled (fp32) and the MF halves (fp32)
    grads_in = outputs
    grad_seq = batch * seq_len * dim * e if not ids else batch * seq_len * (8 + dim * 4)  # scatter rows
    grad_item = batch * dim * e if not ids else batch * (8 + dim * 4)
    return fwd + saved + grads_in + weights + grad_seq + grad_item + weights


def _provider_module(provider, plain, dtype=torch.float32):
    if provider == "eager":
        return plain
    if provider == "compiled":
        # Each case compiles anew (from Inductor's on-disk cache when gpu_check.sh's warm-up has
        # filled it): 20 cases of one forward would pass dynamo's recompile limit (8), after
        # which it runs the module eagerly, silently, under the "compiled" name.
        torch._dynamo.reset()
        return torch.compile(plain, mode=None if COMPILE_MODE == "default" else COMPILE_MODE, dynamic=False)
    reasons = unavailable_reasons(provider, DEVICE, dtype)
    if reasons:
        pytest.skip(f"{provider}: " + "; ".join(reasons))
    if isinstance(plain, PlainNeuMFInput):
        return neumf_input_twin(plain, backend=provider)
    return fused_twin(plain, backend=provider)


def _record(benchmark, extra_info: dict | None = None) -> None:
    """Append the row just measured to ``NEUMF_FAST_BENCH_ROWS`` (see the module's docstring),
    with ``extra_info`` in place of the benchmark's own if given."""
    path = os.environ.get("NEUMF_FAST_BENCH_ROWS")
    if not path or benchmark.disabled or benchmark.stats is None:
        return
    stats = benchmark.stats.stats
    row = dict(name=benchmark.name, extra_info=dict(benchmark.extra_info if extra_info is None else extra_info),
               stats=dict(median=stats.median, min=stats.min, mean=stats.mean, rounds=stats.rounds),
               datetime=datetime.now(timezone.utc).isoformat())
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _timed(fn, leaves, backward: bool):
    def call():
        gmf, mlp_in = fn()
        if backward:  # autograd.grad, not .backward: nothing accumulates into .grad between rounds
            torch.autograd.grad((gmf, mlp_in), leaves, (torch.ones_like(gmf), torch.ones_like(mlp_in)))
        torch.cuda.synchronize()

    return call


@pytest.mark.parametrize("provider", _providers("eager", "compiled", *KERNEL_PROVIDERS))
@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", RUN_ORDER)
def test_fused_input(benchmark, provider, shape, dtype_name, direction):
    dtype = DTYPES[dtype_name]
    plain, user, item, mask = _inputs(shape, dtype)
    module = _provider_module(provider, plain, dtype)
    fn = lambda: module(user, item, mask)
    backward = direction == "forward+backward"
    leaves = [t for t in (user, item, *module.parameters()) if t.requires_grad]
    call = _timed(fn, leaves, backward)
    if not backward:
        call = torch.no_grad()(call)
    for _ in range(3):  # compile, autotune, warm caches
        call()
    torch.cuda.synchronize()
    benchmark.extra_info.update(provider=provider, shape=shape, dtype=dtype_name, direction=direction,
                                bytes=_min_bytes(shape, dtype, backward), device=torch.cuda.get_device_name(),
                                batch=SHAPES[shape][0], ids=SHAPES[shape][3])
    if provider == "compiled":
        benchmark.extra_info["compile_mode"] = COMPILE_MODE
    benchmark(call)
    _record(benchmark)


@pytest.mark.parametrize("provider", _providers("eager", *KERNEL_PROVIDERS))
def test_serving_under_a_cuda_graph(benchmark, provider):
    """The serving shape's forward captured once in a CUDA graph and replayed (as
    ``torch.compile(mode="reduce-overhead")`` or a server's own capture would): the host cost
    of a call becomes one graph launch.  New requests are copied into the captured inputs."""
    shape, dtype = "serving_B16_L10_D128", torch.float32
    plain, user, item, mask = _inputs(shape, dtype)
    module = _provider_module(provider, plain, dtype)
    user, item = user.detach(), item.detach()
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                module(user, item, mask)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            gmf, mlp_in = module(user, item, mask)
        expected = module(user, item, mask)
    graph.replay()
    torch.testing.assert_close((gmf, mlp_in), expected)  # the graph computes what the module does

    def call():
        graph.replay()
        torch.cuda.synchronize()

    benchmark.extra_info.update(provider=f"{provider}_graph", shape=shape, dtype="float32", direction="forward",
                                bytes=_min_bytes(shape, dtype, False), device=torch.cuda.get_device_name())
    benchmark(call)
    _record(benchmark)


def test_copy_bandwidth(benchmark):
    """Device-to-device copy of 1 GiB: reads + writes 2 GiB."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        torch.cuda.synchronize()

    copy()
    benchmark.extra_info.update(provider="copy", shape="1 GiB", dtype="uint8", direction="copy",
                                bytes=2 * src.numel(), device=torch.cuda.get_device_name())
    benchmark(copy)
    _record(benchmark)
