"""What only ``backend="triton"`` has: its parity with the reference runs in
tests/test_parity.py, on the ``triton-interpret`` target (CPU tensors under
``TRITON_INTERPRET=1``, set in conftest.py) without a GPU and ``triton-cuda`` on one.  Here: the
bad-id check modes and the backward of a bad id, opcheck, the dtype it refuses, what "auto"
takes, and on a GPU torch.compile with the kernels kept in the graph; for ``table_update_``
(parity: tests/test_table_update.py), opcheck, a bad id, float64 and its argument checks.

Tolerances as tests/test_parity.py states them: float32 atol = rtol = 2e-5 normwise.
"""

from __future__ import annotations

import pytest
import torch

import neumf_fast
from conftest import make_case, run
from neumf_fast.ops import BackendUnavailable, _id_check, _library, check_inputs, select_backend, triton_backend
from neumf_fast.ops.dispatch import BACKENDS
from neumf_fast.ops.table_update import new_state

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_probe = make_case(batch=1, seq_len=1, user_dim=3, h_mf=1, h_mlp=1).on(DEVICE)
REASONS = BACKENDS["triton"].not_supported_reasons(check_inputs(_probe.args()))
pytestmark = pytest.mark.skipif(bool(REASONS), reason="; ".join(REASONS))


def test_opcheck():
    case = make_case(batch=4, seq_len=3, user_dim=5, h_mf=2, h_mlp=3, user_ids=True, item_ids=False).on(DEVICE)
    args = (*case.args(h_mf=2, mode="mean"), True)
    # Under the interpreter the kernel runs even on FakeTensors (it reads their storage), so the
    # fake-tensor and AOT checks run on a GPU only.
    utils = ("test_schema", "test_autograd_registration")
    if DEVICE == "cuda":
        utils += ("test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.neumf_fast.triton_fused_input.default, args, test_utils=utils)


def _update_args(optimizer="adam", dtype=torch.float32):
    """A small ``table_update_`` call (10 x 4 table, ids [6, 2] with padding 0, the state at step
    4) as the op's arguments; tests/test_table_update.py has the parity cases."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(10, 4, generator=g).to(dtype)
    moment1, moment2, step = new_state(optimizer, table)
    moment2.fill_(0.5)
    step.fill_(4)
    ids, grad = torch.randint(0, 10, (6, 2), generator=g), torch.randn(6, 4, generator=g).to(dtype)
    tensors = [t.to(DEVICE) for t in (table, moment1, moment2, step, ids, grad)]
    return (*tensors, 0, optimizer, 0.05, 0.9, 0.99, 1e-8, 0.01)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rowwise_adagrad"])
def test_opcheck_table_update(optimizer):
    utils = ("test_schema", "test_autograd_registration")
    if DEVICE == "cuda":  # the interpreter runs even under FakeTensors (wrap_triton hands it the kernel)
        utils += ("test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.neumf_fast.triton_table_update_.default, _update_args(optimizer),
                          test_utils=utils)


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


@pytest.mark.parametrize("check", ["deferred", "sync"])
@pytest.mark.parametrize("bad_id", [10, -1])
def test_table_update_with_a_bad_id(check, bad_id, monkeypatch, clean_id_check):
    """An id outside the table is never read or written.  CPU tensors (the interpreter) and
    ``sync``: the IndexError at the call, before anything changes.  ``deferred`` on a GPU: the
    call updates the other rows as if the id were padding, and the next call raises."""
    monkeypatch.setenv("NEUMF_FAST_CHECK_IDS", check)
    args = _update_args()
    args[4][1, 1] = bad_id  # ids; the table has 10 rows
    before = [t.clone() for t in args[:4]]
    if DEVICE == "cpu" or check == "sync":
        with pytest.raises(IndexError, match=f"table_update id {bad_id} is out of range for a table with 10 rows"):
            triton_backend.table_update_(*args)
        for name, t, b in zip(("table", "moment1", "moment2", "step"), args[:4], before):
            assert torch.equal(t, b), name
        return
    triton_backend.table_update_(*args)
    expected = _update_args()
    expected[4][1, 1] = 0  # the padding id
    neumf_fast.reference.table_update_(*expected)
    for t, e in zip(args[:4], expected[:4]):
        torch.testing.assert_close(t, e, atol=1e-5, rtol=1e-5)
    torch.cuda.synchronize()  # the record's copy has landed: the next call reports it
    with pytest.raises(IndexError, match=f"id {bad_id} is out of range for a table with 10 rows"):
        triton_backend.table_update_(*_update_args())


def test_table_update_refuses_float64():
    with pytest.raises(RuntimeError, match="backend 'triton' cannot update this table: .*not float64"):
        triton_backend.table_update_(*_update_args(dtype=torch.float64))


_BAD_UPDATES = {  # name: (change to the call, exception); the C++ op raises the same
    "optimizer": (lambda a: a.__setitem__(7, "lamb"), ValueError),
    "table": (lambda a: a.__setitem__(0, a[0].t()), ValueError),
    "ids": (lambda a: a.__setitem__(4, a[4].float()), TypeError),
    "grad": (lambda a: a.__setitem__(5, a[5][:3]), ValueError),
    "moment1": (lambda a: a.__setitem__(1, a[1].bfloat16()), TypeError),
    "moment2": (lambda a: a.__setitem__(2, a[2][:5]), ValueError),
    "step": (lambda a: a.__setitem__(3, a[3].int()), TypeError),
    "lr": (lambda a: a.__setitem__(8, -1.0), ValueError),
    "betas": (lambda a: a.__setitem__(10, 1.0), ValueError),
}


@pytest.mark.parametrize("name", _BAD_UPDATES)
def test_table_update_checks_its_arguments_as_the_cpp_op_does(name):
    """The Python check (``check_table_update``) raises what csrc/ops.cpp's does: the same
    exception type, a message naming the same argument and problem (up to how a number prints)."""
    change, exc = _BAD_UPDATES[name]
    args = list(_update_args())
    change(args)
    with pytest.raises(exc, match=name if name != "betas" else "betas in") as python:
        triton_backend.table_update_(*args)
    if _library.EXTENSION_ERROR is None and DEVICE == "cpu":
        with pytest.raises(exc) as cpp:
            torch.ops.neumf_fast.table_update_(*[t.cpu() if isinstance(t, torch.Tensor) else t for t in args])
        assert str(cpp.value).split(" got ")[0] == str(python.value).split(" got ")[0]


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
