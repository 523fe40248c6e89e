"""Bad input gets a clear error naming the argument, on every backend, never a crash or a
silent wrong answer.  The C++ entry points repeat the checks for direct torch.ops callers."""

from __future__ import annotations

import pytest
import torch

import neumf_fast
from neumf_fast.ops import _library
from conftest import make_case

BACKENDS = ["torch", pytest.param("cpu", marks=pytest.mark.skipif(
    _library.EXTENSION_ERROR is not None, reason=str(_library.EXTENSION_ERROR)))]


def call(case, backend):
    return neumf_fast.neumf_input(case.user, case.item, backend=backend, **case.kwargs)


def mutate(fn, **make):
    case = make_case(batch=4, seq_len=3, user_dim=5, h_mlp=4, **make)
    fn(case)
    return case


BAD_METADATA = {
    # name: (case builder kwargs, mutation, exception, message fragment)
    "user rank": (dict(), lambda c: setattr(c, "user", c.user[0]), ValueError, "dense user must be [B, L, D]"),
    "id rank": (dict(user_ids=True), lambda c: setattr(c, "user", c.user[:, :, None]), ValueError, "user ids must be [B, L]"),
    "item rank": (dict(), lambda c: setattr(c, "item", c.item[:, :, None]), ValueError, "dense item must be [B, D_i]"),
    "item id rank": (dict(item_ids=True), lambda c: setattr(c, "item", c.item[:, None]), ValueError, "item ids must be [B]"),
    "batch mismatch": (dict(), lambda c: setattr(c, "item", c.item[:3]), ValueError, "user has 4 rows but item has 3"),
    "mask shape": (dict(), lambda c: c.kwargs.update(user_mask=c.kwargs["user_mask"][:, :2]), ValueError, "user_mask must be [B, L]"),
    "mask dtype": (dict(), lambda c: c.kwargs.update(user_mask=c.kwargs["user_mask"].float()), TypeError, "user_mask must be bool"),
    "user dtype": (dict(), lambda c: setattr(c, "user", c.user.detach().to(torch.uint8)), TypeError, "user must be float"),
    "item dtype mismatch": (dict(), lambda c: setattr(c, "item", c.item.detach().double()), TypeError, "item has dtype torch.float64"),
    "weight dtype mismatch": (dict(), lambda c: c.kwargs.update(user_weight=c.kwargs["user_weight"].detach().half()), TypeError, "user_weight has dtype"),
    "table dtype mismatch": (dict(user_ids=True, item_ids=True), lambda c: c.kwargs.update(item_table=c.kwargs["item_table"].detach().double()), TypeError, "item_table has dtype"),
    "weight disagrees with D": (dict(), lambda c: c.kwargs.update(user_weight=c.kwargs["user_weight"][:, :4]), ValueError, "user_weight must be [H_mf + H_mlp, 5]"),
    "item weight disagrees with D_i": (dict(), lambda c: c.kwargs.update(item_weight=c.kwargs["item_weight"][:, :2]), ValueError, "item_weight must be"),
    "bias shape": (dict(), lambda c: c.kwargs.update(user_bias=c.kwargs["user_bias"][:2]), ValueError, "user_bias must be [7]"),
    "bias without weight": (dict(), lambda c: c.kwargs.update(user_weight=None), ValueError, "user_bias given without user_weight"),
    "h_mf too wide": (dict(), lambda c: c.kwargs.update(h_mf=8), ValueError, "h_mf=8 must lie in"),
    "mode": (dict(), lambda c: c.kwargs.update(mode="max"), ValueError, "mode must be one of"),
    "ids without table": (dict(user_ids=True), lambda c: c.kwargs.update(user_table=None), ValueError, "user ids need user_table"),
    "mask with ids": (dict(user_ids=True), lambda c: c.kwargs.update(user_mask=torch.ones(4, 3, dtype=torch.bool)), ValueError, "user_mask must be None for id input"),
    "padding with dense": (dict(), lambda c: c.kwargs.update(padding_idx=0), ValueError, "padding_idx must be None for dense input"),
    "device mismatch": (dict(), lambda c: setattr(c, "item", c.item.detach().to("meta")), ValueError, "item is on meta but user is on cpu"),
    "weight device mismatch": (dict(), lambda c: c.kwargs.update(user_weight=c.kwargs["user_weight"].detach().to("meta")), ValueError, "user_weight is on meta"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", BAD_METADATA)
def test_bad_metadata(backend, name):
    make, fn, exc, message = BAD_METADATA[name]
    case = mutate(fn, **make)
    with pytest.raises(exc, match=message.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
        call(case, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side,bad_id", [("user", 50), ("user", -2), ("user", 10**12), ("item", 40), ("item", -1)])
def test_ids_out_of_range(backend, side, bad_id):
    case = make_case(batch=4, seq_len=3, user_ids=True, item_ids=True, num_user_rows=50, num_item_rows=40, padding_idx=0)
    if side == "user":
        case.user[2, 1] = bad_id
    else:
        case.item[3] = bad_id
    with pytest.raises(IndexError, match=f"{side}.*id {bad_id} is out of range for a table with"):
        call(case, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_padding_id_is_not_out_of_range(backend):
    case = make_case(batch=4, seq_len=3, user_ids=True, padding_idx=-1, mask="empty_rows")
    call(case, backend)  # -1 is the padding id here, so it is skipped, not rejected


@pytest.mark.skipif(_library.EXTENSION_ERROR is not None, reason=str(_library.EXTENSION_ERROR))
def test_cpp_entry_point_checks_its_arguments():
    """Direct callers of torch.ops.neumf_fast get the C++ checks' messages, not a crash."""
    op = torch.ops.neumf_fast.fused_input
    user, item = torch.randn(4, 3, 5), torch.randn(4, 5)
    w = torch.randn(6, 4)
    with pytest.raises(RuntimeError, match="user_weight must be"):
        op(user, None, None, None, item, None, w, None, None, None, 2, "sum")
    with pytest.raises(RuntimeError, match="mode must be 'sum' or 'mean'"):
        op(user, None, None, None, item, None, None, None, None, None, 2, "max")
    with pytest.raises(RuntimeError, match="user has 4 rows but item has 3"):
        op(user, None, None, None, item[:3], None, None, None, None, None, 2, "sum")
    ids = torch.tensor([[0, 7]])
    with pytest.raises(IndexError, match="user id 7 is out of range"):
        op(ids, None, torch.randn(7, 5), None, torch.randn(1, 5), None, None, None, None, None, 2, "sum")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gives_empty_outputs_and_gradients(backend):
    """B = 0 is a valid (empty) batch: empty outputs, zero table gradients, no error."""
    case = make_case(batch=0, user_ids=True, item_ids=True)
    gmf, mlp_in = call(case, backend)
    assert gmf.shape == (0, 3) and mlp_in.shape == (0, 10)
    (gmf.sum() + mlp_in.sum()).backward()
    assert torch.count_nonzero(case.kwargs["user_table"].grad) == 0
