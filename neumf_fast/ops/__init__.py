"""The fused NeuMF input op: one call for sequence pooling, the dual user/item projections and
the GMF product.  ``neumf_input`` validates, picks a backend and runs it; see
``neumf_fast.reference`` for the exact math every backend reproduces."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _id_check
from ._checks import FusedArgs, FusedDims, capturing, check_id_range, check_inputs
from .table_update import rows_for_update
from .dispatch import (BACKENDS, ENV_VAR, PREFERENCE, BackendUnavailable, CallKind, available_backends, kind_of,
                       select_backend)


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
    backend: str = "auto",
    table_optimizer=None,
) -> tuple[Tensor, Tensor]:
    """Fused first half of a NeuMF forward pass; returns ``(gmf, mlp_in)``.

    Args:
        user: dense ``[B, L, D]`` float sequence, or int32/int64 ids ``[B, L]`` into ``user_table``.
        item: dense ``[B, D_i]`` float vectors, or int32/int64 ids ``[B]`` into ``item_table``.
        h_mf: width of the GMF part; the rest of each projection is its MLP part.
        user_mask: optional bool ``[B, L]`` for dense input; ``False`` positions are ignored.
        padding_idx: for id input, the id that marks an empty position.
        user_weight / item_weight: the stacked ``[H_mf + H_mlp, D]`` projection of each side, or
            ``None`` to split the pooled vector itself as ``[mf | mlp]``.
        user_bias / item_bias: optional ``[H_mf + H_mlp]`` biases.
        mode: ``"sum"`` or ``"mean"`` pooling (a row with nothing unmasked pools to zeros).
        backend: ``"auto"``, ``"triton"``, ``"cuda"``, ``"cpu"`` or ``"torch"``; ``NEUMF_FAST_BACKEND``
            overrides it.  Under ``torch.autocast`` every float input is cast to the autocast
            dtype first, so the kernels' bf16/fp16 paths run (in eager mode an id side that
            reads fewer positions than its table has rows casts only the rows it reads).
        table_optimizer: a ``neumf_fast.TableOptimizer`` holding ``user_table`` and/or
            ``item_table``: the backward updates those tables' rows in place instead of giving
            them a ``.grad`` (``ops/table_update.py``).

    Returns:
        ``gmf = mf_user * mf_item`` of shape ``[B, h_mf]`` and
        ``mlp_in = cat(mlp_user, mlp_item)`` of shape ``[B, H_mlp_user + H_mlp_item]``.
    """
    return run_fused(FusedArgs(user, user_mask, user_table, padding_idx, item, item_table,
                               user_weight, user_bias, item_weight, item_bias, h_mf, mode), backend, table_optimizer)


def run_fused(args: FusedArgs, backend: str = "auto", table_optimizer=None) -> tuple[Tensor, Tensor]:
    """``neumf_input`` on its arguments as one ``FusedArgs``: the id sides a table optimizer
    updates are gathered (``rows_for_update``, when autograd records the call), under autocast
    the inputs are cast (and an id side gathered, see ``_autocast_inputs``), then the backend
    chosen for the call's kind (``select_backend``, cached) validates and runs it."""
    device = args.user.device if isinstance(args.user, Tensor) else None
    if _id_check._PENDING and not torch.compiler.is_compiling():
        _id_check.raise_pending(wait=True)  # a bad id an earlier call recorded (see _id_check)
    if table_optimizer is not None and args.needs_grad():
        args = rows_for_update(args, table_optimizer, backend)
    gathered = False
    if device is not None and torch.is_autocast_enabled(device.type):
        args, gathered = _autocast_inputs(args, device.type)
    out = select_backend(kind_of(args), backend).run(args)
    if gathered and not capturing(args.user) and _id_check.mode() == "deferred":
        _id_check.after_launch(device, "deferred")  # ids the gather checked: read back without a sync
    return out


def _autocast_inputs(args: FusedArgs, device_type: str) -> tuple[FusedArgs, bool]:
    """Under autocast, the kernels' low-precision path: every float input goes to the autocast
    dtype (a differentiable cast, so fp32 parameters get fp32 gradients).  Also returns whether
    an id side was gathered here (its ids were checked here, see ``_gathered_rows``)."""
    low = torch.get_autocast_dtype(device_type)
    gathered = False
    if not torch.compiler.is_compiling():
        # A call that reads fewer rows than a table holds casts the rows it reads, not the
        # table: casting the table costs its size every step, forward and backward.
        if args.user_mask is None and _gather_first(args.user, args.user_table, low, 2):
            user, user_mask = _gathered_rows(args.user, args.user_table, args.padding_idx, "user")
            args, gathered = args._replace(user=user, user_mask=user_mask, user_table=None, padding_idx=None), True
        if _gather_first(args.item, args.item_table, low, 1):
            item, _ = _gathered_rows(args.item, args.item_table, None, "item")
            args, gathered = args._replace(item=item, item_table=None), True
    cast = lambda t: t.to(low) if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != low else t
    return FusedArgs(*(cast(a) for a in args)), gathered


def _gather_first(ids: Tensor, table: Tensor | None, low: torch.dtype, rank: int) -> bool:
    """Whether an id side under autocast should gather its rows and cast them, rather than cast
    its whole table: fewer positions than table rows (shapes the checks will reject are left to
    them)."""
    return (table is not None and ids.dtype in (torch.int32, torch.int64) and ids.dim() == rank
            and table.dim() == 2 and table.is_floating_point() and table.dtype != low
            and ids.device == table.device and ids.numel() < table.shape[0])


def _gathered_rows(ids: Tensor, table: Tensor, padding_idx: int | None, name: str) -> tuple[Tensor, Tensor | None]:
    """(``table[ids]`` in the table's dtype, the mask of the positions to pool, or None): the
    dense input that pools exactly what the id input would.  A bad id is clamped to row 0 and
    masked out (a bad item's row is zeroed) on the device, and recorded for ``_id_check`` with
    aten ops: no host sync (``NEUMF_FAST_CHECK_IDS=sync`` or a CUDA graph capture: the
    synchronous check / device assert of ``check_id_range``)."""
    keep = ids != padding_idx if padding_idx is not None else None
    if capturing(ids) or _id_check.mode() == "sync":
        check_id_range(ids, keep, table.shape[0], name)
        safe = ids.masked_fill(~keep, 0) if keep is not None else ids  # a padding id may lie outside the table
        return torch.nn.functional.embedding(safe, table), keep
    bad = _id_check.record_bad_ids(ids, keep, table.shape[0], name)
    drop = bad if keep is None else bad | ~keep
    rows = torch.nn.functional.embedding(ids.masked_fill(drop, 0), table)
    if ids.dim() == 1:  # the item side: no mask to carry, so its bad rows are zeroed
        return rows.masked_fill(bad[:, None], 0), None
    return rows, ~drop


def warmup(model: torch.nn.Module, batch) -> None:
    """Compiles, once, the kernels a training run of ``model`` needs, before the first step: one
    forward that saves for backward, its backward, and one inference forward (``no_grad``).
    ``batch`` is what the model is called with: a tensor, a tuple of positional arguments or a
    dict of keywords.  Gradients and the model's train/eval mode are left as they were.

    The Triton kernels take the batch size out of their specialisation, so one warm-up covers
    every batch of the run, a ragged last one included (tests/test_gpu_offline.py counts them);
    the C++ kernels need nothing compiled and the call costs one small step.
    """
    call = (lambda: model(**batch)) if isinstance(batch, dict) else (
        (lambda: model(*batch)) if isinstance(batch, (tuple, list)) else (lambda: model(batch)))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad for p in params]
    was_training = model.training
    try:
        model.train()
        out = call()
        out = out[0] if isinstance(out, (tuple, list)) else out
        out.float().sum().backward()
        model.eval()
        with torch.no_grad():
            call()
    finally:
        for p, g in zip(params, grads):
            p.grad = g
        model.train(was_training)


__all__ = [
    "BACKENDS", "ENV_VAR", "PREFERENCE", "BackendUnavailable", "CallKind", "FusedArgs", "FusedDims",
    "available_backends", "check_inputs", "kind_of", "neumf_input", "run_fused", "select_backend", "warmup",
]
