"""The pure-PyTorch specification of the fused NeuMF input op.

This module *defines* the numbers every kernel must reproduce.  It is kept short and
obviously right: no fusion, no speed tricks.  Every backend is tested against it, and it is
itself gradchecked in float64.

For a batch of B rows::

    pooled_user[b] = scale[b] * sum_l m[b, l] * x[b, l, :]      x dense [B, L, D] or table[ids]
    pooled_item[b] = item[b, :]  or  item_table[item_ids[b], :]
    proj_user      = pooled_user @ user_weight.T + user_bias    (or pooled_user if no weight)
    proj_item      = pooled_item @ item_weight.T + item_bias    (or pooled_item if no weight)
    mf_user, mlp_user = proj_user[:, :h_mf], proj_user[:, h_mf:]
    mf_item, mlp_item = proj_item[:, :h_mf], proj_item[:, h_mf:]
    gmf    = mf_user * mf_item                    [B, h_mf]
    mlp_in = cat(mlp_user, mlp_item, dim=-1)      [B, H_mlp_user + H_mlp_item]

``m`` is the user mask: a bool ``[B, L]`` for dense input, ``ids != padding_idx`` for id input,
or all ones.  ``scale`` is 1 for ``mode="sum"`` and ``1 / max(1, count)`` for ``mode="mean"``,
so a row with nothing unmasked pools to zeros, never NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

def _check_ids(ids: Tensor, keep: Tensor, num_rows: int, name: str) -> None:
    bad = keep & ((ids < 0) | (ids >= num_rows))
    if bool(bad.any()):
        first = int(ids[bad].flatten()[0])
        raise IndexError(f"{name}: id {first} is out of range for a table with {num_rows} rows")


def pool_user(
    user: Tensor,
    user_mask: Tensor | None = None,
    user_table: Tensor | None = None,
    padding_idx: int | None = None,
    mode: str = "sum",
) -> Tensor:
    """Sum (or mean) of a user's sequence: dense ``[B, L, D]`` or ids ``[B, L]`` into a table."""
    if user_table is None:
        keep = torch.ones(user.shape[:2], dtype=torch.bool, device=user.device) if user_mask is None else user_mask
        values = user
    else:
        keep = torch.ones_like(user, dtype=torch.bool) if padding_idx is None else user != padding_idx
        _check_ids(user, keep, user_table.shape[0], "user ids")
        values = user_table[user.masked_fill(~keep, 0)]  # padding rows are zeroed just below
    # masked_fill, not a multiply: a masked position is ignored even if it holds inf or NaN
    pooled = values.masked_fill(~keep.unsqueeze(-1), 0).sum(dim=1)
    if mode == "mean":
        count = keep.sum(dim=1, keepdim=True).clamp_min(1).to(pooled.dtype)
        pooled = pooled / count
    return pooled


def lookup_item(item: Tensor, item_table: Tensor | None = None) -> Tensor:
    """The item vector: dense ``[B, D_i]`` as given, or a table row gathered by id ``[B]``."""
    if item_table is None:
        return item
    _check_ids(item, torch.ones_like(item, dtype=torch.bool), item_table.shape[0], "item ids")
    return item_table[item]


def project(pooled: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """The stacked dual projection ``[mf | mlp] = pooled @ W.T + b``; identity without a weight."""
    if weight is None:
        return pooled
    return torch.nn.functional.linear(pooled, weight, bias)


def neumf_input(
    user: Tensor,
    item: Tensor,
    *,
    h_mf: int,
    user_mask: Tensor | None = None,
    user_table: Tensor | None = None,
    padding_idx: int | None = None,
    item_table: Tensor | None = None,
    user_weight: Tensor | None = None,
    user_bias: Tensor | None = None,
    item_weight: Tensor | None = None,
    item_bias: Tensor | None = None,
    mode: str = "sum",
) -> tuple[Tensor, Tensor]:
    """Reference fused NeuMF input: returns ``(gmf, mlp_in)``.  See the module docstring."""
    proj_user = project(pool_user(user, user_mask, user_table, padding_idx, mode), user_weight, user_bias)
    proj_item = project(lookup_item(item, item_table), item_weight, item_bias)
    gmf = proj_user[:, :h_mf] * proj_item[:, :h_mf]
    mlp_in = torch.cat([proj_user[:, h_mf:], proj_item[:, h_mf:]], dim=-1)
    return gmf, mlp_in
