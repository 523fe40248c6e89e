"""GPU benchmark of the first stage of NeuMF (run by benchmarks/gpu_check.sh; skipped without CUDA).

Providers, the same inputs and weights for all (``benchmarks/baselines.py``):
- ``eager``, the baseline, what a user writes instead: the design's four ``nn.Linear`` on the
  masked ``user.sum(1)``; for ids, ``nn.EmbeddingBag`` (sum, padding id 0) and ``nn.Embedding``
  into the same four ``nn.Linear``;
- ``compiled``: ``torch.compile(mode="max-autotune-no-cudagraphs")`` of that module;
- each GPU kernel backend that can run (``triton``, ``cuda``), as ``neumf_fast.FusedUserItem``
  with the same weights.
Shapes: the design's demo, B=8192 L=10 D=H=128, B=65536 L=50 D=H=64 dense, and the same with ids
into a 1,000,000 × 64 table; float32 and bfloat16; forward (under ``no_grad``), and
forward+backward (``autograd.grad`` of every input and parameter).

Every timed call ends with ``torch.cuda.synchronize()``.  Each row records the bytes the op must
move at least (inputs read once, outputs written once; the backward's reads and writes added
for forward+backward), so the report divides them by the time and compares the rate with the
device-to-device copy bandwidth measured in the same run (``test_copy_bandwidth``).
"""

from __future__ import annotations

import pytest
import torch

from baselines import PlainFirstHalf, fused_twin
from neumf_fast.ops import BackendUnavailable, check_inputs, select_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: no CUDA device")
DEVICE = "cuda"  # a smoke test of this file's set-up may point it at "cpu"

SHAPES = {
    # name: (B, L, D = H_mf = H_mlp, ids, table rows)
    "demo_B16_L10_D128": (16, 10, 128, False, 0),
    "B8192_L10_D128": (8192, 10, 128, False, 0),
    "B65536_L50_D64": (65536, 50, 64, False, 0),
    "ids_B65536_L50_D64_N1M": (65536, 50, 64, True, 1_000_000),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
KERNEL_PROVIDERS = ["triton", "cuda"]


def _providers(*names):
    """Each provider carries a mark, ``provider_<name>``, so that gpu_check.sh can time each in its
    own process (``-m provider_triton``): one that runs out of time loses no other's rows."""
    return [pytest.param(name, marks=getattr(pytest.mark, f"provider_{name}")) for name in names]


def _inputs(shape, dtype, seed=0):
    """(baseline module, user, item, user_mask) on the GPU in ``dtype``."""
    batch, seq_len, dim, ids, rows = SHAPES[shape]
    torch.manual_seed(seed)
    plain = PlainFirstHalf(dim, dim, rows if ids else None).to(DEVICE, dtype)
    g = torch.Generator(device=DEVICE).manual_seed(seed)
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


def _provider_module(provider, plain):
    if provider == "eager":
        return plain
    if provider == "compiled":
        return torch.compile(plain, mode="max-autotune-no-cudagraphs", dynamic=False)
    fused = fused_twin(plain, backend=provider)
    w, b = fused.user_weight, fused.user_bias
    probe = torch.zeros(1, 1, w.shape[1], device=w.device, dtype=w.dtype)
    dims = check_inputs(probe, None, None, None, probe[:, 0], None, w, b, fused.item_weight, fused.item_bias,
                        fused.h_mf, "sum")
    try:
        select_backend(dims, provider)
    except (BackendUnavailable, ValueError) as e:
        pytest.skip(str(e))
    return fused


def _timed(fn, leaves, backward: bool):
    def call():
        gmf, mlp_in = fn()
        if backward:  # autograd.grad, not .backward: nothing accumulates into .grad between rounds
            torch.autograd.grad((gmf, mlp_in), leaves, (torch.ones_like(gmf), torch.ones_like(mlp_in)))
        torch.cuda.synchronize()

    return call


@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", _providers("eager", "compiled", *KERNEL_PROVIDERS))
def test_fused_input(benchmark, provider, shape, dtype_name, direction):
    dtype = DTYPES[dtype_name]
    plain, user, item, mask = _inputs(shape, dtype)
    module = _provider_module(provider, plain)
    fn = lambda: module(user, item, mask)
    backward = direction == "forward+backward"
    leaves = [t for t in (user, item, *module.parameters()) if t.requires_grad]
    call = _timed(fn, leaves, backward)
    if not backward:
        call = torch.no_grad()(call)
    for _ in range(3):  # compile, autotune, warm caches
        call()
    torch.cuda.synchronize()
    benchmark.pedantic(call, rounds=20 if SHAPES[shape][0] > 1024 else 200, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update(provider=provider, shape=shape, dtype=dtype_name, direction=direction,
                                bytes=_min_bytes(shape, dtype, backward), device=torch.cuda.get_device_name(),
                                batch=SHAPES[shape][0], ids=SHAPES[shape][3])


@pytest.mark.parametrize("provider", _providers("eager", *KERNEL_PROVIDERS))
def test_serving_under_a_cuda_graph(benchmark, provider):
    """The serving shape's forward captured once in a CUDA graph and replayed (as
    ``torch.compile(mode="reduce-overhead")`` or a server's own capture would): the host cost
    of a call becomes one graph launch.  New requests are copied into the captured inputs."""
    shape, dtype = "demo_B16_L10_D128", torch.float32
    plain, user, item, mask = _inputs(shape, dtype)
    module = _provider_module(provider, plain)
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

    benchmark.pedantic(call, rounds=200, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update(provider=f"{provider}_graph", shape=shape, dtype="float32", direction="forward",
                                bytes=_min_bytes(shape, dtype, False), device=torch.cuda.get_device_name())


def test_copy_bandwidth(benchmark):
    """Device-to-device copy of 1 GiB: reads + writes 2 GiB."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        torch.cuda.synchronize()

    copy()
    benchmark.pedantic(copy, rounds=20, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update(provider="copy", shape="1 GiB", dtype="uint8", direction="copy",
                                bytes=2 * src.numel(), device=torch.cuda.get_device_name())
