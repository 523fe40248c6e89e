"""The Python and dispatcher cost of a serving call of ``FusedUserItem(backend="cpu")``, from
``FusedUserItem.__call__`` to the C++ kernel's entry, at the seed's demo shape (B=16, L=10,
D = H_mf = H_mlp = 128).

Two providers, timed interleaved in one run (who goes first alternates) so that the VM's
drifts slow both alike:

- ``module``: the module call, inference (``no_grad``) or training (autograd records it);
- ``kernel``: the registered C++ op alone, called below autograd as the module's route calls
  it, on the same inputs and weights (inference: ``save=False``; training: ``save=True``).

Their difference is what the call costs around the kernel: ``nn.Module.__call__``, the
arguments (``FusedArgs``), the cached backend lookup, the autograd decision and, in training,
``FusedFunction``'s bookkeeping.

    PYTHONPATH=benchmarks python -m pytest benchmarks/test_bench_cpu_call.py -q
"""

from __future__ import annotations

from time import perf_counter

import pytest
import torch

from baselines import PlainFirstHalf, fused_twin
from neumf_fast.ops import _library

B, L, D = 16, 10, 128
ROUNDS, CALLS = 60, 50

pytestmark = pytest.mark.skipif(_library.EXTENSION_ERROR is not None, reason=str(_library.EXTENSION_ERROR))


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_module_call_around_the_kernel(benchmark, grad):
    torch.manual_seed(0)
    fused = fused_twin(PlainFirstHalf(D, D), backend="cpu")
    user, item = torch.randn(B, L, D), torch.randn(B, D)
    user_weight, user_bias, item_weight, item_bias = fused.stacked_parameters()
    args = (user, None, None, None, item, None, user_weight, user_bias, item_weight, item_bias, D, "sum", grad)
    steps = {"module": lambda: fused(user, item), "kernel": lambda: _library.KERNELS.forward(*args)}
    rounds = {p: [] for p in steps}

    def paired():
        for r in range(ROUNDS):
            for p in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
                begin = perf_counter()
                for _ in range(CALLS):
                    steps[p]()
                rounds[p].append((perf_counter() - begin) / CALLS)

    with torch.set_grad_enabled(grad):
        for step in steps.values():
            for _ in range(20):
                step()
        benchmark.pedantic(paired, rounds=1, iterations=1)
    median = {p: sorted(t)[len(t) // 2] for p, t in rounds.items()}
    benchmark.extra_info.update(direction="training" if grad else "inference", B=B, L=L, D=D,
                                provider="module+kernel", rounds=ROUNDS, calls_per_round=CALLS,
                                paired={p: {"seconds": s} for p, s in median.items()},
                                around_kernel_us=(median["module"] - median["kernel"]) * 1e6)
