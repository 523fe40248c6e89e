"""Tables updated inside the backward: the ``table_update_`` op on each backend, and the autograd
that hands an id side's row gradients to it.

``table_update_(table, moment1, moment2, step, ids, grad, padding_idx, optimizer, lr, beta1, beta2,
eps, weight_decay)`` is one row-wise optimizer step on the rows that ``ids`` names, in place;
``neumf_fast.reference.table_update_`` is its spec.  The C++ extension declares it (csrc/ops.cpp,
``Tensor(a!)`` for each tensor it writes) with a CPU kernel (csrc/cpu/table_update_cpu.cpp) and a
CUDA one (csrc/cuda/table_update.cu); Triton has its own (``triton_backend.table_update_``).

A call of the fused op with a table optimizer (``neumf_input(..., table_optimizer=)``) goes
through ``rows_for_update``: each id side whose table the optimizer holds is gathered (and pooled)
here by ``_TableRows``, and the fused op runs on those rows as its dense input.  The op's backward
then returns each side's ``[B, D]`` row gradient, and ``_TableRows.backward`` hands it to the
optimizer, which applies ``table_update_``: the table's ``.grad`` stays ``None`` and nothing of the
table's size is written but the rows present.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import reference
from . import _id_check, _library
from ._checks import FusedArgs, capturing, check_id_range
from .dispatch import BackendUnavailable, requested_backend

TABLE_OPTIMIZERS = reference.TABLE_OPTIMIZERS


class TableState(NamedTuple):
    """A table's optimizer state, in op-math (fp32 for a bf16/fp16 table): ``moment1`` ``[R, D]``
    (adam), ``moment2`` ``[R, D]`` (adam) or ``[R]`` (rowwise_adagrad), empty where unused, and
    ``step``, a 0-d int64 count the op advances."""

    moment1: Tensor
    moment2: Tensor
    step: Tensor


def new_state(optimizer: str, table: Tensor) -> TableState:
    if optimizer not in TABLE_OPTIMIZERS:
        raise ValueError(f"neumf_fast: optimizer must be one of {TABLE_OPTIMIZERS}, got {optimizer!r}")
    acc = torch.float64 if table.dtype == torch.float64 else torch.float32
    empty = table.new_zeros((0,), dtype=acc)
    shape2 = {"adam": table.shape, "rowwise_adagrad": table.shape[:1]}.get(optimizer)
    return TableState(table.new_zeros(table.shape, dtype=acc) if optimizer == "adam" else empty,
                      table.new_zeros(shape2, dtype=acc) if shape2 is not None else empty.clone(),
                      torch.zeros((), dtype=torch.int64, device=table.device))


def update_kernel(device: torch.device, backend: str = "auto") -> Callable:
    """The ``table_update_`` that runs for tables on ``device``: the backend the fused op would
    take there (``"auto"``: the C++ kernels, then Triton on CUDA, then the reference), or the one
    asked for, which raises ``BackendUnavailable`` saying why when it cannot."""
    name = requested_backend(backend)
    if name == "auto":
        if _library.EXTENSION_ERROR is None and (device.type == "cpu" or _library.CUDA_KERNELS_BUILT):
            name = "cpu" if device.type == "cpu" else "cuda"
        else:
            name = "triton" if device.type == "cuda" and _triton_error() is None else "torch"
    if name == "torch":
        return reference.table_update_
    if name == "triton":
        if _triton_error() is not None:
            raise BackendUnavailable(f"neumf_fast: backend 'triton' cannot update tables: {_triton_error()}")
        from . import triton_backend

        return triton_backend.table_update_
    if _library.EXTENSION_ERROR is not None:
        raise BackendUnavailable(f"neumf_fast: backend {name!r} cannot update tables: {_library.EXTENSION_ERROR}")
    if (name == "cuda") != (device.type == "cuda") or (name == "cuda" and not _library.CUDA_KERNELS_BUILT):
        raise BackendUnavailable(f"neumf_fast: backend {name!r} cannot update tables on {device}")
    return torch.ops.neumf_fast.table_update_.default


def _triton_error() -> str | None:
    import os

    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        return "the Triton kernels run on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1)"
    from . import triton_backend

    return triton_backend.TRITON_ERROR


def _fake_table_update(table, moment1, moment2, step, ids, grad, padding_idx, optimizer, lr, beta1, beta2, eps,
                       weight_decay) -> None:
    torch._check_value(optimizer in TABLE_OPTIMIZERS, lambda: f"neumf_fast: optimizer {optimizer!r} is unknown")
    torch._check_value(ids.dim() == 2 and grad.dim() == 2 and table.dim() == 2,
                       lambda: "neumf_fast: table, ids and grad must be 2-D")
    torch._check_type(grad.dtype == table.dtype, lambda: f"neumf_fast: grad has dtype {grad.dtype}, not {table.dtype}")
    torch._check_value(grad.shape[0] == ids.shape[0] and grad.shape[1] == table.shape[1],
                       lambda: "neumf_fast: grad must be [M, D] for ids [M, K] into a table [R, D]")


if _library.EXTENSION_ERROR is None:
    torch.library.register_fake("neumf_fast::table_update_")(_fake_table_update)


class TableOptimizerLike:  # the protocol rows_for_update reads (neumf_fast.table_optimizer.TableOptimizer)
    def holds(self, table: Tensor) -> bool: ...
    def update(self, table: Tensor, ids: Tensor, grad: Tensor, padding_idx: int | None) -> None: ...


@torch.compiler.disable  # a graph break: the update runs eagerly in a compiled step (docs/training.md)
def rows_for_update(args: FusedArgs, optimizer: TableOptimizerLike) -> FusedArgs:
    """The call with each id side whose table ``optimizer`` holds replaced by its rows, pooled
    (``[B, 1, D]``, mode sum: the pooling is done here) or gathered (``[B, D]``), whose gradient
    the optimizer applies to the table in the backward."""
    user_held = args.user_table is not None and optimizer.holds(args.user_table)
    item_held = args.item_table is not None and optimizer.holds(args.item_table)
    if user_held and item_held and args.user_table is args.item_table:
        raise ValueError("neumf_fast: one table on both sides cannot take a table optimizer (each side would "
                         "update it on its own); give each side its own table, or use dense")
    if user_held:
        pooled = _TableRows.apply(args.user_table, args.user, args.padding_idx, args.mode == "mean", optimizer,
                                  "user")
        args = args._replace(user=pooled[:, None], user_table=None, padding_idx=None, mode="sum")
    if item_held:
        rows = _TableRows.apply(args.item_table, args.item[:, None], None, False, optimizer, "item")
        args = args._replace(item=rows, item_table=None)
    return args


class _TableRows(torch.autograd.Function):
    """``forward``: the sum (or mean) of each row of ``ids`` ``[M, K]`` into ``table`` (padding
    ids left out, as the fused op pools them).  ``backward``: hands the pooled rows' gradient
    (divided by the count for a mean) to ``optimizer.update``; the table gets no gradient."""

    @staticmethod
    def forward(ctx, table: Tensor, ids: Tensor, padding_idx: int | None, mean: bool, optimizer, name: str) -> Tensor:
        ids, keep = _checked_ids(ids, padding_idx, table.shape[0], name)
        pooled = F.embedding_bag(ids, table, mode="sum", padding_idx=padding_idx) if ids.shape[1] != 1 or \
            padding_idx is not None else F.embedding(ids[:, 0], table)
        count = None
        if mean:
            count = keep.sum(dim=1, keepdim=True).clamp_min(1).to(pooled.dtype)
            pooled = pooled / count
        ctx.save_for_backward(ids, count)
        ctx.table, ctx.padding_idx, ctx.optimizer = table, padding_idx, optimizer
        return pooled

    @staticmethod
    def backward(ctx, grad: Tensor):
        ids, count = ctx.saved_tensors
        if count is not None:
            grad = grad / count
        ctx.optimizer.update(ctx.table, ids, grad.contiguous(), ctx.padding_idx)
        return None, None, None, None, None, None


def _checked_ids(ids: Tensor, padding_idx: int | None, rows: int, name: str) -> tuple[Tensor, Tensor]:
    """(the ids to read, the positions pooled).  A bad id raises ``IndexError`` here on the CPU
    (and in ``sync`` mode or a CUDA graph capture, see ``check_id_range``); on a GPU in the
    default ``deferred`` mode it is recorded for ``_id_check`` (no host sync) and read as the
    padding id, or as row 0 with no padding id: that step is wrong, and the next call raises."""
    keep = ids != padding_idx if padding_idx is not None else torch.ones_like(ids, dtype=torch.bool)
    if ids.is_cuda and not capturing(ids) and _id_check.mode() == "deferred":
        bad = _id_check.record_bad_ids(ids, keep, rows, name)
        _id_check.after_launch(ids.device, "deferred")
        return ids.masked_fill(bad, 0 if padding_idx is None else padding_idx), keep & ~bad
    check_id_range(ids, keep, rows, name)
    return ids, keep
