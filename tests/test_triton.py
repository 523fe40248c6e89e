"""``backend="triton"`` against the reference, forward and backward.

On a machine without CUDA these run on CPU tensors under ``TRITON_INTERPRET=1`` (set in
conftest.py), which is slow, so the shapes are small but still odd-sized (1, 3, 37, 1000 rows;
widths 3 and 37, never a multiple of the 16-wide tiles).  On a GPU the same cases run on CUDA.

Tolerances (as tests/test_parity.py, which explains them): float32 atol = rtol = 2e-5 normwise;
float16 by flash-attention's rule (kernel error against the float64 truth at most 2x PyTorch's
own float16 error, plus one float16 eps of the largest magnitude).  The interpreter has no
bfloat16 arithmetic, so bfloat16 runs only on a GPU.
"""

from __future__ import annotations

import pytest
import torch

import neumf_fast
from conftest import (SIZE_CASES, assert_backward_ignores_autocast, assert_close, assert_flash_attention_rule,
                      make_case, run, sized_case)
from neumf_fast.ops import BackendUnavailable, _id_check, check_inputs, select_backend
from neumf_fast.ops.dispatch import BACKENDS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_probe = make_case(batch=1, seq_len=1, user_dim=3, h_mf=1, h_mlp=1).on(DEVICE)
REASONS = BACKENDS["triton"].not_supported_reasons(check_inputs(_probe.args()))
pytestmark = pytest.mark.skipif(bool(REASONS), reason="; ".join(REASONS))


def parity(case, atol=2e-5):
    case = case.on(DEVICE)
    assert_close(run(case, "triton"), run(case, "torch"), atol=atol, rtol=atol)


@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("mask", ["none", "random", "empty_rows", "all"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_masks_and_modes(user_ids, mask, mode):
    case = make_case(batch=7, seq_len=5, user_dim=37, h_mf=3, h_mlp=5, h_mlp_item=3, user_ids=user_ids,
                     item_ids=user_ids, mode=mode, mask=mask)  # "all": every position masked
    parity(case)


@pytest.mark.parametrize("batch,seq_len,user_dim,item_dim,h_mf,h_mlp,h_mlp_item", SIZE_CASES)
@pytest.mark.parametrize("project,bias", [(True, True), (True, False), (False, False)], ids=["bias", "nobias", "noproj"])
@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
def test_sizes_and_projection(batch, seq_len, user_dim, item_dim, h_mf, h_mlp, h_mlp_item, project, bias, user_ids):
    parity(sized_case(batch, seq_len, user_dim, item_dim, h_mf, h_mlp, h_mlp_item, project=project, bias=bias,
                      user_ids=user_ids))


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("padding_idx", [0, 29, -1])
def test_ids_index_dtypes_and_padding(index_dtype, padding_idx):
    case = make_case(batch=9, seq_len=6, user_dim=5, h_mf=2, h_mlp=3, user_ids=True, item_ids=True,
                     padding_idx=padding_idx, mode="mean", mask="empty_rows", num_user_rows=30)
    case.user, case.item = case.user.to(index_dtype), case.item.to(index_dtype)
    parity(case)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "sorted"])
def test_table_gradient_modes(deterministic):
    """Atomic scatter and the sort-based segment sum both match the reference; the latter is
    bitwise reproducible.  Few rows, many repeats: every row collects many contributions."""
    case = make_case(batch=40, seq_len=9, user_dim=6, h_mf=2, h_mlp=3, user_ids=True, item_ids=True,
                     num_user_rows=5, num_item_rows=3).on(DEVICE)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        first = run(case, "triton")
        second = run(case, "triton")
    finally:
        torch.use_deterministic_algorithms(previous)
    assert_close(first, run(case, "torch"), atol=2e-5, rtol=2e-5)
    if deterministic:
        for name in ("grad_user_table", "grad_item_table"):
            assert torch.equal(first[name], second[name]), name


LOW = [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("project", [True, False], ids=["proj", "noproj"])
def test_reduced_precision(dtype, user_ids, project):
    low = make_case(batch=37, seq_len=5, user_dim=37, h_mf=3 if project else 16, h_mlp=37, h_mlp_item=3,
                    user_ids=user_ids, item_ids=user_ids, project=project, mode="mean", dtype=dtype).on(DEVICE)
    assert_flash_attention_rule(low, "triton")


def test_non_contiguous_inputs():
    case = make_case(batch=6, seq_len=4, user_dim=8, h_mf=4, h_mlp=4, mask="random").on(DEVICE)
    strided = make_case(batch=6, seq_len=4, user_dim=8, h_mf=4, h_mlp=4, mask="random").on(DEVICE)
    with torch.no_grad():
        strided.user = case.user.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
        strided.item = torch.cat([case.item.detach(), case.item.detach()], 1)[:, :8].requires_grad_()
        strided.kwargs["user_weight"] = case.kwargs["user_weight"].detach().t().contiguous().t().requires_grad_()
    assert not strided.user.is_contiguous() and not strided.item.is_contiguous()
    assert_close(run(strided, "triton"), run(case, "torch"), atol=2e-5, rtol=2e-5)


def test_inference_saves_nothing_and_matches():
    case = make_case(batch=5, seq_len=3, user_dim=6, h_mf=2, h_mlp=3, requires_grad=False).on(DEVICE)
    gmf, mlp_in, *saved = torch.ops.neumf_fast.triton_fused_input(*case.args(h_mf=2, mode="sum"), False)
    assert all(t.numel() == 0 for t in saved)
    ref_gmf, ref_mlp = neumf_fast.reference.neumf_input(case.user, case.item, **case.kwargs)
    torch.testing.assert_close(gmf, ref_gmf, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(mlp_in, ref_mlp, atol=2e-5, rtol=2e-5)


def test_opcheck():
    case = make_case(batch=4, seq_len=3, user_dim=5, h_mf=2, h_mlp=3, user_ids=True, item_ids=False).on(DEVICE)
    args = (*case.args(h_mf=2, mode="mean"), True)
    # Under the interpreter the kernel runs even on FakeTensors (it reads their storage), so the
    # fake-tensor and AOT checks run on a GPU only.
    utils = ("test_schema", "test_autograd_registration")
    if DEVICE == "cuda":
        utils += ("test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.neumf_fast.triton_fused_input.default, args, test_utils=utils)


@pytest.fixture
def clean_id_check():
    yield
    _id_check.reset()  # a failed test must not leave a recorded bad id for the next one


def _bad_id_case(side):
    """A case with one bad id (user 10 of 10 rows at [1, 0], or item -3 of 7 rows), and the
    reference's view of what the kernels compute for it: the bad position read as padding (user)
    or as an all-zero row (item)."""
    case = make_case(batch=3, seq_len=2, user_dim=5, h_mf=2, h_mlp=2, user_ids=True, item_ids=True,
                     num_user_rows=10, num_item_rows=7, padding_idx=0, mode="mean", requires_grad=False).on(DEVICE)
    expected = make_case(batch=3, seq_len=2, user_dim=5, h_mf=2, h_mlp=2, user_ids=True, item_ids=True,
                         num_user_rows=10, num_item_rows=7, padding_idx=0, mode="mean", requires_grad=False).on(DEVICE)
    if side == "user":
        case.user[1, 0] = 10
        expected.user[1, 0] = 0  # the padding id
        return case, expected, "user id 10 is out of range for a table with 10 rows"
    case.item[2] = -3
    table = expected.kwargs["item_table"]
    expected.kwargs["item_table"] = torch.cat([table, torch.zeros_like(table[:1])])
    expected.item[2] = table.shape[0]
    return case, expected, "item id -3 is out of range for a table with 7 rows"


@pytest.mark.parametrize("check", ["deferred", "sync"])
@pytest.mark.parametrize("side", ["user", "item"])
def test_bad_ids_raise_in_each_check_mode(check, side, monkeypatch, clean_id_check):
    """``sync``: the IndexError at the call.  ``deferred``: the call returns what the reference
    computes with the bad position dropped (nothing read out of bounds), the next call raises,
    and the call after that is right again (the error buffer was reset)."""
    monkeypatch.setenv("NEUMF_FAST_CHECK_IDS", check)
    case, expected, message = _bad_id_case(side)
    good = make_case(batch=4, seq_len=2, user_dim=5, h_mf=2, h_mlp=2, user_ids=True, item_ids=True,
                     num_user_rows=10, num_item_rows=7, requires_grad=False).on(DEVICE)
    bad_call = lambda: neumf_fast.neumf_input(case.user, case.item, backend="triton", **case.kwargs)
    good_call = lambda: neumf_fast.neumf_input(good.user, good.item, backend="triton", **good.kwargs)
    if check == "sync":
        with pytest.raises(IndexError, match=message):
            bad_call()
    else:
        got = bad_call()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        want = neumf_fast.reference.neumf_input(expected.user, expected.item, **expected.kwargs)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, atol=2e-5, rtol=2e-5)
        with pytest.raises(IndexError, match=message):
            good_call()
    for a, e in zip(good_call(), neumf_fast.reference.neumf_input(good.user, good.item, **good.kwargs)):
        torch.testing.assert_close(a, e, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "sorted"])
def test_backward_of_a_bad_id_scatters_nothing_out_of_range(deterministic, monkeypatch, clean_id_check):
    """The table gradient of a call with a bad id is the reference's with that position dropped,
    in both table-gradient modes; the error comes from the backward (CPU: the copy has landed)
    or the next forward, and only once."""
    case, expected, message = _bad_id_case("user")
    for c in (case, expected):
        c.kwargs["user_table"].requires_grad_()
        c.kwargs["item_table"].requires_grad_()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        gmf, mlp_in = neumf_fast.neumf_input(case.user, case.item, backend="triton", **case.kwargs)
        raised = 0
        try:
            (gmf.sum() + 2 * mlp_in.sum()).backward()
        except IndexError as e:
            assert message in str(e)
            raised += 1
            # the backward stopped before computing: run the kernels again, now without the report
            gmf, mlp_in = neumf_fast.neumf_input(case.user, case.item, backend="triton", **case.kwargs)
            _id_check.reset()
            (gmf.sum() + 2 * mlp_in.sum()).backward()
        _id_check.reset()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert raised == (0 if DEVICE == "cuda" else 1)
    ref_gmf, ref_mlp = neumf_fast.reference.neumf_input(expected.user, expected.item, **expected.kwargs)
    (ref_gmf.sum() + 2 * ref_mlp.sum()).backward()
    for name in ("user_table", "item_table"):
        torch.testing.assert_close(case.kwargs[name].grad, expected.kwargs[name].grad, atol=2e-5, rtol=2e-5)


def test_check_mode_must_be_known(monkeypatch):
    monkeypatch.setenv("NEUMF_FAST_CHECK_IDS", "fatal")
    case = make_case(batch=2, seq_len=2, user_dim=4, h_mf=2, h_mlp=2, user_ids=True).on(DEVICE)
    with pytest.raises(ValueError, match=r"NEUMF_FAST_CHECK_IDS must be one of \('deferred', 'sync'\), got 'fatal'"):
        neumf_fast.neumf_input(case.user, case.item, backend="triton", **case.kwargs)


def test_unsupported_dtype():
    wide = make_case(batch=3, seq_len=2, user_dim=4, h_mf=2, h_mlp=2, dtype=torch.float64).on(DEVICE)
    with pytest.raises(BackendUnavailable, match="not float64"):
        neumf_fast.neumf_input(wide.user, wide.item, backend="triton", **wide.kwargs)


def test_auto_takes_triton_for_eager_cuda_calls_only_without_the_cuda_kernels():
    """Eager calls on CUDA tensors: the CUDA kernels where built (no first-call compile), else
    Triton; never Triton for CPU tensors (tests/test_dispatch.py checks the orders themselves)."""
    from neumf_fast.ops import _library

    case = make_case(batch=2, seq_len=2, user_dim=4, h_mf=2, h_mlp=2).on(DEVICE)
    dims = check_inputs(case.args())
    expected = ("cuda" if _library.CUDA_KERNELS_BUILT else "triton") if DEVICE == "cuda" else None
    chosen = select_backend(dims, "auto").name
    assert chosen == expected if expected else chosen != "triton", chosen


@pytest.mark.skipif(DEVICE != "cuda", reason="torch.compile of a Triton kernel needs a GPU")
@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
def test_compile_fullgraph_keeps_the_kernel(user_ids):
    case = make_case(batch=33, seq_len=5, user_dim=37, h_mf=3, h_mlp=5, user_ids=user_ids, item_ids=user_ids).on(DEVICE)
    fn = lambda u, i, kw: neumf_fast.neumf_input(u, i, backend="triton", **kw)
    eager = run(case, "triton")
    compiled_fn = torch.compile(fn, fullgraph=True)
    gmf, mlp_in = compiled_fn(case.user, case.item, case.kwargs)
    torch.testing.assert_close(gmf, eager["gmf"], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(mlp_in, eager["mlp_in"], atol=2e-5, rtol=2e-5)


# Compiling for real GPUs (sm_80, sm_90) and reading the SASS: tests/test_gpu_offline.py.


def test_backward_inside_autocast_keeps_float32_gradients():
    """A float32 call whose backward runs inside ``torch.autocast`` gets the gradients it gets
    outside it, bit for bit (``assert_backward_ignores_autocast``): Triton's weight-gradient GEMM
    on the saved fp32 tensors is not turned bf16 by autocast."""
    assert_backward_ignores_autocast(make_case(batch=37, seq_len=3, user_dim=16, h_mf=8, h_mlp=8), "triton", DEVICE)
