"""GPU benchmark of the fused NeuMF input op (run by benchmarks/gpu_check.sh; skipped without CUDA).

Providers, same inputs for all: the reference in eager PyTorch (``eager``), the reference under
``torch.compile(mode="max-autotune-no-cudagraphs")`` (``compiled``), and each GPU kernel
backend that can run (``triton``; ``cuda`` once the CUDA C++ kernels are built).  Shapes: the
design's demo, B=8192 L=10 D=H=128, B=65536 L=50 D=H=64 dense, and the same with ids into a
1,000,000 × 64 table; float32 and bfloat16; forward, and forward+backward.

Every timed call ends with ``torch.cuda.synchronize()``.  Each row records the bytes the op must
move at least (inputs read once, outputs written once; the backward's reads and writes added
for forward+backward), so the report divides them by the time and compares the rate with the
device-to-device copy bandwidth measured in the same run (``test_copy_bandwidth``).
"""

from __future__ import annotations

import pytest
import torch

import neumf_fast
from neumf_fast import reference
from neumf_fast.ops import BackendUnavailable, check_inputs, select_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: no CUDA device")

SHAPES = {
    # name: (B, L, D = H_mf = H_mlp, ids, table rows)
    "demo_B16_L10_D128": (16, 10, 128, False, 0),
    "B8192_L10_D128": (8192, 10, 128, False, 0),
    "B65536_L50_D64": (65536, 50, 64, False, 0),
    "ids_B65536_L50_D64_N1M": (65536, 50, 64, True, 1_000_000),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
KERNEL_PROVIDERS = ["triton", "cuda"]


def _inputs(shape, dtype, seed=0):
    batch, seq_len, dim, ids, rows = SHAPES[shape]
    g = torch.Generator(device="cuda").manual_seed(seed)
    p = lambda *s: (torch.randn(*s, generator=g, device="cuda") * 0.1).to(dtype).requires_grad_()
    kw = dict(h_mf=dim, user_weight=p(2 * dim, dim), user_bias=p(2 * dim), item_weight=p(2 * dim, dim),
              item_bias=p(2 * dim))
    if ids:
        user = torch.randint(1, rows, (batch, seq_len), generator=g, device="cuda")
        user[:, seq_len // 2:] = torch.where(torch.rand(batch, seq_len - seq_len // 2, generator=g, device="cuda") < 0.3,
                                             0, user[:, seq_len // 2:])
        item = torch.randint(0, rows, (batch,), generator=g, device="cuda")
        kw.update(user_table=p(rows, dim), item_table=p(rows, dim), padding_idx=0)
    else:
        user, item = p(batch, seq_len, dim), p(batch, dim)
        kw["user_mask"] = torch.rand(batch, seq_len, generator=g, device="cuda") > 0.2
    return user, item, kw


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


def _provider_fn(provider, user, item, kw):
    if provider == "eager":
        return lambda: reference.neumf_input(user, item, **kw)
    if provider == "compiled":
        compiled = torch.compile(reference.neumf_input, mode="max-autotune-no-cudagraphs", dynamic=False)
        return lambda: compiled(user, item, **kw)
    dims = check_inputs(user, kw.get("user_mask"), kw.get("user_table"), kw.get("padding_idx"), item,
                        kw.get("item_table"), kw["user_weight"], kw["user_bias"], kw["item_weight"], kw["item_bias"],
                        kw["h_mf"], "sum")
    try:
        select_backend(dims, provider)
    except (BackendUnavailable, ValueError) as e:
        pytest.skip(str(e))
    return lambda: neumf_fast.neumf_input(user, item, backend=provider, **kw)


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
@pytest.mark.parametrize("provider", ["eager", "compiled", *KERNEL_PROVIDERS])
def test_fused_input(benchmark, provider, shape, dtype_name, direction):
    dtype = DTYPES[dtype_name]
    user, item, kw = _inputs(shape, dtype)
    fn = _provider_fn(provider, user, item, kw)
    backward = direction == "forward+backward"
    leaves = [t for t in (user, item, *kw.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
    call = _timed(fn, leaves, backward)
    if not backward:
        call = torch.no_grad()(call)
    for _ in range(3):  # compile, autotune, warm caches
        call()
    torch.cuda.synchronize()
    benchmark.pedantic(call, rounds=20 if SHAPES[shape][0] > 1024 else 200, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update(provider=provider, shape=shape, dtype=dtype_name, direction=direction,
                                bytes=_min_bytes(shape, dtype, backward), device=torch.cuda.get_device_name())


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
