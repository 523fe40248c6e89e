"""The Python cost of a ``backend="triton"`` call up to its kernel launch, on CPU tensors, with
the launch stubbed (issue 22's "thin launch": target <= 25 µs).

What is timed: ``neumf_input(...)`` from the call to the kernel's ``[grid](...)``, which is
replaced by a no-op, so the figure is everything a GPU call pays on the host before Triton's own
launcher (its binder and ``cuLaunchKernel``, not counted): dispatch, ``check_inputs``, the id
check's bookkeeping, the block-size rule (cached), allocation of outputs and saves, strides.
The CPU tensors stand in for CUDA ones (allocation on the CPU allocator, not the caching CUDA
allocator, which is of the same order).  Provider ``baseline_eager`` (``test_plain_first_half``):
the design's plain first half (``baselines.PlainFirstHalf``, four ``nn.Linear``, or
``nn.EmbeddingBag`` + ``nn.Linear`` for ids) on the same CPU tensors, which runs its math too, for
scale only.

    TRITON_INTERPRET=1 PYTHONPATH=.:benchmarks python -m pytest benchmarks/test_bench_triton_launch.py --benchmark-only
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # lets the Triton backend take CPU tensors

import pytest  # noqa: E402
import torch  # noqa: E402

import neumf_fast  # noqa: E402
from neumf_fast.ops import dispatch  # noqa: E402

REASONS = dispatch.unavailable_reasons("triton", "cpu")
pytestmark = pytest.mark.skipif(bool(REASONS), reason="; ".join(REASONS))


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@pytest.fixture
def stubbed_kernels(monkeypatch):
    from neumf_fast.ops import triton_backend as TB

    for name in ("fused_forward_kernel", "fused_backward_rows_kernel"):
        monkeypatch.setattr(TB.K, name, _NoLaunch())


def _inputs(ids: bool, grad: bool):
    """The serving shape of the GPU benchmark: B=16, L=10, D = H_mf = H_mlp = 128."""
    B, L, D = 16, 10, 128
    p = lambda *s: torch.randn(*s, requires_grad=grad)
    kw = dict(h_mf=D, user_weight=p(2 * D, D), user_bias=p(2 * D), item_weight=p(2 * D, D), item_bias=p(2 * D))
    if ids:
        return torch.randint(1, 1000, (B, L)), torch.randint(0, 1000, (B,)), dict(
            kw, user_table=p(1000, D), item_table=p(1000, D), padding_idx=0)
    return p(B, L, D), p(B, D), dict(kw, user_mask=torch.rand(B, L) > 0.2)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
def test_python_to_launch(benchmark, stubbed_kernels, ids, grad):
    user, item, kw = _inputs(ids, grad)
    call = lambda: neumf_fast.neumf_input(user, item, backend="triton", **kw)
    call()  # selects the backend and fills the rule's cache
    benchmark.group = f"triton launch {'ids' if ids else 'dense'} {'training' if grad else 'inference'}"
    benchmark.extra_info.update(provider="triton_stubbed", batch=16, seq_len=10, dim=128)
    if grad:
        with torch.enable_grad():
            benchmark(call)
    else:
        with torch.no_grad():
            benchmark(call)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
def test_plain_first_half(benchmark, ids, grad):
    """What a user writes instead (``baselines.PlainFirstHalf``: four ``nn.Linear``, or
    ``nn.EmbeddingBag`` + ``nn.Linear`` for ids) at the same shape, forward only, its math
    included: the scale the stubbed launch is read against (on a GPU its kernels are async)."""
    from baselines import PlainFirstHalf

    B, L, D = 16, 10, 128
    plain = PlainFirstHalf(D, D, num_rows=1000 if ids else None).requires_grad_(grad)
    if ids:
        user, item, mask = torch.randint(1, 1000, (B, L)), torch.randint(0, 1000, (B,)), None
    else:
        user, item, mask = torch.randn(B, L, D), torch.randn(B, D), torch.rand(B, L) > 0.2
    benchmark.group = f"triton launch {'ids' if ids else 'dense'} {'training' if grad else 'inference'}"
    benchmark.extra_info.update(provider="baseline_eager", batch=B, seq_len=L, dim=D)
    with torch.set_grad_enabled(grad):
        benchmark(lambda: plain(user, item, mask))
