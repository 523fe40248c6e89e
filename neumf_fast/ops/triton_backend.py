"""``backend="triton"``: launchers for the kernels in ``_triton_kernels``, their registration as
``torch.library.triton_op`` (so ``torch.compile(fullgraph=True)`` keeps the kernels), and autograd.

Layers, as in Liger-Kernel: ``_triton_kernels`` (the ``@triton.jit`` kernels) → the launchers
here (validate once, pick block sizes by a rule, allocate only outputs and saves) registered as
ops → autograd → ``neumf_input`` and the modules.  On the CPU the kernels run only under
``TRITON_INTERPRET=1`` (tests).

Compiling: one config per shape, from ``_forward_config`` / ``_backward_config`` (a rule on the
widths, as Liger-Kernel's ``calculate_settings``), so a new shape compiles each kernel once and
times nothing.  ``NEUMF_FAST_TRITON_AUTOTUNE=1`` searches a few configs around the rule instead
(``triton.autotune`` with ``cache_results``).  ``warmup`` compiles what a training run needs.

Ids: checked in the kernels (``_id_check``): no host sync in the eager path.

Table gradients: ``tl.atomic_add(sem="relaxed")`` scatter by default; with
``torch.use_deterministic_algorithms(True)`` a sort-based segment reduction that adds each row's
contributions in a fixed order instead.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from . import _id_check
from ._checks import capturing, check_backward_inputs, check_inputs
from ._triton_configs import _backward_config, _block, _forward_config, _precision

try:
    import triton

    from . import _triton_kernels as K

    TRITON_ERROR: str | None = None
except Exception as e:  # ImportError, or a Triton that cannot initialise on this machine
    triton, K = None, None
    TRITON_ERROR = f"Triton is not available ({type(e).__name__}: {e})"

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
AUTOTUNE_ENV = "NEUMF_FAST_TRITON_AUTOTUNE"
AUTOTUNE = os.environ.get(AUTOTUNE_ENV, "0") == "1" and not INTERPRET
CHUNK = 32  # the deterministic table gradient's run length per program (segment_sum_kernel)


_SHARED: dict = {}


def _shared(device, size: int) -> Tensor:
    """One fp32 ``[size]`` tensor per device, made once: ``[1]``, the dummy pointer of an absent
    argument; ``[0]``, what an eager forward returns for a save it does not make."""
    t = _SHARED.get((device, size))
    if t is None:
        t = _SHARED[(device, size)] = torch.empty(size, device=device, dtype=torch.float32)
    return t


def _dummy(device) -> Tensor:
    return _shared(device, 1)


def _strides(dims, user, user_table, item, item_table):
    """Source strides as [row, position, column] (a table: [id, column, -]) and id strides."""
    if dims.user_ids:
        su = (user_table.stride(0), user_table.stride(1), 0)
        sui = (user.stride(0), user.stride(1))
    else:
        su = tuple(user.stride())
        sui = (0, 0)
    if dims.item_ids:
        si = (item_table.stride(0), item_table.stride(1), 0)
        sii = item.stride(0)
    else:
        si = (item.stride(0), 0, item.stride(1))
        sii = 0
    return su, sui, si, sii


def _check_mode(user: Tensor):
    """The id-check mode of an eager call; None under torch.compile or a CUDA graph capture,
    where nothing can be read back (a device-side assert instead)."""
    if torch.compiler.is_compiling() or capturing(user):
        return None
    return _id_check.mode()


if TRITON_ERROR is None:
    if AUTOTUNE:
        _forward_autotuned = triton.autotune(
            configs=[triton.Config({"BLOCK_B": bb, "BLOCK_K": bk}, num_warps=w) for bb, bk, w in
                     ((16, 32, 4), (32, 32, 4), (32, 64, 4), (64, 32, 8), (64, 64, 8))],
            key=["D", "DI", "H_MF", "H_MLP_U", "H_MLP_I", "L"], cache_results=True)(K.fused_forward_kernel)
    from torch.library import triton_op, wrap_triton

    def _cdiv(a: int, b: int) -> int:
        return -(-a // b)

    def triton_fused_input(
        user: Tensor, user_mask: Optional[Tensor], user_table: Optional[Tensor], padding_idx: Optional[int],
        item: Tensor, item_table: Optional[Tensor], user_weight: Optional[Tensor], user_bias: Optional[Tensor],
        item_weight: Optional[Tensor], item_bias: Optional[Tensor], h_mf: int, mode: str, save: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(gmf, mlp_in, pooled_user, pooled_item, mf_user, mf_item); the last four are fp32
        tensors saved for backward when ``save`` (pooled only with a projection), else empty."""
        return _launch_forward(user, user_mask, user_table, padding_idx, item, item_table, user_weight, user_bias,
                               item_weight, item_bias, h_mf, mode, save, False)

    def _launch_forward(user, user_mask, user_table, padding_idx, item, item_table, user_weight, user_bias,
                        item_weight, item_bias, h_mf, mode, save, eager):
        # eager: called directly (not as the op, not traced): the unsaved empties may be shared
        d = check_inputs(user, user_mask, user_table, padding_idx, item, item_table,
                         user_weight, user_bias, item_weight, item_bias, h_mf, mode)
        ids = d.user_ids or d.item_ids
        compiling = not eager and torch.compiler.is_compiling()
        live = not compiling and not capturing(user)  # an eager call, not captured: it can read back
        if _id_check._PENDING and live:
            _id_check.raise_pending(wait=True)  # a bad id of an earlier call
        check = _id_check.mode() if ids and live else None  # None: a device-side assert instead
        dev, B = d.device, d.batch
        h_mlp_u, h_mlp_i = d.user_proj - h_mf, d.item_proj - h_mf
        f32 = dict(device=dev, dtype=torch.float32)
        gmf = torch.empty((B, h_mf), device=dev, dtype=d.dtype)
        mlp_in = torch.empty((B, h_mlp_u + h_mlp_i), device=dev, dtype=d.dtype)
        # as the op, a fresh empty tensor each (an op's outputs may not alias); eager, one shared
        # (nothing writes it: it is only returned, or saved and checked for being empty)
        unsaved = (lambda: _shared(dev, 0)) if eager else (lambda: torch.empty((0,), **f32))
        pooled_user = torch.empty((B, d.user_dim), **f32) if save and user_weight is not None else unsaved()
        pooled_item = torch.empty((B, d.item_dim), **f32) if save and item_weight is not None else unsaved()
        mf_user = torch.empty((B, h_mf), **f32) if save else unsaved()
        mf_item = torch.empty((B, h_mf), **f32) if save else unsaved()
        if B == 0:
            return gmf, mlp_in, pooled_user, pooled_item, mf_user, mf_item
        if check is None and ids:
            _assert_ids_in_range(d, user, user_table, padding_idx, item, item_table)
        errors = (_id_check.error_buffer(dev) if check is not None or not compiling
                  else torch.zeros(6, dtype=torch.int64, device=dev))
        dummy = _dummy(dev)
        su, sui, si, sii = _strides(d, user, user_table, item, item_table)
        block_mf, block_u, block_i = _block(h_mf), _block(h_mlp_u), _block(h_mlp_i)
        cont = lambda t: t.contiguous() if t is not None else dummy
        args = (user, user_mask.contiguous() if user_mask is not None else dummy,
                user_table if d.user_ids else user, item, item_table if d.item_ids else item,
                cont(user_weight), cont(user_bias), cont(item_weight), cont(item_bias),
                gmf, mlp_in, pooled_user if pooled_user.numel() else dummy, pooled_item if pooled_item.numel() else dummy,
                mf_user if save else dummy, mf_item if save else dummy, errors,
                B, d.seq_len, d.user_dim, d.item_dim, h_mf, h_mlp_u, h_mlp_i,
                padding_idx if padding_idx is not None else -1,
                user_table.shape[0] if d.user_ids else 0, item_table.shape[0] if d.item_ids else 0,
                su[0], su[1], su[2], sui[0], sui[1], si[0], si[1], si[2], sii)
        meta = dict(USER_IDS=d.user_ids, ITEM_IDS=d.item_ids, HAS_MASK=user_mask is not None,
                    HAS_PAD=padding_idx is not None, MEAN=mode == "mean", USER_PROJ=user_weight is not None,
                    ITEM_PROJ=item_weight is not None, USER_BIAS=user_bias is not None,
                    ITEM_BIAS=item_bias is not None, SAVE=save, PRECISION=_precision(),
                    BLOCK_MF=block_mf, BLOCK_MLP_U=block_u, BLOCK_MLP_I=block_i)
        proj = user_weight is not None or item_weight is not None
        if AUTOTUNE:
            meta["NUM_STAGES"] = 2 if d.seq_len > 1 else 1
            grid = lambda m: (triton.cdiv(B, m["BLOCK_B"]),)
            wrap_triton(_forward_autotuned)[grid](*args, **meta)
        else:
            block_b, block_k, warps, stages = _forward_config(max(d.user_dim, d.item_dim), block_mf,
                                                              max(block_u, block_i), proj, d.seq_len == 1,
                                                              d.dtype == torch.float32)
            kernel = wrap_triton(K.fused_forward_kernel) if compiling else K.fused_forward_kernel
            kernel[(_cdiv(B, block_b),)](*args, **meta, BLOCK_B=block_b, BLOCK_K=block_k, NUM_STAGES=stages,
                                               num_warps=warps)
        if check is not None and ids:
            _id_check.after_launch(dev, check)
        return gmf, mlp_in, pooled_user, pooled_item, mf_user, mf_item

    def triton_fused_input_backward(
        grad_gmf: Tensor, grad_mlp_in: Tensor, user: Tensor, user_mask: Optional[Tensor],
        user_table: Optional[Tensor], padding_idx: Optional[int], item: Tensor, item_table: Optional[Tensor],
        user_weight: Optional[Tensor], user_bias: Optional[Tensor], item_weight: Optional[Tensor],
        item_bias: Optional[Tensor], h_mf: int, mode: str, pooled_user: Tensor, pooled_item: Tensor,
        mf_user: Tensor, mf_item: Tensor, output_mask: list[bool], deterministic: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Gradients of (user source, item source, user_weight, user_bias, item_weight,
        item_bias); an entry not asked for in ``output_mask`` is an empty tensor."""
        d = check_inputs(user, user_mask, user_table, padding_idx, item, item_table,
                         user_weight, user_bias, item_weight, item_bias, h_mf, mode)
        check_backward_inputs(d, grad_gmf, grad_mlp_in, pooled_user, pooled_item, mf_user, mf_item,
                               user_weight is not None, item_weight is not None)
        if _check_mode(user) is not None:
            _id_check.raise_pending(wait=False)  # only if the forward's copy has landed: no wait
        dev, B, L = d.device, d.batch, d.seq_len
        h_mlp_u, h_mlp_i = d.user_proj - h_mf, d.item_proj - h_mf
        want_u, want_i, want_uw, want_ub, want_iw, want_ib = output_mask
        want_ub, want_ib = want_ub and user_bias is not None, want_ib and item_bias is not None
        want_uw, want_iw = want_uw and user_weight is not None, want_iw and item_weight is not None
        f32 = dict(device=dev, dtype=torch.float32)
        dummy = _dummy(dev)
        none = lambda: torch.empty((0,), device=dev, dtype=d.dtype)

        def source_buffers(want, ids, table, dense_shape, rows, width):
            """(kernel target, final gradient or None): dense grads are written in place; table
            grads go to an fp32 buffer by atomics, or to d_pooled rows for the segment sum."""
            if not want:
                return dummy, None
            if not ids:
                out = torch.empty(dense_shape, device=dev, dtype=d.dtype)
                return out, out
            if deterministic:
                return torch.empty((rows, width), **f32), None
            acc = torch.zeros(table.shape, **f32)
            return acc, acc

        dsrc_u, grad_u = source_buffers(want_u, d.user_ids, user_table, (B, L, d.user_dim), B, d.user_dim)
        dsrc_i, grad_i = source_buffers(want_i, d.item_ids, item_table, (B, d.item_dim), B, d.item_dim)
        dproj_u = torch.empty((B, d.user_proj), **f32) if want_uw or want_ub else dummy
        dproj_i = torch.empty((B, d.item_proj), **f32) if want_iw or want_ib else dummy
        rows_u = user_table.shape[0] if d.user_ids else 0
        rows_i = item_table.shape[0] if d.item_ids else 0
        if B > 0:
            block_b, block_k, block_h, warps = _backward_config(
                max(d.user_dim, d.item_dim), max(d.user_proj, d.item_proj),
                user_weight is not None or item_weight is not None, d.dtype == torch.float32)
            su, sui, si, sii = _strides(d, user, user_table, item, item_table)
            mask = user_mask.contiguous() if user_mask is not None else dummy
            cont = lambda t: t.contiguous() if t is not None else dummy
            kernel = (wrap_triton(K.fused_backward_rows_kernel) if torch.compiler.is_compiling()
                      else K.fused_backward_rows_kernel)
            kernel[(_cdiv(B, block_b),)](
                grad_gmf.contiguous(), grad_mlp_in.contiguous(), mf_user, mf_item, user, mask, item,
                cont(user_weight), cont(item_weight), dproj_u, dproj_i, dsrc_u, dsrc_i,
                B, L, d.user_dim, d.item_dim, h_mf, h_mlp_u, h_mlp_i,
                padding_idx if padding_idx is not None else -1, rows_u, rows_i, sui[0], sui[1], sii,
                USER_IDS=d.user_ids, ITEM_IDS=d.item_ids, HAS_MASK=user_mask is not None,
                HAS_PAD=padding_idx is not None, MEAN=mode == "mean", USER_PROJ=user_weight is not None,
                ITEM_PROJ=item_weight is not None, SAVE_DPROJ_U=want_uw or want_ub, SAVE_DPROJ_I=want_iw or want_ib,
                WANT_USER=want_u, WANT_ITEM=want_i, ATOMIC=not deterministic, PRECISION=_precision(),
                BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_H=block_h, num_warps=warps,
            )
        if want_u and d.user_ids and deterministic:
            grad_u = _segment_sum(dsrc_u, user, padding_idx, rows_u, L, d.dtype)
        if want_i and d.item_ids and deterministic:
            grad_i = _segment_sum(dsrc_i, item[:, None], None, rows_i, 1, d.dtype)
        if grad_u is not None and d.user_ids and grad_u.dtype != d.dtype:
            grad_u = grad_u.to(d.dtype)
        if grad_i is not None and d.item_ids and grad_i.dtype != d.dtype:
            grad_i = grad_i.to(d.dtype)
        gw_u, gb_u = _weight_grads(dproj_u, pooled_user, want_uw, want_ub, d.dtype)
        gw_i, gb_i = _weight_grads(dproj_i, pooled_item, want_iw, want_ib, d.dtype)
        pick = lambda t: t if t is not None else none()
        return pick(grad_u), pick(grad_i), pick(gw_u), pick(gb_u), pick(gw_i), pick(gb_i)

    def _weight_grads(dproj, pooled, want_w, want_b, dtype):
        """d_W = d_projᵀ · pooled and d_b = Σ_b d_proj, from the saved fp32 tensors: one GEMM
        (cuBLAS on a GPU) and one column sum.  A Triton pass with one program per W tile looped
        over all B rows, which left a [2·64, 64] weight with a handful of programs on a 132-SM
        chip; a library GEMM splits the B reduction itself.  Both are deterministic; fp32 GEMMs
        follow ``allow_tf32`` as the forward's dots do."""
        if not (want_w or want_b):
            return None, None
        # A backward run inside torch.autocast would turn the GEMM bf16 (the C++ kernels exclude
        # autocast the same way, csrc/ops.cpp)
        with torch.autocast(dproj.device.type, enabled=False):
            dw = (dproj.t() @ pooled).to(dtype) if want_w else None
            db = dproj.sum(0).to(dtype) if want_b else None
        return dw, db

    def _segment_sum(d_pooled, ids, padding_idx, rows, L, dtype):
        """Deterministic table gradient: positions sorted (stably) by id; each run of equal ids
        is summed in that order, runs longer than ``CHUNK`` in chunks that a second pass adds in
        order.  Static shapes throughout (no host sync)."""
        dev = d_pooled.device
        flat = ids.reshape(-1).to(torch.int64)
        skip = (flat < 0) | (flat >= rows)  # out of range (reported by the forward) or padding: sorts last
        if padding_idx is not None:
            skip |= flat == padding_idx
        flat = torch.where(skip, torch.full_like(flat, rows), flat)
        sorted_ids, order = torch.sort(flat, stable=True)
        ends = torch.searchsorted(sorted_ids, sorted_ids, right=True)
        starts = torch.searchsorted(sorted_ids, sorted_ids, right=False)
        out = torch.zeros((rows, d_pooled.shape[1]), device=dev, dtype=dtype)
        n = flat.numel()
        if n:
            # the chunks of runs longer than CHUNK, numbered in sorted order: at most 2n / CHUNK
            positions = torch.arange(n, device=dev)
            cut = ((positions - starts) % CHUNK == 0) & (ends - starts > CHUNK)
            chunk_index = torch.cumsum(cut, 0) - 1
            partial = torch.empty((2 * n // CHUNK + 1, d_pooled.shape[1]), device=dev, dtype=torch.float32)
            bd = 16 if INTERPRET else 128
            grid = (n, triton.cdiv(d_pooled.shape[1], bd))
            launch = (lambda k: wrap_triton(k)) if torch.compiler.is_compiling() else (lambda k: k)
            launch(K.segment_sum_kernel)[grid](d_pooled, order, starts, ends, sorted_ids, chunk_index, partial, out,
                                               rows, L, d_pooled.shape[1], BLOCK_D=bd, CHUNK=CHUNK)
            launch(K.chunk_sum_kernel)[grid](partial, starts, ends, sorted_ids, chunk_index, out, rows,
                                             d_pooled.shape[1], BLOCK_D=bd, CHUNK=CHUNK)
        return out

    def _assert_ids_in_range(d, user, user_table, padding_idx, item, item_table):
        # traceable (torch.compile) and capturable (CUDA graphs): a device-side assert; the
        # kernels mask bad ids either way, so none is read before it fires
        if d.user_ids:
            keep = user != padding_idx if padding_idx is not None else torch.ones_like(user, dtype=torch.bool)
            bad = keep & ((user < 0) | (user >= user_table.shape[0]))
            torch._assert_async(~bad.any(), "neumf_fast: a user id is out of range for user_table")
        if d.item_ids:
            bad = (item < 0) | (item >= item_table.shape[0])
            torch._assert_async(~bad.any(), "neumf_fast: an item id is out of range for item_table")

    from ._library import AutogradGlue, make_eager_function, use_eager_function

    # The launchers are the ops' implementations; eager calls run them directly, below the
    # dispatcher (its autograd and dynamo wrappers cost ~60 µs a call), torch.compile the ops.
    _forward, _backward = triton_fused_input, triton_fused_input_backward
    triton_fused_input = triton_op("neumf_fast::triton_fused_input", mutates_args={})(_forward)
    triton_fused_input_backward = triton_op("neumf_fast::triton_fused_input_backward", mutates_args={})(_backward)
    _GLUE = AutogradGlue(lambda *a: (torch.ops.neumf_fast.triton_fused_input_backward(*a)
                                     if torch.compiler.is_compiling() else _backward(*a)),
                         extra=lambda: (torch.are_deterministic_algorithms_enabled(),))
    torch.library.register_autograd("neumf_fast::triton_fused_input", _GLUE.backward,
                                    setup_context=_GLUE.setup_context)
    _EagerTritonFusedInput = make_eager_function(
        "_EagerTritonFusedInput", lambda *a: _launch_forward(*a, True, True),
        _GLUE.save, _GLUE.backward)


def run_triton(user, user_mask, user_table, padding_idx, item, item_table,
               user_weight, user_bias, item_weight, item_bias, h_mf, mode):
    """``(gmf, mlp_in)`` from the Triton kernels; saves for backward only when autograd needs it."""
    args = (user, user_mask, user_table, padding_idx, item, item_table,
            user_weight, user_bias, item_weight, item_bias, h_mf, mode)
    if use_eager_function(args):
        return _EagerTritonFusedInput.apply(*args)
    save = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in args)
    if torch.compiler.is_compiling():
        gmf, mlp_in, *_saved = torch.ops.neumf_fast.triton_fused_input(*args, save)
    else:
        gmf, mlp_in, *_saved = _launch_forward(*args, save, True)
    return gmf, mlp_in


def triton_reasons(dims) -> list[str]:
    reasons = []
    if TRITON_ERROR is not None:
        reasons.append(TRITON_ERROR)
    if dims.device.type != "cuda" and not (INTERPRET and dims.device.type == "cpu"):
        reasons.append(f"the Triton kernels run on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), "
                       f"these are on {dims.device}")
    if dims.dtype == torch.float64:
        reasons.append("the Triton kernels take float32, bfloat16 and float16, not float64")
    if INTERPRET and dims.dtype == torch.bfloat16:
        reasons.append("the Triton interpreter (TRITON_INTERPRET=1) has no bfloat16 arithmetic")
    return reasons
