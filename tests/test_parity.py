"""Every kernel backend against the reference (neumf_fast.reference), forward and backward.

Each case runs on every target of the ``backend`` fixture (tests/conftest.py, ``TARGETS``):
``cpu`` (the C++ kernel), ``triton-interpret`` (the Triton kernels on CPU tensors under
``TRITON_INTERPRET=1``), ``cuda-emu`` (the CUDA sources built for the CPU emulator,
tests/cuda_emu), and on a GPU ``triton-cuda`` and ``cuda``.  A target that cannot run here, or
cannot run a case's dtype (Triton: no float64; the interpreter: no bfloat16), is skipped with
its backend's own reasons.  The backend files keep what is unique to a backend:
tests/test_triton.py (id checks, opcheck, torch.compile) and tests/test_cuda.py (nvcc and SASS,
the emulator's counters and compute capability, the id record, CUDA graphs).

Shapes: the interpreter and the emulator run one Python program or OS thread per CUDA thread,
so a batch-1000 case there costs seconds (``Target.shape``: batch 1000 keeps at most 2
positions, a longer sequence runs at batch 37), and a test whose cases are all large names a
smaller shape for them (``backend.slow``).  The odd sizes (batch 0, 1, 3, 37, 1000; widths 3, 37,
128; never a multiple of a tile) run on every target.

Tolerances:
- float32: atol = rtol = 2e-5 against the float32 reference, atol relative to the tensor's
  largest entry (conftest.assert_close).  The two implementations sum in different orders
  (per-row vector accumulation vs. torch's reductions, GEMMs over up to 1000 rows), which
  moves the result by ~sqrt(n) ulps (float32 eps 1.2e-7) of the terms summed; 2e-5 is ~100
  ulps, well below any real error (a wrong row or a missed mask moves an output by O(1)).
- float64: atol = rtol = 1e-10 (same argument with eps 2.2e-16).
- bfloat16 / float16 (flash-attention's rule, conftest.assert_flash_attention_rule): the
  kernel's max error against the float64 reference of the same (rounded) inputs must be at most
  2x the error of the PyTorch reference computed in that dtype, plus one unit of that dtype's
  eps times the largest magnitude (so an output that both compute exactly must still match to
  the last bit of precision).
- TF32 (float32 with ``allow_tf32``, which the GPU kernels may then use): 2e-3 normwise, about
  four TF32 rounding units (2^-11) of the largest output.
"""

from __future__ import annotations

import pytest
import torch

import neumf_fast
from neumf_fast.ops import _library

from conftest import (assert_backward_ignores_autocast, assert_close, assert_flash_attention_rule, make_case,
                      make_target, popular_id_case, run, saved_shapes)

DIRECT_TOL = {torch.float32: 2e-5, torch.float64: 1e-10}
TF32_TOL = 2e-3
SIDES = pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
PROJECTIONS = pytest.mark.parametrize("project,bias", [(True, True), (True, False), (False, False)],
                                      ids=["bias", "nobias", "noproj"])


def source_dtype(case) -> torch.dtype:
    return case.kwargs["user_table"].dtype if case.kwargs.get("user_table") is not None else case.user.dtype


def check_parity(case, backend, *, backward: bool = True) -> None:
    """``case`` on ``backend``'s device against the reference there, at its dtype's tolerance."""
    dtype = source_dtype(case)
    backend.require(dtype)
    case = case.on(backend.device)
    if dtype not in DIRECT_TOL:
        assert_flash_attention_rule(case, backend.op, backward=backward)
        return
    tol = DIRECT_TOL[dtype]
    assert_close(run(case, backend.op, backward=backward), run(case, "torch", backward=backward), atol=tol, rtol=tol)


@SIDES
@pytest.mark.parametrize("seq_len", [1, 10, 33])
@pytest.mark.parametrize("batch", [0, 1, 7, 1000])
def test_batch_and_length(backend, batch, seq_len, user_ids):
    batch, seq_len = backend.shape(batch, seq_len)
    case = make_case(batch=batch, seq_len=seq_len, user_ids=user_ids, item_ids=user_ids, mask="empty_rows",
                     num_user_rows=300, num_item_rows=200)
    check_parity(case, backend)


# (batch, seq_len, user_dim, item_dim, h_mf, h_mlp_user, h_mlp_item): the widths 3, 37 and 128
# at batch 37; odd sizes, none a multiple of a tile; D = 128 with H over 64 (more than one K tile
# and one output step of the CUDA GEMM).
SIZES = [
    (37, 10, 3, 3, 3, 3, 3), (37, 10, 37, 3, 3, 37, 5), (37, 10, 128, 37, 37, 128, 3), (37, 10, 3, 128, 128, 3, 37),
    (37, 10, 37, 37, 0, 37, 3),
    (0, 3, 3, 3, 3, 3, 3), (1, 1, 3, 3, 3, 3, 3), (3, 7, 37, 3, 3, 37, 5), (37, 3, 3, 37, 37, 3, 1),
    (37, 2, 37, 37, 0, 37, 3), (1000, 2, 3, 3, 1, 3, 2),
    (33, 2, 128, 37, 64, 70, 1),
]


@SIDES
@PROJECTIONS
@pytest.mark.parametrize("batch,seq_len,user_dim,item_dim,h_mf,h_mlp,h_mlp_item", SIZES)
def test_sizes_and_projection(backend, batch, seq_len, user_dim, item_dim, h_mf, h_mlp, h_mlp_item, project, bias,
                              user_ids):
    """Ids on one side, dense on the other; with no projection the pooled vectors are split as
    [mf | mlp], so h_mf is cut to fit both sides."""
    if not project:
        h_mf = min(h_mf, user_dim, item_dim)
    case = make_case(batch=batch, seq_len=seq_len, user_dim=user_dim, item_dim=item_dim, h_mf=h_mf, h_mlp=h_mlp,
                     h_mlp_item=h_mlp_item, user_ids=user_ids, item_ids=not user_ids, project=project, bias=bias,
                     num_user_rows=30, num_item_rows=20)
    check_parity(case, backend)


@SIDES
@pytest.mark.parametrize("mask", ["none", "random", "empty_rows", "all"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_masks_and_modes(backend, user_ids, mask, mode):
    """``"all"``: every position masked (pooled zeros, never NaN).  Slow targets: 7 rows of 35
    positions (over one 32-position chunk) instead of 37 of 33."""
    batch, seq_len = (7, 35) if backend.slow else (37, 33)
    case = make_case(batch=batch, seq_len=seq_len, user_ids=user_ids, item_ids=user_ids, mode=mode, mask=mask,
                     h_mlp_item=3)
    expected = run(case, "torch")
    assert all(torch.isfinite(t).all() for t in expected.values())
    check_parity(case, backend)


@SIDES
def test_rows_too_wide_for_shared_memory(backend, user_ids):
    """D = 1800: on CUDA the [32, D] pooled tile needs more than the 227 KiB of shared memory a
    block may have, so the pooling kernel, a cuBLAS GEMM and the epilogue kernel run instead."""
    case = make_case(batch=5, seq_len=3, user_dim=1800, item_dim=1800, h_mf=4, h_mlp=4, user_ids=user_ids,
                     item_ids=user_ids, mode="mean")
    check_parity(case, backend)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("padding_idx", [0, 29, -1])
def test_ids_index_dtypes_and_padding(backend, index_dtype, padding_idx):
    """The padding id may be any value: the first row, the last (29 of 30), or one outside the
    table (-1)."""
    case = make_case(batch=9, seq_len=6, user_dim=5, h_mf=2, h_mlp=3, user_ids=True, item_ids=True,
                     padding_idx=padding_idx, mode="mean", mask="empty_rows", num_user_rows=30)
    case.user, case.item = case.user.to(index_dtype), case.item.to(index_dtype)
    check_parity(case, backend)


def test_repeated_ids_accumulate(backend):
    """The same id many times in a row and across rows: the table gradient sums them all."""
    check_parity(make_case(user_ids=True, item_ids=True, mask="none", num_user_rows=2, num_item_rows=1, batch=50),
                 backend)


def check_table_gradients(case, backend, deterministic: bool) -> None:
    """Two runs in the given table-gradient mode match the reference, and are bitwise equal when
    deterministic (the sorted segment sums of the GPU kernels; the C++ kernel always is)."""
    case = case.on(backend.device)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        first, second = run(case, backend.op), run(case, backend.op)
    finally:
        torch.use_deterministic_algorithms(previous)
    tol = DIRECT_TOL[torch.float32]
    assert_close(first, run(case, "torch"), atol=tol, rtol=tol)
    if deterministic:
        for name in ("grad_user_table", "grad_item_table"):
            assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "sorted"])
def test_table_gradient_modes(backend, deterministic):
    """Few rows, many repeats: every row collects many contributions."""
    case = make_case(batch=40, seq_len=9, user_dim=6, h_mf=2, h_mlp=3, user_ids=True, item_ids=True,
                     num_user_rows=5, num_item_rows=3, mode="mean")
    check_table_gradients(case, backend, deterministic)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "sorted"])
def test_a_popular_id_spread_over_many_chunks(backend, deterministic):
    check_table_gradients(popular_id_case(backend.device), backend, deterministic)


@SIDES
def test_float64(backend, user_ids):
    check_parity(make_case(batch=37, seq_len=5, user_dim=37, h_mf=3, h_mlp=37, h_mlp_item=3, user_ids=user_ids,
                           item_ids=user_ids, mode="mean", dtype=torch.float64), backend)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@SIDES
@pytest.mark.parametrize("project", [True, False], ids=["proj", "noproj"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_reduced_precision(backend, dtype, user_ids, project, mode):
    """On CUDA on tensor cores (WMMA).  Slow targets: 37 rows of 5 positions at width 37
    instead of 100 of 10 at width 128."""
    if backend.slow:
        shape = dict(batch=37, seq_len=5, user_dim=37, h_mf=3 if project else 16, h_mlp=37)
    else:
        shape = dict(batch=100, seq_len=10, user_dim=128, h_mf=37, h_mlp=128)
    check_parity(make_case(**shape, h_mlp_item=3, user_ids=user_ids, item_ids=user_ids, project=project, mode=mode,
                           dtype=dtype), backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("batch", [1, 37, 1000])
@PROJECTIONS
@SIDES
def test_inference_forward(backend, dtype, batch, project, bias, user_ids):
    """An inference call (under no_grad: the op runs with save=False, its kernels write nothing
    for backward), at serving batch sizes (where the C++ kernel runs the two sides' GEMMs at
    once) and above (``Target.shape``)."""
    batch, seq_len = backend.shape(batch, 10)
    case = make_case(batch=batch, seq_len=seq_len, user_dim=128 if batch < 1000 else 37, h_mf=37, h_mlp=64,
                     h_mlp_item=3, user_ids=user_ids, item_ids=user_ids, project=project, bias=bias, dtype=dtype)
    check_parity(case, backend, backward=False)


def test_inference_saves_nothing_and_matches(backend):
    """The raw forward with save=False returns empty saved tensors and the right outputs."""
    case = make_case(batch=5, seq_len=3, user_dim=6, h_mf=2, h_mlp=3, user_ids=True, requires_grad=False)
    case = case.on(backend.device)
    gmf, mlp_in, *saved = backend.kernels.forward(*case.args(), False)
    assert all(t.numel() == 0 for t in saved), [t.shape for t in saved]
    tol = DIRECT_TOL[torch.float32]
    assert_close({"gmf": gmf, "mlp_in": mlp_in}, run(case, "torch", backward=False), atol=tol, rtol=tol)


@pytest.mark.parametrize("project", [True, False], ids=["weights", "no-weights"])
@pytest.mark.parametrize("user_dim", [6, 1800], ids=["fused", "unfused"])
def test_training_saves_only_what_the_backward_reads(backend, project, user_dim):
    """The pooled rows only for a side with a weight, and the [B, h_mf] MF halves, equal to the
    reference's (on 1847267 the CUDA kernels saved the full [B, H] projections and the pooled
    rows of both sides)."""
    case = make_case(batch=5, seq_len=3, user_dim=user_dim, item_dim=user_dim, h_mf=2, h_mlp=3, user_ids=True,
                     project=project, requires_grad=False).on(backend.device)
    gmf, mlp_in, *saved = backend.kernels.forward(*case.args(), True)
    assert [tuple(t.shape) for t in saved] == saved_shapes(case, 2)
    kw, ref = case.kwargs, neumf_fast.reference
    for mf, pooled, weight, bias in [
            (saved[2], ref.pool_user(case.user, None, kw["user_table"], kw["padding_idx"]), "user_weight", "user_bias"),
            (saved[3], case.item, "item_weight", "item_bias")]:
        proj = ref.project(pooled, kw.get(weight), kw.get(bias))
        torch.testing.assert_close(mf, proj[:, :2], atol=2e-5, rtol=2e-5)


def test_tf32_when_allowed(backend):
    case = make_case(batch=37, seq_len=5, user_dim=37, h_mf=3, h_mlp=37, h_mlp_item=3).on(backend.device)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        tf32 = run(case, backend.op)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert_close(tf32, run(case, "torch"), atol=TF32_TOL, rtol=TF32_TOL)


def test_non_contiguous_inputs(backend):
    """Non-contiguous inputs (mask included) are handled, with the same results."""
    case = make_case(batch=20, seq_len=6, user_dim=8, h_mf=4, h_mlp=4).on(backend.device)
    strided = make_case(batch=20, seq_len=6, user_dim=8, h_mf=4, h_mlp=4).on(backend.device)
    with torch.no_grad():
        strided.user = case.user.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
        strided.item = torch.cat([case.item.detach(), case.item.detach()], 1)[:, :8].requires_grad_()
        strided.kwargs["user_weight"] = case.kwargs["user_weight"].detach().t().contiguous().t().requires_grad_()
        strided.kwargs["user_mask"] = case.kwargs["user_mask"].t().contiguous().t()
    assert not strided.user.is_contiguous() and not strided.item.is_contiguous()
    assert_close(run(strided, backend.op), run(case, "torch"), atol=2e-5, rtol=2e-5)


@SIDES
def test_inputs_off_a_16_byte_boundary(backend, user_ids):
    """Contiguous views that start one element into their storage cannot take 16-byte loads:
    the kernels must notice and fall back to element loads (the emulator fails any misaligned
    vector access, as the GPU would)."""
    case = make_case(batch=5, seq_len=4, user_dim=8, h_mf=4, h_mlp=4, user_ids=user_ids,
                     item_ids=user_ids).on(backend.device)

    def shifted(t):
        flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        view = flat[1:].view(t.shape)
        with torch.no_grad():
            view.copy_(t)
        return view.detach().requires_grad_(t.requires_grad)

    moved = case.to(torch.float32)  # fresh leaves, same values
    if user_ids:
        moved.kwargs["user_table"], moved.kwargs["item_table"] = (shifted(case.kwargs["user_table"]),
                                                                  shifted(case.kwargs["item_table"]))
    else:
        moved.user, moved.item = shifted(case.user), shifted(case.item)
    assert moved.float_inputs()["user_table" if user_ids else "user"].data_ptr() % 16 != 0
    assert_close(run(moved, backend.op), run(case, "torch"), atol=2e-5, rtol=2e-5)


@SIDES
def test_backward_inside_autocast_keeps_float32_gradients(backend, user_ids):
    """``assert_backward_ignores_autocast``: the kernels' own GEMMs on their saved fp32 tensors
    are not turned bf16 by autocast."""
    case = make_case(batch=37, seq_len=3, user_dim=16, h_mf=8, h_mlp=8, user_ids=user_ids, item_ids=user_ids)
    assert_backward_ignores_autocast(case, backend.op, backend.device)


# --- The C++ CPU kernel only: its threads and its table-gradient strategies -------------------

@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
def test_deterministic_table_gradient(backend):
    """The table gradient is a fixed-order reduction: bitwise equal across runs and thread counts."""
    case = make_case(batch=500, seq_len=20, user_ids=True, item_ids=True, num_user_rows=7, num_item_rows=3)
    threads = torch.get_num_threads()
    try:
        first = run(case, backend.op)
        torch.set_num_threads(1)
        single = run(case, backend.op)
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
    check_parity(case, make_target("cpu", None))  # the C++ kernel's own paths


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
        check_parity(case, make_target("cpu", None))  # the C++ kernel's own paths
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
def test_cpu_serving_batch_does_not_depend_on_the_thread_count(grad):
    """At serving batch sizes the C++ kernel's GEMMs are single-threaded whatever the thread
    count, so one and two threads agree bit for bit, gradients included, and a no_grad call
    records nothing."""
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
    if not grad:  # the saved tensors too: nothing recorded for autograd
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
