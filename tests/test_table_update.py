"""``table_update_`` on every kernel target against its float64 spec, ``reference.table_update_``.

Each target (tests/conftest.py ``TARGETS``: the C++ CPU kernel, Triton in its interpreter, the
CUDA sources in the CPU emulator, and on a GPU both GPU kernels) updates a table in place; the
reference runs on float64 copies of the same table, state and gradients.  Cases: duplicate ids
in a row and across rows, the padding id (never updated), rows whose every position is padding,
an empty batch, odd sizes (1, 3, 37, 1000 rows of ids; widths 1, 3, 5, 37).

Tolerances: float64 1e-12; float32 1e-5 relative to the largest entry (one row is a sum of at
most a few hundred terms plus one optimizer step, each a few ulps; Adam's ``m / sqrt(v)`` is
compared where ``|g|`` is far above ``eps``, see ``_grads``); bfloat16 tables (fp32 state, fp32
gradients summed): the table within one bf16 rounding (2^-8 relative) of the float64 result
rounded, the state at the float32 tolerance.
"""

from __future__ import annotations

import pytest
import torch

from neumf_fast import reference
from neumf_fast.ops.table_update import TABLE_OPTIMIZERS, new_state

HYPER = dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.01)
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2 ** -8}
# (M, K, D, rows); the last has rows > 16 M K, where the C++ kernel takes its radix sort, not the
# counting sort the others take (table_update_cpu.cpp: kCountingRatio)
SHAPES = [(1, 1, 1, 1), (3, 3, 3, 5), (37, 2, 37, 50), (1000, 1, 8, 300), (37, 3, 5, 2000)]


def _case(m: int, k: int, d: int, rows: int, dtype, padding_idx, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, d, generator=g, dtype=torch.float64)
    ids = torch.randint(0, max(1, rows // 2), (m, k), generator=g)  # half the rows: duplicates
    if padding_idx is not None and m:
        ids[::3, 0] = padding_idx
        ids[m // 2] = padding_idx  # a row with nothing but padding
    grad = torch.randn(m, d, generator=g, dtype=torch.float64)
    grad += grad.sign()  # |g| >= 1: Adam's first step is g / |g|, well away from eps
    return table.to(dtype), ids, grad.to(dtype)


def _state(optimizer: str, table: torch.Tensor, seed: int = 1):
    """A state as after some steps: moments of the right sign and size, the count at 4."""
    g = torch.Generator().manual_seed(seed)
    moment1, moment2, step = new_state(optimizer, table)
    if moment1.numel():
        moment1.copy_(torch.randn(moment1.shape, generator=g, dtype=torch.float64) * 0.1)
    if moment2.numel():
        moment2.copy_(torch.rand(moment2.shape, generator=g, dtype=torch.float64) + 0.5)
    step.fill_(4)
    return moment1, moment2, step


def _run(update, table, state, ids, grad, padding_idx, optimizer, device):
    table, ids, grad = table.to(device, copy=True), ids.to(device), grad.to(device)
    state = [s.to(device, copy=True) for s in state]
    update(table, *state, ids, grad, padding_idx, optimizer, *HYPER.values())
    return table.cpu(), [s.cpu() for s in state]


def _check(actual, expected, dtype, what):
    tol = TOL[dtype if what == "table" else (torch.float64 if dtype == torch.float64 else torch.float32)]
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    err = (actual.double() - expected.double()).abs()
    worst = err.max().item() if err.numel() else 0.0
    assert worst <= tol * scale, f"{what}: max abs error {worst:.3g} at {err.argmax().item()} > {tol * scale:.3g}"


@pytest.mark.parametrize("optimizer", TABLE_OPTIMIZERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m,k,d,rows", SHAPES)
@pytest.mark.parametrize("padding_idx", [None, 0], ids=["nopad", "pad0"])
def test_update_matches_reference(backend, optimizer, dtype, m, k, d, rows, padding_idx):
    backend.require(dtype)
    if backend.slow and m >= 1000:
        m = 100
    table, ids, grad = _case(m, k, d, rows, dtype, padding_idx)
    state = _state(optimizer, table)
    actual, actual_state = _run(backend.update, table, state, ids, grad, padding_idx, optimizer, backend.device)
    expected = table.to(torch.float64, copy=True)
    expected_state = [s.to(torch.float64 if s.is_floating_point() else s.dtype, copy=True) for s in state]
    reference.table_update_(expected, *expected_state, ids, grad.double(), padding_idx, optimizer, *HYPER.values())
    if dtype == torch.bfloat16:
        expected = expected.to(dtype)
    _check(actual, expected, dtype, "table")
    for name, a, e in zip(("moment1", "moment2"), actual_state, expected_state):
        _check(a, e, dtype, name)
    assert actual_state[2].item() == expected_state[2].item() == 5
    # rows that no kept position names are bit for bit what they were
    named = ids[ids != padding_idx] if padding_idx is not None else ids.reshape(-1)
    untouched = torch.ones(rows, dtype=torch.bool)
    untouched[named] = False
    assert torch.equal(actual[untouched], table[untouched])


@pytest.mark.parametrize("optimizer", TABLE_OPTIMIZERS)
def test_empty_batch_changes_nothing_but_the_count(backend, optimizer):
    backend.require(torch.float32)
    table, ids, grad = _case(0, 3, 4, 10, torch.float32, None)
    state = _state(optimizer, table)
    actual, actual_state = _run(backend.update, table, state, ids, grad, None, optimizer, backend.device)
    assert torch.equal(actual, table)
    assert all(torch.equal(a, s) for a, s in zip(actual_state[:2], state[:2]))
    assert actual_state[2].item() == 5


def test_update_is_deterministic_and_sums_a_hot_row_once(backend):
    """One row named 5,000 times in one batch: summed once (one Adam step, not 5,000), the same
    bits on every run."""
    backend.require(torch.float32)
    m = 500 if backend.slow else 5000
    table, _, grad = _case(m, 1, 16, 20, torch.float32, None)
    ids = torch.full((m, 1), 7)
    ids[::10] = 3
    results = [_run(backend.update, table, _state("adam", table), ids, grad, None, "adam", backend.device)[0]
               for _ in range(2)]
    assert torch.equal(results[0], results[1])
    expected = table.to(torch.float64, copy=True)
    state = [s.to(torch.float64 if s.is_floating_point() else s.dtype, copy=True) for s in _state("adam", table)]
    reference.table_update_(expected, *state, ids, grad.double(), None, "adam", *HYPER.values())
    _check(results[0], expected, torch.float32, "table")


@pytest.mark.parametrize("optimizer", TABLE_OPTIMIZERS)
def test_opcheck(optimizer):
    """The schema's mutation annotations, the fake kernel and the C++ CPU kernel agree."""
    from neumf_fast.ops import _library

    if _library.EXTENSION_ERROR is not None:
        pytest.skip(_library.EXTENSION_ERROR)
    table, ids, grad = _case(37, 3, 5, 50, torch.float32, 0)
    state = _state(optimizer, table)
    torch.library.opcheck(torch.ops.neumf_fast.table_update_.default,
                          (table, *state, ids, grad, 0, optimizer, *HYPER.values()))


def test_bad_input_is_a_clear_error(backend):
    """An id outside the table (IndexError at the call on the CPU) and a state of the wrong
    shape (ValueError naming it)."""
    backend.require(torch.float32)
    table, ids, grad = _case(5, 2, 4, 10, torch.float32, None)
    ids[3, 1] = 10
    state = _state("adam", table)
    if backend.name in ("cpu", "triton-interpret"):  # the GPU kernels' deferred record: tests/test_cuda.py
        with pytest.raises(IndexError, match="10 is out of range for a table with 10 rows"):
            _run(backend.update, table, state, ids, grad, None, "adam", backend.device)
    ids[3, 1] = 0
    with pytest.raises(ValueError, match="moment2"):
        _run(backend.update, table, (state[0], state[1][:5], state[2]), ids, grad, None, "adam", backend.device)
