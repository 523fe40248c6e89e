"""The reference is the spec: its gradients are checked numerically in float64, and its
forward is checked against the design's plain-PyTorch formulation (sum, four Linears, mul, cat)."""

from __future__ import annotations

import pytest
import torch

from neumf_fast import reference
from conftest import make_case


def _gradcheck(case):
    inputs = case.float_inputs()
    names = list(inputs)

    def fn(*tensors):
        named = dict(zip(names, tensors))
        kwargs = {**case.kwargs, **{k: v for k, v in named.items() if k in case.kwargs}}
        return reference.neumf_input(named.get("user", case.user), named.get("item", case.item), **kwargs)

    assert torch.autograd.gradcheck(fn, tuple(inputs.values()), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("item_ids", [False, True], ids=["dense_item", "item_ids"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("project,bias", [(True, True), (True, False), (False, False)], ids=["bias", "nobias", "noproj"])
def test_reference_gradcheck(user_ids, item_ids, mode, project, bias):
    case = make_case(batch=4, seq_len=3, user_dim=5, h_mf=2, h_mlp=3, h_mlp_item=4, user_ids=user_ids,
                     item_ids=item_ids, mode=mode, project=project, bias=bias, mask="empty_rows",
                     num_user_rows=6, num_item_rows=5, dtype=torch.float64)
    _gradcheck(case)


def test_reference_matches_design():
    """The design's forward (four nn.Linear layers on a summed sequence) is the reference with
    stacked weights."""
    torch.manual_seed(0)
    bs, seq, dim = 16, 10, 128
    user, item = torch.randn(bs, seq, dim, dtype=torch.float64), torch.randn(bs, dim, dtype=torch.float64)
    mf_user, mlp_user, mf_item, mlp_item = (torch.nn.Linear(dim, dim, dtype=torch.float64) for _ in range(4))
    pooled = user.sum(dim=1)
    gmf = mf_user(pooled) * mf_item(item)
    mlp_in = torch.cat([mlp_user(pooled), mlp_item(item)], dim=-1)
    ref_gmf, ref_mlp = reference.neumf_input(
        user, item, h_mf=dim,
        user_weight=torch.cat([mf_user.weight, mlp_user.weight]), user_bias=torch.cat([mf_user.bias, mlp_user.bias]),
        item_weight=torch.cat([mf_item.weight, mlp_item.weight]), item_bias=torch.cat([mf_item.bias, mlp_item.bias]))
    torch.testing.assert_close(ref_gmf, gmf, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ref_mlp, mlp_in, atol=1e-10, rtol=1e-10)


def test_mean_of_empty_row_is_zero_and_masked_nan_is_ignored():
    user = torch.tensor([[[1.0, 2.0], [float("nan"), 5.0]], [[3.0, 4.0], [7.0, 8.0]]])
    mask = torch.tensor([[True, False], [False, False]])
    pooled = reference.pool_user(user, mask, mode="mean")
    torch.testing.assert_close(pooled, torch.tensor([[1.0, 2.0], [0.0, 0.0]]))


def test_id_pooling_generalises_embedding_bag():
    torch.manual_seed(0)
    table = torch.randn(20, 6)
    ids = torch.randint(0, 20, (5, 4))
    ids[1, 2:] = 3  # padding
    ids[4, :] = 3   # an all-padding row
    for mode in ("sum", "mean"):
        bag = torch.nn.functional.embedding_bag(ids, table, mode=mode, padding_idx=3)
        torch.testing.assert_close(reference.pool_user(ids, user_table=table, padding_idx=3, mode=mode), bag)
