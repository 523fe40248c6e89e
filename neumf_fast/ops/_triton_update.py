"""``backend="triton"``'s ``table_update_`` launcher, which ``triton_backend.table_update_`` calls
with the kernel (``_triton_kernels.table_update_kernel``, whose docstring has the math and tiling).

All on the device, with no host read, so a CUDA graph can capture it: each position's sort key
(its id; ``rows`` for padding and for a bad id, so they sort last and are skipped), a stable
``torch.sort``, ``step += 1``, then one launch with one program per sorted position (a grid set by
the batch's size, not its data).  Nothing of the table's size is allocated.  Kept apart from
``triton_backend`` so that module stays a readable size; it imports no Triton.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton

from . import _id_check
from ._checks import capturing, check_id_range, check_table_update
from ._triton_configs import _block


def launch(kernel, table: Tensor, moment1: Tensor, moment2: Tensor, step: Tensor, ids: Tensor, grad: Tensor,
           padding_idx: Optional[int], optimizer: str, lr: float, beta1: float, beta2: float, eps: float,
           weight_decay: float) -> None:
    """``table_update_`` (``reference.table_update_`` is the spec) with ``kernel``."""
    check_table_update(table, moment1, moment2, step, ids, grad, optimizer, lr, beta1, beta2, eps, weight_decay)
    # traced (torch.compile, or the FakeTensors of opcheck and export): no data to read, and the
    # kernel must go through wrap_triton to appear in the graph
    tracing = torch.compiler.is_compiling() or is_fake(ids)
    keys = _sort_keys(ids, padding_idx, table.shape[0], tracing)
    step.add_(1)  # first: the kernel reads the new count; a tensor op, so no host read
    n, dim = keys.numel(), table.shape[1]
    if n == 0 or dim == 0:
        return
    sorted_keys, order = torch.sort(keys, stable=True)
    block_d, block_p, warps = _config(int(dim))  # a constexpr: under dynamic shapes, a guard on D
    (wrap_triton(kernel) if tracing else kernel)[(n,)](
        table, moment1, moment2, step, grad.contiguous(), sorted_keys, order, n, table.shape[0], dim, ids.shape[1],
        lr, beta1, beta2, 1.0 - beta1, 1.0 - beta2, eps, weight_decay,
        OPTIMIZER=optimizer, BLOCK_P=block_p, BLOCK_D=block_d, num_warps=warps)


def _sort_keys(ids: Tensor, padding_idx: Optional[int], rows: int, tracing: bool) -> Tensor:
    """Each position's sort key, flattened: its id, or ``rows`` for padding and for an id outside
    ``[0, rows)``.  A bad id is reported as the fused op's are (``_id_check``): recorded with no
    host read on a GPU in the default ``deferred`` mode (the ``item`` slot: the record has two),
    an ``IndexError`` here on the CPU or in ``sync`` mode, a device-side assert while traced or
    captured; the kernel never reads or writes its row."""
    keep = ids != padding_idx if padding_idx is not None else None
    bad = (ids < 0) | (ids >= rows)
    if tracing:
        kept_bad = bad if keep is None else bad & keep
        torch._assert_async(~kept_bad.any(), f"neumf_fast: a table_update id is out of range for {rows} rows")
    elif ids.is_cuda and not capturing(ids) and _id_check.mode() == "deferred":
        _id_check.raise_pending(wait=False)  # an earlier call's, if its copy has landed
        _id_check.record_bad_ids(ids, keep, rows, "item")
        _id_check.after_launch(ids.device, "deferred")
    else:
        check_id_range(ids, keep, rows, "table_update")
    skip = bad if keep is None else bad | ~keep
    return torch.where(skip, rows, ids.to(torch.int64)).reshape(-1)


@functools.lru_cache(maxsize=None)
def _config(dim: int) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_P, num_warps) from the width alone: the whole row in one tile, and
    BLOCK_P gradient rows a step so that a [BLOCK_P, BLOCK_D] tile is at most 2048 values (16 a
    thread at 4 warps; 8 warps past 1024 columns)."""
    block_d = _block(dim)
    return block_d, max(1, min(32, 2048 // block_d)), 4 if block_d <= 1024 else 8
