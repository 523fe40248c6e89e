"""A fused NeuMF input call's arguments (``FusedArgs``) and the Python check of them, and the
same for ``table_update_`` (``check_table_update``).

``check_inputs`` validates a call for the backends with no compiled entry point of their own
(the Triton launcher and the PyTorch reference).  It reads only shapes, dtypes and devices (no
data, no host sync); id ranges are data, checked by each backend where it reads the ids.  The
C++ kernels validate their calls themselves (``check_fused_input`` in csrc/ops.cpp), with
errors of the same type that name the same argument and problem.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..reference import TABLE_OPTIMIZERS

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int64, torch.int32)
MODES = ("sum", "mean")


class FusedArgs(NamedTuple):
    """The op's arguments by name, in its schema's order, so ``op(*args, save)`` calls it."""

    user: Tensor
    user_mask: Tensor | None
    user_table: Tensor | None
    padding_idx: int | None
    item: Tensor
    item_table: Tensor | None
    user_weight: Tensor | None
    user_bias: Tensor | None
    item_weight: Tensor | None
    item_bias: Tensor | None
    h_mf: int
    mode: str

    def needs_grad(self) -> bool:
        """Whether autograd must record this call: grad mode on and a differentiable input."""
        return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in self)


class FusedDims(NamedTuple):
    batch: int
    seq_len: int
    user_dim: int
    item_dim: int
    user_proj: int  # H_mf + H_mlp_user (user_dim with no projection)
    item_proj: int  # H_mf + H_mlp_item
    h_mf: int
    user_ids: bool
    item_ids: bool
    dtype: torch.dtype
    device: torch.device

    @property
    def h_mlp(self) -> int:
        return self.user_proj + self.item_proj - 2 * self.h_mf


def _same(t: Tensor, name: str, dtype: torch.dtype, device: torch.device) -> None:
    if t.dtype != dtype:
        raise TypeError(f"neumf_fast: {name} has dtype {t.dtype} but the other float inputs have {dtype}")
    if t.device != device:
        raise ValueError(f"neumf_fast: {name} is on {t.device} but user is on {device}")


def _side(w: Tensor | None, b: Tensor | None, in_dim: int, wname: str, bname: str, dtype, device) -> int:
    if w is None:
        if b is not None:
            raise ValueError(f"neumf_fast: {bname} given without {wname}")
        return in_dim
    if w.dim() != 2 or w.shape[1] != in_dim:
        raise ValueError(f"neumf_fast: {wname} must be [H_mf + H_mlp, {in_dim}], got {list(w.shape)}")
    _same(w, wname, dtype, device)
    if b is not None:
        if b.shape != (w.shape[0],):
            raise ValueError(f"neumf_fast: {bname} must be [{w.shape[0]}], got {list(b.shape)}")
        _same(b, bname, dtype, device)
    return w.shape[0]


def check_inputs(args: FusedArgs) -> FusedDims:
    """Validates one call and returns its sizes; raises TypeError/ValueError naming the argument."""
    (user, user_mask, user_table, padding_idx, item, item_table,
     user_weight, user_bias, item_weight, item_bias, h_mf, mode) = args
    if not isinstance(user, Tensor) or not isinstance(item, Tensor):
        raise TypeError("neumf_fast: user and item must be tensors")
    if mode not in MODES:
        raise ValueError(f"neumf_fast: mode must be one of {MODES}, got {mode!r}")
    device = user.device
    user_ids = user.dtype in INDEX_DTYPES
    if user_ids:
        if user_table is None:
            raise ValueError("neumf_fast: user ids need user_table")
        if user.dim() != 2:
            raise ValueError(f"neumf_fast: user ids must be [B, L], got {list(user.shape)}")
        if user_mask is not None:
            raise ValueError("neumf_fast: user_mask must be None for id input (use padding_idx)")
        if user_table.dim() != 2:
            raise ValueError(f"neumf_fast: user_table must be [N, D], got {list(user_table.shape)}")
        dtype, user_dim = user_table.dtype, user_table.shape[1]
        if user_table.device != device:
            raise ValueError(f"neumf_fast: user_table is on {user_table.device} but user is on {device}")
    elif user.dtype in FLOAT_DTYPES:
        if user_table is not None:
            raise ValueError("neumf_fast: user_table must be None when user is dense (ids are int32/int64)")
        if user.dim() != 3:
            raise ValueError(f"neumf_fast: dense user must be [B, L, D], got {list(user.shape)}")
        if padding_idx is not None:
            raise ValueError("neumf_fast: padding_idx must be None for dense input (use user_mask)")
        if user_mask is not None:
            if user_mask.dtype != torch.bool:
                raise TypeError(f"neumf_fast: user_mask must be bool, got {user_mask.dtype}")
            if user_mask.shape != user.shape[:2]:
                raise ValueError(f"neumf_fast: user_mask must be [B, L] = {list(user.shape[:2])}, got {list(user_mask.shape)}")
            if user_mask.device != device:
                raise ValueError(f"neumf_fast: user_mask is on {user_mask.device} but user is on {device}")
        dtype, user_dim = user.dtype, user.shape[2]
    else:
        raise TypeError(f"neumf_fast: user must be float [B, L, D] or int32/int64 ids [B, L], got dtype {user.dtype}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"neumf_fast: float inputs must be one of {FLOAT_DTYPES}, got {dtype}")

    if item.dtype in INDEX_DTYPES:
        if item_table is None:
            raise ValueError("neumf_fast: item ids need item_table")
        if item.dim() != 1:
            raise ValueError(f"neumf_fast: item ids must be [B], got {list(item.shape)}")
        if item.device != device:
            raise ValueError(f"neumf_fast: item is on {item.device} but user is on {device}")
        if item_table.dim() != 2:
            raise ValueError(f"neumf_fast: item_table must be [N_i, D_i], got {list(item_table.shape)}")
        _same(item_table, "item_table", dtype, device)
        item_dim = item_table.shape[1]
    elif item.dtype in FLOAT_DTYPES:
        if item_table is not None:
            raise ValueError("neumf_fast: item_table must be None when item is dense (ids are int32/int64)")
        if item.dim() != 2:
            raise ValueError(f"neumf_fast: dense item must be [B, D_i], got {list(item.shape)}")
        _same(item, "item", dtype, device)
        item_dim = item.shape[1]
    else:
        raise TypeError(f"neumf_fast: item must be float [B, D_i] or int32/int64 ids [B], got dtype {item.dtype}")
    if item.shape[0] != user.shape[0]:
        raise ValueError(f"neumf_fast: user has {user.shape[0]} rows but item has {item.shape[0]}")

    user_proj = _side(user_weight, user_bias, user_dim, "user_weight", "user_bias", dtype, device)
    item_proj = _side(item_weight, item_bias, item_dim, "item_weight", "item_bias", dtype, device)
    if not 0 <= h_mf <= min(user_proj, item_proj):
        raise ValueError(
            f"neumf_fast: h_mf={h_mf} must lie in [0, min({user_proj}, {item_proj})] "
            "(the user and item projection widths)"
        )
    return FusedDims(
        user.shape[0], user.shape[1], user_dim, item_dim, user_proj, item_proj, h_mf,
        user_ids, item.dtype in INDEX_DTYPES, dtype, device,
    )


def check_id_range(ids: Tensor, keep: Tensor | None, rows: int, name: str) -> None:
    """``IndexError`` naming the first id outside ``[0, rows)`` among the kept positions (reads
    the ids: one host sync on a GPU).  While a CUDA graph is being captured, where a host sync
    is an error, it is a device-side assert instead: a replay with a bad id stops the process
    with this message."""
    bad = (ids < 0) | (ids >= rows)
    if keep is not None:
        bad &= keep
    if capturing(ids):
        torch._assert_async(~bad.any(), f"neumf_fast: a {name} id is out of range for a table with {rows} rows")
        return
    if bool(bad.any()):
        raise IndexError(f"neumf_fast: {name} id {int(ids[bad][0])} is out of range for a table with {rows} rows")


def capturing(t: Tensor) -> bool:
    """Whether ``t``'s device is capturing a CUDA graph on the current stream."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def check_backward_inputs(d, grad_gmf, grad_mlp_in, pooled_user, pooled_item, mf_user, mf_item,
                           user_proj: bool, item_proj: bool) -> None:
    """The backward kernel reads these by raw pointer: a forward run with ``save=False`` (empty
    saved tensors) or gradients of the wrong shape would read past their ends, so refuse them."""
    expected = [("grad_gmf", grad_gmf, d.dtype, (d.batch, d.h_mf)),
                ("grad_mlp_in", grad_mlp_in, d.dtype, (d.batch, d.h_mlp)),
                ("mf_user", mf_user, torch.float32, (d.batch, d.h_mf)),
                ("mf_item", mf_item, torch.float32, (d.batch, d.h_mf))]
    if user_proj:
        expected.append(("pooled_user", pooled_user, torch.float32, (d.batch, d.user_dim)))
    if item_proj:
        expected.append(("pooled_item", pooled_item, torch.float32, (d.batch, d.item_dim)))
    for name, t, dtype, shape in expected:
        saved = name.startswith(("mf_", "pooled_"))
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise RuntimeError(f"neumf_fast: {'saved ' if saved else ''}{name} must be {dtype} {list(shape)}, got "
                               f"{t.dtype} {list(t.shape)}" + (" (was the forward run with save=False?)" if saved else ""))
        if t.device != d.device:
            raise RuntimeError(f"neumf_fast: {name} is on {t.device} but the inputs are on {d.device}")


def check_table_update(table: Tensor, moment1: Tensor, moment2: Tensor, step: Tensor, ids: Tensor, grad: Tensor,
                       optimizer: str, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """``table_update_``'s metadata check for the backends with no compiled entry point (Triton,
    the reference; ``table_update`` re-exports it): what ``check_table_update`` in csrc/ops.cpp
    rejects, with the same error types (``TypeError`` for a dtype, ``ValueError`` for the rest)
    naming the same argument.  Reads no data."""
    if optimizer not in TABLE_OPTIMIZERS:
        raise ValueError(f"neumf_fast: optimizer must be one of {TABLE_OPTIMIZERS}, got {optimizer!r}")
    if table.dtype not in FLOAT_DTYPES:
        raise TypeError(f"neumf_fast: table must be float, got {table.dtype}")
    if table.dim() != 2 or not table.is_contiguous():
        raise ValueError(f"neumf_fast: table must be a contiguous [R, D], got {list(table.shape)}")
    if ids.dtype not in INDEX_DTYPES:
        raise TypeError(f"neumf_fast: ids must be int32/int64, got {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"neumf_fast: ids must be [M, K], got {list(ids.shape)}")
    if grad.dim() != 2 or grad.shape != (ids.shape[0], table.shape[1]):
        raise ValueError(f"neumf_fast: grad must be [{ids.shape[0]}, {table.shape[1]}] (one row per row of ids), "
                         f"got {list(grad.shape)}")
    if grad.dtype != table.dtype:
        raise TypeError(f"neumf_fast: grad has dtype {grad.dtype} but table has {table.dtype}")
    acc = torch.float64 if table.dtype == torch.float64 else torch.float32  # op-math
    shapes = {"moment1": table.shape if optimizer == "adam" else None,
              "moment2": {"adam": table.shape, "rowwise_adagrad": table.shape[:1]}.get(optimizer)}
    for name, state in (("moment1", moment1), ("moment2", moment2)):
        if shapes[name] is None:
            if state.numel():
                raise ValueError(f"neumf_fast: {name} must be empty for optimizer {optimizer!r}, got {list(state.shape)}")
            continue
        if state.dtype != acc:
            raise TypeError(f"neumf_fast: {name} must be {acc} for a {table.dtype} table, got {state.dtype}")
        if state.shape != shapes[name] or not state.is_contiguous():
            raise ValueError(f"neumf_fast: {name} must be a contiguous {list(shapes[name])}, got {list(state.shape)}")
    if step.dtype != torch.int64:
        raise TypeError(f"neumf_fast: step must be int64, got {step.dtype}")
    if step.numel() != 1:
        raise ValueError(f"neumf_fast: step must hold one count, got {list(step.shape)}")
    for name, t in (("moment1", moment1), ("moment2", moment2), ("step", step), ("ids", ids), ("grad", grad)):
        if t.device != table.device:
            raise ValueError(f"neumf_fast: {name} is on {t.device} but table is on {table.device}")
    if not (lr >= 0 and weight_decay >= 0):
        raise ValueError(f"neumf_fast: lr and weight_decay must be >= 0, got {lr} and {weight_decay}")
    if not (eps > 0 and 0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ValueError(f"neumf_fast: need eps > 0 and betas in [0, 1), got eps={eps}, betas=({beta1}, {beta2})")
