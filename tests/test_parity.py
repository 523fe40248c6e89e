"""Every kernel backend against the reference (neumf_fast.reference), forward and backward.

Tolerances:
- float32: atol = rtol = 2e-5 against the float32 reference, atol relative to the tensor's
  largest entry (conftest.assert_close).  The two implementations sum in different orders
  (per-row vector accumulation vs. torch's reductions, GEMMs over up to 1000 rows), which
  moves the result by ~sqrt(n) ulps (float32 eps 1.2e-7) of the terms summed; 2e-5 is ~100
  ulps, well below any real error (a wrong row or a missed mask moves an output by O(1)).
- float64: atol = rtol = 1e-10 (same argument with eps 2.2e-16).
- bfloat16 / float16 (flash-attention's rule): the kernel's max error against the float64
  reference of the same (rounded) inputs must be at most 2x the error of the PyTorch reference
  computed in that dtype, plus one unit of that dtype's eps times the largest magnitude (so an
  output that both compute exactly must still match to the last bit of precision).
"""

from __future__ import annotations

import pytest
import torch

import neumf_fast
from neumf_fast.ops import _library

from conftest import KERNELS, assert_backward_ignores_autocast, assert_close, assert_flash_attention_rule, make_case, run

DIRECT_TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


def check_parity(case, backend):
    expected = run(case, "torch")
    actual = run(case, backend)
    tol = DIRECT_TOL[case.user.dtype if case.user.is_floating_point() else case.kwargs["user_table"].dtype]
    assert_close(actual, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("seq_len", [1, 10, 33])
@pytest.mark.parametrize("batch", [0, 1, 7, 1000])
def test_batch_and_length(backend, batch, seq_len, user_ids):
    case = make_case(batch=batch, seq_len=seq_len, user_ids=user_ids, item_ids=user_ids, mask="empty_rows",
                     num_user_rows=300, num_item_rows=200)
    check_parity(case, backend)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize(
    "user_dim,item_dim,h_mf,h_mlp,h_mlp_item",
    [(3, 3, 3, 3, 3), (37, 3, 3, 37, 5), (128, 37, 37, 128, 3), (3, 128, 128, 3, 37), (37, 37, 0, 37, 3)],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("project,bias", [(True, True), (True, False), (False, False)], ids=["bias", "nobias", "noproj"])
def test_widths_and_projection(backend, user_ids, user_dim, item_dim, h_mf, h_mlp, h_mlp_item, project, bias):
    if not project:
        # No projection: the pooled vector is split as [mf | mlp], so h_mf must fit both sides.
        h_mf = min(h_mf, user_dim, item_dim)
    case = make_case(batch=37, seq_len=10, user_dim=user_dim, item_dim=item_dim, h_mf=h_mf, h_mlp=h_mlp,
                     h_mlp_item=h_mlp_item, user_ids=user_ids, item_ids=not user_ids, project=project, bias=bias)
    check_parity(case, backend)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("mask", ["none", "random", "empty_rows", "all"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_masks_and_modes(backend, user_ids, mask, mode):
    case = make_case(batch=37, seq_len=33, user_ids=user_ids, mode=mode,
                     mask=mask)  # "all": every position masked
    expected = run(case, "torch")
    assert all(torch.isfinite(t).all() for t in expected.values())
    check_parity(case, backend)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("padding_idx", [0, 49, -1])
def test_padding_idx_values(backend, padding_idx):
    """The padding id may be any value, including one outside the table (-1)."""
    case = make_case(user_ids=True, padding_idx=padding_idx, mode="mean", mask="empty_rows")
    check_parity(case, backend)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_int32_ids(backend, index_dtype):
    case = make_case(user_ids=True, item_ids=True, mask="random")
    case.user = case.user.to(index_dtype)
    case.item = case.item.to(index_dtype)
    check_parity(case, backend)


def test_repeated_ids_accumulate():
    """The same id many times in a row and across rows: the table gradient sums them all."""
    case = make_case(user_ids=True, item_ids=True, mask="none", num_user_rows=2, num_item_rows=1, batch=50)
    for backend in [p.values[0] for p in KERNELS if not p.marks]:
        check_parity(case, backend)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64])
@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
def test_float64(backend, dtype, user_ids):
    check_parity(make_case(user_ids=user_ids, item_ids=user_ids, dtype=dtype, mode="mean"), backend)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("project", [True, False], ids=["proj", "noproj"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_reduced_precision(backend, dtype, user_ids, project, mode):
    low = make_case(batch=100, seq_len=10, user_dim=128, h_mf=37, h_mlp=128, h_mlp_item=3,
                    user_ids=user_ids, item_ids=user_ids, project=project, mode=mode, dtype=dtype)
    assert_flash_attention_rule(low, backend)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("batch", [1, 37, 1000])
@pytest.mark.parametrize("project,bias", [(True, True), (True, False), (False, False)], ids=["bias", "nobias", "noproj"])
@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
def test_inference_forward(backend, dtype, batch, project, bias, user_ids):
    """An inference call (under no_grad: the op runs with save=False, its kernels write nothing
    for backward), at serving batch sizes (where the C++ kernel runs the two sides' GEMMs at
    once) and above.  Same tolerances as above, by dtype."""
    case = make_case(batch=batch, seq_len=10, user_dim=128 if batch < 1000 else 37, h_mf=37, h_mlp=64,
                     h_mlp_item=3, user_ids=user_ids, item_ids=user_ids, project=project, bias=bias, dtype=dtype)
    if dtype in DIRECT_TOL:
        tol = DIRECT_TOL[dtype]
        assert_close(run(case, backend, backward=False), run(case, "torch", backward=False), atol=tol, rtol=tol)
    else:
        assert_flash_attention_rule(case, backend, backward=False)


@pytest.mark.parametrize("backend", KERNELS)
def test_non_contiguous_inputs(backend):
    """Non-contiguous inputs are handled (made contiguous inside), with the same results."""
    case = make_case(batch=20, seq_len=6, user_dim=8, h_mf=4, h_mlp=4)
    strided = make_case(batch=20, seq_len=6, user_dim=8, h_mf=4, h_mlp=4)
    with torch.no_grad():
        strided.user = case.user.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
        strided.item = torch.cat([case.item.detach(), case.item.detach()], 1)[:, :8].requires_grad_()
        strided.kwargs["user_weight"] = case.kwargs["user_weight"].detach().t().contiguous().t().requires_grad_()
        strided.kwargs["user_mask"] = case.kwargs["user_mask"].t().contiguous().t()
    assert not strided.user.is_contiguous() and not strided.item.is_contiguous()
    assert_close(run(strided, backend), run(case, "torch"), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", KERNELS)
def test_backward_inside_autocast_keeps_float32_gradients(backend):
    """``assert_backward_ignores_autocast``: the C++ kernels' GEMMs exclude autocast."""
    for user_ids in (False, True):
        case = make_case(batch=37, seq_len=3, user_dim=16, h_mf=8, h_mlp=8, user_ids=user_ids, item_ids=user_ids)
        assert_backward_ignores_autocast(case, backend, "cpu")


@pytest.mark.parametrize("backend", KERNELS)
def test_deterministic_table_gradient(backend):
    """The table gradient is a fixed-order reduction: bitwise equal across runs and thread counts."""
    case = make_case(batch=500, seq_len=20, user_ids=True, item_ids=True, num_user_rows=7, num_item_rows=3)
    threads = torch.get_num_threads()
    try:
        first = run(case, backend)
        torch.set_num_threads(1)
        single = run(case, backend)
    finally:
        torch.set_num_threads(threads)
    for name in ("grad_user_table", "grad_item_table"):
        assert torch.equal(first[name], single[name]), name


@pytest.mark.skipif(_library.EXTENSION_ERROR is not None, reason=str(_library.EXTENSION_ERROR))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", [9000, 18000])
def test_large_tables_give_the_small_tables_gradient_rows(dtype, rows):
    """The C++ kernel scatters into a table gradient of up to 2 MiB (op-math) and writes a
    larger one row by row (csrc/cpu/fused_input_cpu.cpp, table_grad).  Both sum each row's
    contributions in position order, so the same ids into a 9-row table and into a 9000-row one
    (2.3 MB of float32 gradient) whose first rows are the same give the same gradient rows bit
    for bit, and zeros for the rows nobody read; likewise on one thread.  An 18000-row float32
    gradient (4.6 MB) is written with non-temporal stores, rows and runs of zeros alike: the
    same again.  The large case also matches the reference (float32, at the 2e-5 used
    throughout this file)."""
    small = make_case(batch=37, seq_len=6, user_dim=64, h_mf=8, h_mlp=8, user_ids=True, item_ids=True,
                      num_user_rows=9, num_item_rows=9, mask="empty_rows", dtype=dtype)
    g = torch.Generator().manual_seed(3)
    large = small.to(dtype)  # fresh leaves, same values
    for name in ("user_table", "item_table"):
        table = small.kwargs[name].detach()
        extra = torch.randn(rows - len(table), table.shape[1], generator=g, dtype=torch.float64).to(dtype)
        large.kwargs[name] = torch.cat([table, extra]).requires_grad_()
    expected, got = run(small, "cpu"), run(large, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = run(large, "cpu")
    finally:
        torch.set_num_threads(threads)
    for name, want in expected.items():
        for other in (got, single):
            have = other[name]
            if name.endswith("_table"):
                assert not have[len(want):].any(), f"{name}: a row nobody read is not zero"
                have = have[:len(want)]
            assert torch.equal(have, want), name
    if dtype == torch.float32:
        assert_close(got, run(large, "torch"), atol=2e-5, rtol=2e-5)


@pytest.mark.skipif(_library.EXTENSION_ERROR is not None, reason=str(_library.EXTENSION_ERROR))
@pytest.mark.parametrize("user_dim", [128, 37])
def test_streamed_sequence_gradient(user_dim):
    """The C++ kernel writes a float32 sequence gradient of over 4 MB with non-temporal stores
    (rows of a width that is a multiple of 8; plain stores for the others, such as 37): masked
    positions and kept ones alike match the reference."""
    case = make_case(batch=1100, seq_len=33, user_dim=user_dim, h_mf=8, h_mlp=8, mask="empty_rows")
    assert case.user.nbytes > 4 << 20
    check_parity(case, "cpu")


@pytest.mark.skipif(_library.EXTENSION_ERROR is not None, reason=str(_library.EXTENSION_ERROR))
@pytest.mark.parametrize("batch", [1023, 1100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
def test_cpu_blocks(batch, dtype, ids):
    """From 1024 rows with both weights the C++ kernel runs in blocks of 128 rows (a last block of
    76 rows here): the forward pools, projects (one GEMM per side) and combines a block at a
    time, the backward forms a block's d_proj, d_pooled and sequence gradient; below, each pass
    runs on the whole batch.  Both match the reference, gradients (tables, weights, biases)
    included.  The blocks are fixed and each block's GEMM is
    single-threaded, so a blocked forward gives the same outputs on one thread as on several
    (the whole-batch GEMMs, and the weight gradients' GEMMs, are MKL's to split)."""
    case = make_case(batch=batch, seq_len=3, user_dim=40, h_mf=24, h_mlp=16, dtype=dtype, user_ids=ids, item_ids=ids,
                     mask="empty_rows", num_user_rows=300, num_item_rows=200)
    if dtype == torch.float32:
        check_parity(case, "cpu")
    else:
        assert_flash_attention_rule(case, "cpu")
    threads = torch.get_num_threads()
    try:
        got = run(case, "cpu")
        torch.set_num_threads(1)
        single = run(case, "cpu")
    finally:
        torch.set_num_threads(threads)
    if batch >= 1024:
        for name in ("gmf", "mlp_in"):
            assert torch.equal(got[name], single[name]), name


@pytest.mark.skipif(_library.EXTENSION_ERROR is not None, reason=str(_library.EXTENSION_ERROR))
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_cpu_sides_projected_at_once_match_one_after_the_other(grad):
    """At serving batch sizes the C++ kernel runs the user and item GEMMs on two threads at once
    (each worker given the caller's thread-local state); on one thread it runs them in turn.
    Each GEMM is single-threaded either way, so the two agree bit for bit, gradients included,
    and a no_grad call records nothing."""
    case = make_case(batch=16, seq_len=10, user_dim=128, h_mf=64, h_mlp=64, user_ids=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.set_grad_enabled(grad):
            at_once = run(case, "cpu") if grad else run_forward(case, "cpu")
        torch.set_num_threads(1)
        with torch.set_grad_enabled(grad):
            in_turn = run(case, "cpu") if grad else run_forward(case, "cpu")
    finally:
        torch.set_num_threads(threads)
    assert at_once.keys() == in_turn.keys()
    for name in at_once:
        assert torch.equal(at_once[name], in_turn[name]), name
    if not grad:  # the saved projections too: a worker without the caller's state would record autograd
        args = (*case.args(), True)
        torch.set_num_threads(2)
        try:
            with torch.no_grad():
                outputs = _library._kernel_call(*args)
        finally:
            torch.set_num_threads(threads)
        assert not any(t.requires_grad for t in outputs), [t.requires_grad for t in outputs]


def run_forward(case, backend):
    """``{"gmf", "mlp_in"}`` of one call, no backward."""
    gmf, mlp_in = neumf_fast.neumf_input(case.user, case.item, backend=backend, **case.kwargs)
    return {"gmf": gmf, "mlp_in": mlp_in}
