"""CPU benchmark of the fused NeuMF input op: one function per provider, same inputs for all.

Providers: the reference in eager PyTorch, the reference under torch.compile, the C++ CPU
kernel, and (id path only) eager nn.EmbeddingBag + nn.Linear, the usual hand-written baseline.
Run (not part of the test suite):

    python -m pytest benchmarks/test_bench_cpu.py --benchmark-json=benchmarks/results/cpu.json
    python benchmarks/report.py benchmarks/results/cpu.json > benchmarks/results/cpu.md
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import neumf_fast
from neumf_fast import reference
from neumf_fast.ops import _library

SHAPES = {
    # name: (B, L, D, H_mf = H_mlp, ids)
    "demo_B16_L10_D128": (16, 10, 128, 128, False),
    "B4096_L10_D128": (4096, 10, 128, 128, False),
    "ids_B4096_L50_D64_N100k": (4096, 50, 64, 64, True),
}
NUM_ROWS = 100_000
PROVIDERS = ["eager", "compiled", "cpu_kernel", "eager_embedding_bag"]


def make_inputs(batch, seq_len, dim, hidden, ids, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = lambda *s: (torch.randn(*s, generator=g) * 0.1).requires_grad_()
    kw = dict(h_mf=hidden, user_weight=p(2 * hidden, dim), user_bias=p(2 * hidden),
              item_weight=p(2 * hidden, dim), item_bias=p(2 * hidden))
    if ids:
        user = torch.randint(1, NUM_ROWS, (batch, seq_len), generator=g)
        user[:, seq_len // 2:][torch.rand(batch, seq_len - seq_len // 2, generator=g) < 0.3] = 0  # padding
        item = torch.randint(0, NUM_ROWS, (batch,), generator=g)
        kw.update(user_table=p(NUM_ROWS, dim), item_table=p(NUM_ROWS, dim), padding_idx=0)
    else:
        user, item = p(batch, seq_len, dim), p(batch, dim)
    return user, item, kw


def embedding_bag_linear(user, item, *, h_mf, user_table, item_table, padding_idx,
                         user_weight, user_bias, item_weight, item_bias):
    pooled = F.embedding_bag(user, user_table, mode="sum", padding_idx=padding_idx)
    proj_user = F.linear(pooled, user_weight, user_bias)
    proj_item = F.linear(F.embedding(item, item_table), item_weight, item_bias)
    return proj_user[:, :h_mf] * proj_item[:, :h_mf], torch.cat([proj_user[:, h_mf:], proj_item[:, h_mf:]], -1)


def provider_fn(provider):
    if provider == "eager":
        return reference.neumf_input
    if provider == "compiled":
        return torch.compile(reference.neumf_input)
    if provider == "cpu_kernel":
        return lambda u, i, **kw: neumf_fast.neumf_input(u, i, backend="cpu", **kw)
    return embedding_bag_linear


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
def test_cpu(benchmark, direction, shape, provider):
    batch, seq_len, dim, hidden, ids = SHAPES[shape]
    if provider == "eager_embedding_bag" and not ids:
        pytest.skip("EmbeddingBag is the baseline of the id path only")
    if provider == "cpu_kernel" and _library.EXTENSION_ERROR:
        pytest.skip(_library.EXTENSION_ERROR)
    torch._dynamo.reset()
    user, item, kw = make_inputs(batch, seq_len, dim, hidden, ids)
    fn = provider_fn(provider)
    leaves = [t for t in (user, item, *kw.values()) if isinstance(t, torch.Tensor) and t.requires_grad]

    def step():
        gmf, mlp_in = fn(user, item, **kw)
        if direction == "fwd_bwd":
            torch.autograd.backward((gmf, mlp_in), (torch.ones_like(gmf), torch.ones_like(mlp_in)))
            for t in leaves:
                t.grad = None
        return gmf

    for _ in range(3):  # compile and warm caches outside the timed region
        step()
    benchmark.extra_info.update(direction=direction, shape=shape, provider=provider, dtype="float32",
                                B=batch, L=seq_len, D=dim, H=hidden, ids=ids)
    benchmark.pedantic(step, rounds=30 if batch <= 16 else 10, iterations=20 if batch <= 16 else 1, warmup_rounds=1)
