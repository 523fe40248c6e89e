"""Tables updated inside the backward: the ``table_update_`` op on each backend, and the autograd
that hands an id side's row gradients to it.

``table_update_(table, moment1, moment2, step, ids, grad, padding_idx, optimizer, lr, beta1, beta2,
eps, weight_decay)`` is one row-wise optimizer step on the rows that ``ids`` names, in place;
``neumf_fast.reference.table_update_`` is its spec.  The C++ extension declares it (csrc/ops.cpp,
``Tensor(a!)`` for each tensor it writes) with a CPU kernel (csrc/cpu/table_update_cpu.cpp) and a
CUDA one (csrc/cuda/table_update.cu); Triton has its own (``triton_backend.table_update_``).

A call of the fused op with a table optimizer (``neumf_input(..., table_optimizer=)``) goes
through ``rows_for_update``: each id side whose table the optimizer holds is gathered (and pooled)
by ``_TableRows`` (the op itself, with no projection), and the op then runs on those rows as its
dense input.  The op's backward
then returns each side's ``[B, D]`` row gradient, and ``_TableRows.backward`` hands it to the
optimizer, which applies ``table_update_``: the table's ``.grad`` stays ``None`` and nothing of the
table's size is written but the rows present.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .. import reference
from . import _library
from ._checks import FusedArgs
from ._checks import check_table_update as check_table_update  # the Python backends' check, here by name
from .dispatch import BackendUnavailable, kind_of, requested_backend, select_backend

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
def rows_for_update(args: FusedArgs, optimizer: TableOptimizerLike, backend: str) -> FusedArgs:
    """The call with each id side whose table ``optimizer`` holds replaced by its rows, pooled
    (``[B, 1, D]``, mode sum: the pooling is done here) or gathered (``[B, D]``), whose gradient
    the optimizer applies to the table in the backward."""
    user_held = args.user_table is not None and optimizer.holds(args.user_table)
    item_held = args.item_table is not None and optimizer.holds(args.item_table)
    if user_held and item_held and args.user_table is args.item_table:
        raise ValueError("neumf_fast: one table on both sides cannot take a table optimizer (each side would "
                         "update it on its own); give each side its own table, or use dense")
    if user_held:
        pooled = _TableRows.apply(args.user_table, args.user, args.padding_idx, args.mode, optimizer, backend)
        args = args._replace(user=pooled[:, None], user_table=None, padding_idx=None, mode="sum")
    if item_held:
        rows = _TableRows.apply(args.item_table, args.item, None, "sum", optimizer, backend)
        args = args._replace(item=rows, item_table=None)
    return args


class _TableRows(torch.autograd.Function):
    """``forward``: a user's ids ``[B, L]`` pooled (padding left out, sum or mean), or item ids
    ``[B]`` gathered, from ``table``.  ``backward``: hands those rows' gradient (divided by the
    count for a mean) to ``optimizer.update``; the table gets no gradient."""

    @staticmethod
    def forward(ctx, table: Tensor, ids: Tensor, padding_idx: int | None, mode: str, optimizer, backend: str):
        # The op itself pools or gathers (its kernels, its id checks): with no projection, h_mf = 0
        # and a zero-width other side, its mlp_in is just this side's rows.
        batch, none = ids.shape[0], (None,) * 4
        if ids.dim() == 2:
            args = FusedArgs(ids, None, table, padding_idx, table.new_zeros((batch, 0)), None, *none, 0, mode)
        else:
            args = FusedArgs(table.new_zeros((batch, 1, 0)), None, None, None, ids, table, *none, 0, "sum")
        rows = select_backend(kind_of(args), backend).run(args)[1]
        ctx.save_for_backward(ids)
        ctx.table, ctx.padding_idx, ctx.mean, ctx.optimizer = table, padding_idx, mode == "mean", optimizer
        return rows

    @staticmethod
    def backward(ctx, grad: Tensor):
        (ids,) = ctx.saved_tensors
        ids = ids if ids.dim() == 2 else ids[:, None]
        if ctx.mean:
            kept = ids.shape[1] if ctx.padding_idx is None else (ids != ctx.padding_idx).sum(dim=1, keepdim=True)
            grad = grad / (kept.clamp_min(1) if isinstance(kept, Tensor) else kept)
        ctx.optimizer.update(ctx.table, ids, grad.contiguous(), ctx.padding_idx)
        return None, None, None, None, None, None
