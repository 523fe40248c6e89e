"""Bad input gets a clear error naming the argument, on every backend, never a crash or a
silent wrong answer.  The C++ entry points repeat the checks for direct torch.ops callers.

Every test runs on each backend and the device it serves: the reference and the C++ kernel on
the CPU; the CUDA kernels and Triton on a GPU (skipped without one, saying why), and Triton on
CPU tensors under its interpreter here.  On a GPU the process must go on working after each
error: an autouse fixture runs a CUDA op afterwards and checks its result (a C++ error that
crashed the process, or a kernel fault that poisoned the CUDA context, fails there)."""

from __future__ import annotations

import re

import pytest
import torch

import neumf_fast
from neumf_fast.ops import _id_check, _library, dispatch
from neumf_fast.ops.dispatch import unavailable_reasons
from conftest import make_case


def _target(backend: str, device: str):
    """A (backend, device) pair, skipped with the backend's own reasons when it cannot run there."""
    reasons = ["no GPU"] if device == "cuda" and not torch.cuda.is_available() else unavailable_reasons(backend, device)
    return pytest.param((backend, device), id=f"{backend}-{device}",
                        marks=pytest.mark.skipif(bool(reasons), reason="; ".join(reasons)))


TARGETS = [_target("torch", "cpu"), _target("cpu", "cpu"), _target("triton", "cpu"),
           _target("cuda", "cuda"), _target("triton", "cuda")]
KERNEL_TARGETS = TARGETS[1:]  # the ones with a raw op and its own backward


@pytest.fixture(params=TARGETS)
def target(request):
    return request.param


@pytest.fixture(autouse=True)
def process_goes_on(request):
    """After an error test on a GPU backend, the same backend still computes the right answer."""
    yield
    params = getattr(request.node, "callspec", None)
    backend, device = params.params.get("target", ("torch", "cpu")) if params else ("torch", "cpu")
    if device != "cuda":
        return
    case = make_case(batch=5, seq_len=3, user_dim=8, h_mf=2, h_mlp=3, user_ids=True, requires_grad=False).on("cuda")
    got = neumf_fast.neumf_input(case.user, case.item, backend=backend, **case.kwargs)
    want = neumf_fast.reference.neumf_input(case.user, case.item, **case.kwargs)
    torch.cuda.synchronize()
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, atol=2e-5, rtol=2e-5)


def call(case, target):
    backend, device = target
    return neumf_fast.neumf_input(case.user, case.item, backend=backend, **case.kwargs)


def mutate(fn, device="cpu", **make):
    case = make_case(batch=4, seq_len=3, user_dim=5, h_mlp=4, **make).on(device)
    fn(case)
    return case


BAD_METADATA = {
    # name: (case builder kwargs, mutation, exception, (the argument named, the problem stated))
    "user rank": (dict(), lambda c: setattr(c, "user", c.user[0]), ValueError, ("dense user", "[B, L, D]")),
    "id rank": (dict(user_ids=True), lambda c: setattr(c, "user", c.user[:, :, None]), ValueError, ("user ids", "[B, L]")),
    "item rank": (dict(), lambda c: setattr(c, "item", c.item[:, :, None]), ValueError, ("dense item", "[B, D_i]")),
    "item id rank": (dict(item_ids=True), lambda c: setattr(c, "item", c.item[:, None]), ValueError, ("item ids", "[B]")),
    "batch mismatch": (dict(), lambda c: setattr(c, "item", c.item[:3]), ValueError, ("user has 4 rows", "item has 3")),
    "mask shape": (dict(), lambda c: c.kwargs.update(user_mask=c.kwargs["user_mask"][:, :2]), ValueError, ("user_mask", "[B, L]")),
    "mask dtype": (dict(), lambda c: c.kwargs.update(user_mask=c.kwargs["user_mask"].float()), TypeError, ("user_mask", "bool")),
    "user dtype": (dict(), lambda c: setattr(c, "user", c.user.detach().to(torch.uint8)), TypeError, ("user", "float")),
    "item dtype mismatch": (dict(), lambda c: setattr(c, "item", c.item.detach().double()), TypeError, ("item", "torch.float64")),
    "weight dtype mismatch": (dict(), lambda c: c.kwargs.update(user_weight=c.kwargs["user_weight"].detach().half()), TypeError, ("user_weight", "dtype")),
    "table dtype mismatch": (dict(user_ids=True, item_ids=True), lambda c: c.kwargs.update(item_table=c.kwargs["item_table"].detach().double()), TypeError, ("item_table", "dtype")),
    "weight disagrees with D": (dict(), lambda c: c.kwargs.update(user_weight=c.kwargs["user_weight"][:, :4]), ValueError, ("user_weight", "[H_mf + H_mlp, 5]")),
    "item weight disagrees with D_i": (dict(), lambda c: c.kwargs.update(item_weight=c.kwargs["item_weight"][:, :2]), ValueError, ("item_weight", "[H_mf + H_mlp")),
    "bias shape": (dict(), lambda c: c.kwargs.update(user_bias=c.kwargs["user_bias"][:2]), ValueError, ("user_bias", "[7]")),
    "bias without weight": (dict(), lambda c: c.kwargs.update(user_weight=None), ValueError, ("user_bias", "without user_weight")),
    "h_mf too wide": (dict(), lambda c: c.kwargs.update(h_mf=8), ValueError, ("h_mf=8", "must lie in")),
    "mode": (dict(), lambda c: c.kwargs.update(mode="max"), ValueError, ("mode", "one of")),
    "ids without table": (dict(user_ids=True), lambda c: c.kwargs.update(user_table=None), ValueError, ("user ids", "user_table")),
    "mask with ids": (dict(user_ids=True), lambda c: c.kwargs.update(user_mask=torch.ones(4, 3, dtype=torch.bool)), ValueError, ("user_mask", "id input")),
    "padding with dense": (dict(), lambda c: c.kwargs.update(padding_idx=0), ValueError, ("padding_idx", "dense input")),
    "device mismatch": (dict(), lambda c: setattr(c, "item", c.item.detach().to("meta")), ValueError, ("item", "on meta")),
    "weight device mismatch": (dict(), lambda c: c.kwargs.update(user_weight=c.kwargs["user_weight"].detach().to("meta")), ValueError, ("user_weight", "on meta")),
}


def _pattern(named: tuple[str, str]) -> str:
    """What an error must say: the argument, then the problem.  The C++ kernels and the Python
    check word their messages each in their own way; both must name these."""
    argument, problem = named
    return re.escape(argument) + ".*" + re.escape(problem)


@pytest.mark.parametrize("name", BAD_METADATA)
def test_bad_metadata(target, name, monkeypatch):
    """A call is validated by the backend that runs it, its first call of a kind as every later one."""
    make, fn, exc, named = BAD_METADATA[name]
    monkeypatch.setattr(dispatch, "_selected", {})
    bad = mutate(fn, target[1], **make)
    with pytest.raises(exc, match=_pattern(named)):
        call(bad, target)  # nothing selected yet
    call(mutate(lambda c: None, target[1], **make), target)
    with pytest.raises(exc, match=_pattern(named)):
        call(bad, target)  # the selection cached by the good call


@pytest.mark.parametrize("target", KERNEL_TARGETS)
@pytest.mark.parametrize("name", BAD_METADATA)
def test_bad_metadata_in_the_op_itself(target, name):
    """Each kernel's registered op, called directly, raises the same."""
    make, fn, exc, named = BAD_METADATA[name]
    case = mutate(fn, target[1], **make)
    forward, _backward = _raw_ops(target[0])
    with pytest.raises(exc, match=_pattern(named)):
        forward(*case.args(), False)


@pytest.mark.parametrize("check", ["deferred", "sync"])
@pytest.mark.parametrize("side,bad_id", [("user", 50), ("user", -2), ("user", 10**12), ("item", 40), ("item", -1)])
def test_ids_out_of_range(target, side, bad_id, check, monkeypatch):
    """``NEUMF_FAST_CHECK_IDS=sync``, and the CPU backends always: the IndexError at the call.
    ``deferred`` on a GPU backend: no host sync at the call, the IndexError no later than the
    next call (exactly there), and the call after that works."""
    monkeypatch.setenv("NEUMF_FAST_CHECK_IDS", check)
    case = make_case(batch=4, seq_len=3, user_ids=True, item_ids=True, num_user_rows=50, num_item_rows=40,
                     padding_idx=0).on(target[1])
    good = make_case(batch=4, seq_len=3, user_ids=True, item_ids=True, num_user_rows=50, num_item_rows=40,
                     padding_idx=0).on(target[1])
    if side == "user":
        case.user[2, 1] = bad_id
    else:
        case.item[3] = bad_id
    rows = 50 if side == "user" else 40
    match = f"{side}.*id {bad_id} is out of range for a table with {rows} rows"  # the reference says "user ids: id"
    try:
        deferred = check == "deferred" and target[0] in ("triton", "cuda")
        if not deferred:
            with pytest.raises(IndexError, match=match):
                call(case, target)
        else:
            call(case, target)  # neither GPU backend waits for its own kernels to report
            with pytest.raises(IndexError, match=match):
                call(good, target)
        gmf, mlp_in = call(good, target)  # the process goes on, with nothing left to report
        want = neumf_fast.reference.neumf_input(good.user, good.item, **good.kwargs)
        torch.testing.assert_close(gmf, want[0], atol=2e-5, rtol=2e-5)
    finally:
        _id_check.reset()


def test_negative_padding_id_is_not_out_of_range(target):
    case = make_case(batch=4, seq_len=3, user_ids=True, padding_idx=-1, mask="empty_rows").on(target[1])
    call(case, target)  # -1 is the padding id here, so it is skipped, not rejected


def _raw_ops(backend):
    """(forward taking the op's twelve arguments and ``save``, backward taking ... output_mask)."""
    if backend == "triton":
        from neumf_fast.ops import triton_backend  # noqa: F401  (registers the ops)

        ops = torch.ops.neumf_fast
        return (ops.triton_fused_input,
                lambda *a: ops.triton_fused_input_backward(*a, torch.are_deterministic_algorithms_enabled()))
    return torch.ops.neumf_fast.fused_input, torch.ops.neumf_fast.fused_input_backward


@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
def test_backward_refuses_a_forward_that_saved_nothing(backend, user_ids):
    """An inference forward (save=False) returns empty saved tensors; a backward handed them must
    raise, not read past their ends.  On every kernel target of tests/conftest.py (the CUDA
    emulator included); afterwards the same kernels still give the reference's gradients."""
    forward, backward = backend.kernels.forward, backend.kernels.backward
    case = make_case(batch=3, seq_len=2, user_dim=4, h_mf=2, h_mlp=2, user_ids=user_ids, item_ids=user_ids,
                     requires_grad=False).on(backend.device)
    args = case.args()
    gmf, mlp_in, *saved = forward(*args, False)
    with pytest.raises(RuntimeError, match="save=False"):
        backward(torch.ones_like(gmf), torch.ones_like(mlp_in), *args, *saved, [True] * 6)
    gmf, mlp_in, *saved = forward(*args, True)
    grads = backward(torch.ones_like(gmf), torch.ones_like(mlp_in), *args, *saved, [True] * 6)
    sources = case.to(torch.float32)  # the same values as leaves, for the reference's gradients
    leaves = [sources.kwargs["user_table"] if user_ids else sources.user,
              sources.kwargs["item_table"] if user_ids else sources.item] + \
        [sources.kwargs[n] for n in ("user_weight", "user_bias", "item_weight", "item_bias")]
    for t in leaves:
        t.requires_grad_()
    ref_gmf, ref_mlp = neumf_fast.reference.neumf_input(sources.user, sources.item, **sources.kwargs)
    want = torch.autograd.grad((ref_gmf.sum() + ref_mlp.sum(),), leaves)
    for name, got, expected in zip(("user", "item", "user_weight", "user_bias", "item_weight", "item_bias"), grads,
                                   want):
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5, msg=name)


@pytest.mark.parametrize("target", KERNEL_TARGETS)
def test_backward_refuses_gradients_of_the_wrong_shape(target):
    backend, device = target
    forward, backward = _raw_ops(backend)
    case = make_case(batch=3, seq_len=2, user_dim=4, h_mf=2, h_mlp=2, requires_grad=False).on(device)
    args = case.args()
    gmf, mlp_in, *saved = forward(*args, True)
    with pytest.raises(RuntimeError, match="grad_gmf must be"):
        backward(torch.ones(3, 1, device=device), torch.ones_like(mlp_in), *args, *saved, [True] * 6)
    with pytest.raises(RuntimeError, match="grad_mlp_in must be"):
        backward(torch.ones_like(gmf), torch.ones(2, 4, device=device), *args, *saved, [True] * 6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() and _library.CUDA_KERNELS_BUILT), reason="needs a GPU and the CUDA kernels"))])
@pytest.mark.skipif(_library.EXTENSION_ERROR is not None, reason=str(_library.EXTENSION_ERROR))
def test_cpp_entry_point_checks_its_arguments(device, monkeypatch):
    """Direct callers of torch.ops.neumf_fast get the C++ checks' messages and Python's exception
    types (ValueError, TypeError, IndexError), not a crash (the bad id in sync mode: at the call)."""
    monkeypatch.setenv("NEUMF_FAST_CHECK_IDS", "sync")
    op = torch.ops.neumf_fast.fused_input
    user, item = torch.randn(4, 3, 5, device=device), torch.randn(4, 5, device=device)
    w = torch.randn(6, 4, device=device)
    with pytest.raises(ValueError, match=r"user_weight must be \[H_mf \+ H_mlp, 5\], got \[6, 4\]"):
        op(user, None, None, None, item, None, w, None, None, None, 2, "sum")
    with pytest.raises(ValueError, match=r"mode must be one of \('sum', 'mean'\), got 'max'"):
        op(user, None, None, None, item, None, None, None, None, None, 2, "max")
    with pytest.raises(ValueError, match="user has 4 rows but item has 3"):
        op(user, None, None, None, item[:3], None, None, None, None, None, 2, "sum")
    with pytest.raises(TypeError, match="item has dtype torch.float64 but the other float inputs have torch.float32"):
        op(user, None, None, None, item.double(), None, None, None, None, None, 2, "sum")
    ids = torch.tensor([[0, 7]], device=device)
    with pytest.raises(IndexError, match="user id 7 is out of range for a table with 7 rows"):
        op(ids, None, torch.randn(7, 5, device=device), None, torch.randn(1, 5, device=device), None, None, None,
           None, None, 2, "sum")
    if device == "cuda":
        with pytest.raises(ValueError, match="item is on cpu"):
            op(user, None, None, None, item.cpu(), None, None, None, None, None, 2, "sum")


def test_empty_batch_gives_empty_outputs_and_gradients(target):
    """B = 0 is a valid (empty) batch: empty outputs, zero table gradients, no error."""
    case = make_case(batch=0, user_ids=True, item_ids=True).on(target[1])
    gmf, mlp_in = call(case, target)
    assert gmf.shape == (0, 3) and mlp_in.shape == (0, 10)
    (gmf.sum() + mlp_in.sum()).backward()
    assert torch.count_nonzero(case.kwargs["user_table"].grad) == 0
