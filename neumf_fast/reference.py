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


# ---------------------------------------------------------------------------------------------
# Row-wise table optimizers: the update the op's backward applies to a table in place
# (neumf_fast/ops/table_update.py), in plain torch on the rows gathered from the table.

TABLE_OPTIMIZERS = ("sgd", "adam", "rowwise_adagrad")


def table_update_(table: Tensor, moment1: Tensor, moment2: Tensor, step: Tensor, ids: Tensor, grad: Tensor,
                  padding_idx: int | None, optimizer: str, lr: float, beta1: float, beta2: float, eps: float,
                  weight_decay: float) -> None:
    """One optimizer step on the rows of ``table`` [R, D] that ``ids`` [M, K] names, in place.

    Every position ``ids[m, k]`` other than ``padding_idx`` adds ``grad[m]`` [D] to its row's
    gradient; each row present is then updated once, with ``g = its summed gradient +
    weight_decay * row`` (L2, as ``torch.optim.Adam``), and no other row or state changes.
    ``step`` (a 0-d int64 count) is advanced first; with ``t`` its new value:

    - ``sgd``: ``row -= lr * g``
    - ``adam``: ``moment1``/``moment2`` are ``[R, D]``; ``m = b1 m + (1 - b1) g``,
      ``v = b2 v + (1 - b2) g^2``, ``row -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)``:
      ``torch.optim.Adam`` on the rows present, with the table's global step (as
      ``torch.optim.SparseAdam``)
    - ``rowwise_adagrad``: ``moment2`` is ``[R]``; ``s += mean(g^2)``,
      ``row -= lr * g / (sqrt(s) + eps)`` (fbgemm's ``EXACT_ROWWISE_ADAGRAD``)

    The state is in op-math (fp32 for a bf16/fp16 table); the arithmetic is in the state's dtype.
    """
    keep = torch.ones_like(ids, dtype=torch.bool) if padding_idx is None else ids != padding_idx
    _check_ids(ids, keep, table.shape[0], "table_update ids")
    step += 1
    t = int(step)
    acc = moment2.dtype if moment2.numel() else (torch.float64 if table.dtype == torch.float64 else torch.float32)
    rows, where = torch.unique(ids[keep], return_inverse=True)
    owner = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(ids)[keep]
    g = torch.zeros((len(rows), table.shape[1]), dtype=acc, device=table.device).index_add_(0, where, grad[owner].to(acc))
    w = table[rows].to(acc)
    g = g + weight_decay * w
    if optimizer == "sgd":
        w = w - lr * g
    elif optimizer == "adam":
        m = beta1 * moment1[rows] + (1 - beta1) * g
        v = beta2 * moment2[rows] + (1 - beta2) * g * g
        moment1[rows], moment2[rows] = m, v
        w = w - lr / (1 - beta1 ** t) * m / ((v / (1 - beta2 ** t)).sqrt() + eps)
    elif optimizer == "rowwise_adagrad":
        s = moment2[rows] + (g * g).mean(dim=1)
        moment2[rows] = s
        w = w - lr * g / (s.sqrt()[:, None] + eps)
    else:
        raise ValueError(f"neumf_fast: optimizer must be one of {TABLE_OPTIMIZERS}, got {optimizer!r}")
    table[rows] = w.to(table.dtype)
