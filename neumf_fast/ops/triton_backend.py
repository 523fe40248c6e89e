"""``backend="triton"``: launchers for the kernels in ``_triton_kernels``, their registration as
``torch.library.triton_op`` (so ``torch.compile(fullgraph=True)`` keeps the kernels), and autograd.

Layers, as in Liger-Kernel: the ``@triton.jit`` kernels → the launchers here (validate once,
block sizes by a rule, allocate only outputs and saves) → ``Kernels`` and the registered ops →
``run_kernels``.  On the CPU the kernels run only under ``TRITON_INTERPRET=1`` (tests).
One config per shape from ``_triton_configs`` (a rule on the widths, as Liger-Kernel's
``calculate_settings``); ``NEUMF_FAST_TRITON_AUTOTUNE=1`` searches a few configs instead.  Ids are
checked in the kernels (``_id_check``), with no host sync.  Table gradients: a relaxed atomic
scatter, or under ``torch.use_deterministic_algorithms(True)`` a sorted segment sum.  The
``table_update_`` op (``table_update_`` here, launched by ``_triton_update``): sorted runs, no atomics.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

from . import _id_check, _triton_update
from ._autograd import Kernels, register_autograd
from ._checks import FusedArgs, capturing, check_backward_inputs, check_inputs
from ._triton_configs import _backward_config, _block, _forward_config, _precision


class _Missing:
    """Stands in for the kernels when Triton cannot be imported: any use raises why (torchao's
    pattern); ``triton_reasons`` reports the same reason before a call gets here."""

    def __init__(self, reason: str):
        self.reason = reason

    def __getattr__(self, name):
        raise RuntimeError(f"neumf_fast: backend 'triton' cannot run: {self.reason}")


try:
    import triton

    from . import _triton_kernels as K

    TRITON_ERROR: str | None = None
except Exception as e:  # ImportError, or a Triton that cannot initialise on this machine
    TRITON_ERROR = f"Triton is not available ({type(e).__name__}: {e})"
    triton = K = _Missing(TRITON_ERROR)

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
AUTOTUNE_ENV = "NEUMF_FAST_TRITON_AUTOTUNE"
AUTOTUNE = os.environ.get(AUTOTUNE_ENV, "0") == "1" and not INTERPRET and TRITON_ERROR is None
CHUNK = 32  # the deterministic table gradient's run length per program (segment_sum_kernel)
_FORWARD_AUTOTUNED = triton.autotune(
    configs=[triton.Config({"BLOCK_B": bb, "BLOCK_K": bk}, num_warps=w) for bb, bk, w in
             ((16, 32, 4), (32, 32, 4), (32, 64, 4), (64, 32, 8), (64, 64, 8))],
    key=["D", "DI", "H_MF", "H_MLP_U", "H_MLP_I", "L"], cache_results=True)(K.fused_forward_kernel) if AUTOTUNE else None


_SHARED: dict = {}


def _shared(device, size: int) -> Tensor:
    """One fp32 ``[size]`` tensor per device, made once: ``[1]``, the dummy pointer of an absent
    argument; ``[0]``, what an eager forward returns for a save it does not make."""
    t = _SHARED.get((device, size))
    if t is None:
        t = _SHARED[(device, size)] = torch.empty(size, device=device, dtype=torch.float32)
    return t


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _launcher(kernel):
    """The kernel as torch.compile must see it (``wrap_triton``), or as eager calls launch it."""
    return wrap_triton(kernel) if torch.compiler.is_compiling() else kernel


def _strides(dims, a: FusedArgs):
    """Source strides as [row, position, column] (a table: [id, column, -]) and id strides."""
    if dims.user_ids:
        su = (a.user_table.stride(0), a.user_table.stride(1), 0)
        sui = (a.user.stride(0), a.user.stride(1))
    else:
        su = tuple(a.user.stride())
        sui = (0, 0)
    if dims.item_ids:
        si = (a.item_table.stride(0), a.item_table.stride(1), 0)
        sii = a.item.stride(0)
    else:
        si = (a.item.stride(0), 0, a.item.stride(1))
        sii = 0
    return su, sui, si, sii


def launch_forward(a: FusedArgs, save: bool, eager: bool):
    """(gmf, mlp_in, pooled_user, pooled_item, mf_user, mf_item); the last four are fp32
    tensors saved for backward when ``save`` (pooled only with a projection), else empty.
    ``eager``: called directly (not as the op, not traced): the unsaved empties may be shared."""
    d = check_inputs(a)
    ids = d.user_ids or d.item_ids
    compiling = not eager and torch.compiler.is_compiling()
    live = not compiling and not capturing(a.user)  # an eager call, not captured: it can read back
    if _id_check._PENDING and live:
        _id_check.raise_pending(wait=True)  # a bad id of an earlier call
    check = _id_check.mode() if ids and live else None  # None: a device-side assert instead
    dev, B, h_mf = d.device, d.batch, a.h_mf
    h_mlp_u, h_mlp_i = d.user_proj - h_mf, d.item_proj - h_mf
    f32 = dict(device=dev, dtype=torch.float32)
    gmf = torch.empty((B, h_mf), device=dev, dtype=d.dtype)
    mlp_in = torch.empty((B, h_mlp_u + h_mlp_i), device=dev, dtype=d.dtype)
    # as the op, a fresh empty tensor each (an op's outputs may not alias); eager, one shared
    # (nothing writes it: it is only returned, or saved and checked for being empty)
    unsaved = (lambda: _shared(dev, 0)) if eager else (lambda: torch.empty((0,), **f32))
    pooled_user = torch.empty((B, d.user_dim), **f32) if save and a.user_weight is not None else unsaved()
    pooled_item = torch.empty((B, d.item_dim), **f32) if save and a.item_weight is not None else unsaved()
    mf_user = torch.empty((B, h_mf), **f32) if save else unsaved()
    mf_item = torch.empty((B, h_mf), **f32) if save else unsaved()
    if B == 0:
        return gmf, mlp_in, pooled_user, pooled_item, mf_user, mf_item
    if check is None and ids:
        _assert_ids_in_range(d, a)
    errors = (_id_check.error_buffer(dev) if check is not None or not compiling
              else torch.zeros(6, dtype=torch.int64, device=dev))
    dummy = _shared(dev, 1)
    su, sui, si, sii = _strides(d, a)
    block_mf, block_u, block_i = _block(h_mf), _block(h_mlp_u), _block(h_mlp_i)
    given = lambda t: t if t.numel() else dummy
    cont = lambda t: t.contiguous() if t is not None else dummy
    args = dict(
        user=a.user, user_mask=cont(a.user_mask), user_src=a.user_table if d.user_ids else a.user, item=a.item,
        item_src=a.item_table if d.item_ids else a.item, user_w=cont(a.user_weight), user_b=cont(a.user_bias),
        item_w=cont(a.item_weight), item_b=cont(a.item_bias), gmf_out=gmf, mlp_out=mlp_in,
        pooled_user=given(pooled_user), pooled_item=given(pooled_item), mf_user=given(mf_user),
        mf_item=given(mf_item), errors=errors, B=B, L=d.seq_len, D=d.user_dim, DI=d.item_dim, H_MF=h_mf,
        H_MLP_U=h_mlp_u, H_MLP_I=h_mlp_i, pad=a.padding_idx if a.padding_idx is not None else -1,
        ROWS_U=a.user_table.shape[0] if d.user_ids else 0, ROWS_I=a.item_table.shape[0] if d.item_ids else 0,
        su0=su[0], su1=su[1], su2=su[2], sui0=sui[0], sui1=sui[1], si0=si[0], si1=si[1], si2=si[2], sii0=sii,
        USER_IDS=d.user_ids, ITEM_IDS=d.item_ids, HAS_MASK=a.user_mask is not None,
        HAS_PAD=a.padding_idx is not None, MEAN=a.mode == "mean", USER_PROJ=a.user_weight is not None,
        ITEM_PROJ=a.item_weight is not None, USER_BIAS=a.user_bias is not None,
        ITEM_BIAS=a.item_bias is not None, SAVE=save, PRECISION=_precision(),
        BLOCK_MF=block_mf, BLOCK_MLP_U=block_u, BLOCK_MLP_I=block_i)
    if AUTOTUNE:
        _launcher(_FORWARD_AUTOTUNED)[lambda m: (triton.cdiv(B, m["BLOCK_B"]),)](
            **args, NUM_STAGES=2 if d.seq_len > 1 else 1)
    else:
        block_b, block_k, warps, stages = _forward_config(
            max(d.user_dim, d.item_dim), block_mf, max(block_u, block_i),
            a.user_weight is not None or a.item_weight is not None, d.seq_len == 1, d.dtype == torch.float32)
        _launcher(K.fused_forward_kernel)[(_cdiv(B, block_b),)](
            **args, BLOCK_B=block_b, BLOCK_K=block_k, NUM_STAGES=stages, num_warps=warps)
    if check is not None and ids:
        _id_check.after_launch(dev, check)
    return gmf, mlp_in, pooled_user, pooled_item, mf_user, mf_item


def launch_backward(grad_gmf: Tensor, grad_mlp_in: Tensor, a: FusedArgs, saved: tuple, output_mask,
                    deterministic: bool) -> tuple:
    """Gradients of (user source, item source, user_weight, user_bias, item_weight,
    item_bias); an entry not asked for in ``output_mask`` is an empty tensor."""
    d = check_inputs(a)
    pooled_user, pooled_item, mf_user, mf_item = saved
    check_backward_inputs(d, grad_gmf, grad_mlp_in, *saved, a.user_weight is not None, a.item_weight is not None)
    if not torch.compiler.is_compiling() and not capturing(a.user):
        _id_check.raise_pending(wait=False)  # only if the forward's copy has landed: no wait
    dev, B, L = d.device, d.batch, d.seq_len
    want_u, want_i, want_uw, want_ub, want_iw, want_ib = output_mask
    want_ub, want_ib = want_ub and a.user_bias is not None, want_ib and a.item_bias is not None
    want_uw, want_iw = want_uw and a.user_weight is not None, want_iw and a.item_weight is not None
    f32 = dict(device=dev, dtype=torch.float32)
    dummy = _shared(dev, 1)

    def source_buffers(want, ids, table, dense_shape, width):
        """(kernel target, final gradient or None): dense grads are written in place; table
        grads go to an fp32 buffer by atomics, or to d_pooled rows for the segment sum."""
        if not want:
            return dummy, None
        if not ids:
            out = torch.empty(dense_shape, device=dev, dtype=d.dtype)
            return out, out
        if deterministic:
            return torch.empty((B, width), **f32), None
        acc = torch.zeros(table.shape, **f32)
        return acc, acc

    dsrc_u, grad_u = source_buffers(want_u, d.user_ids, a.user_table, (B, L, d.user_dim), d.user_dim)
    dsrc_i, grad_i = source_buffers(want_i, d.item_ids, a.item_table, (B, d.item_dim), d.item_dim)
    dproj_u = torch.empty((B, d.user_proj), **f32) if want_uw or want_ub else dummy
    dproj_i = torch.empty((B, d.item_proj), **f32) if want_iw or want_ib else dummy
    rows_u = a.user_table.shape[0] if d.user_ids else 0
    rows_i = a.item_table.shape[0] if d.item_ids else 0
    if B > 0:
        block_b, block_k, block_h, warps = _backward_config(
            max(d.user_dim, d.item_dim), max(d.user_proj, d.item_proj),
            a.user_weight is not None or a.item_weight is not None, d.dtype == torch.float32)
        _, sui, _, sii = _strides(d, a)
        cont = lambda t: t.contiguous() if t is not None else dummy
        _launcher(K.fused_backward_rows_kernel)[(_cdiv(B, block_b),)](
            d_gmf=grad_gmf.contiguous(), d_mlp_in=grad_mlp_in.contiguous(), mf_user=mf_user, mf_item=mf_item,
            user=a.user, user_mask=cont(a.user_mask), item=a.item, user_w=cont(a.user_weight),
            item_w=cont(a.item_weight), dproj_user=dproj_u, dproj_item=dproj_i, dsrc_user=dsrc_u, dsrc_item=dsrc_i,
            B=B, L=L, D=d.user_dim, DI=d.item_dim, H_MF=a.h_mf, H_MLP_U=d.user_proj - a.h_mf,
            H_MLP_I=d.item_proj - a.h_mf, pad=a.padding_idx if a.padding_idx is not None else -1,
            ROWS_U=rows_u, ROWS_I=rows_i, sui0=sui[0], sui1=sui[1], sii0=sii,
            USER_IDS=d.user_ids, ITEM_IDS=d.item_ids, HAS_MASK=a.user_mask is not None,
            HAS_PAD=a.padding_idx is not None, MEAN=a.mode == "mean", USER_PROJ=a.user_weight is not None,
            ITEM_PROJ=a.item_weight is not None, SAVE_DPROJ_U=want_uw or want_ub, SAVE_DPROJ_I=want_iw or want_ib,
            WANT_USER=want_u, WANT_ITEM=want_i, ATOMIC=not deterministic, PRECISION=_precision(),
            BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_H=block_h, num_warps=warps)
    if want_u and d.user_ids and deterministic:
        grad_u = _segment_sum(dsrc_u, a.user, a.padding_idx, rows_u, L, d.dtype)
    if want_i and d.item_ids and deterministic:
        grad_i = _segment_sum(dsrc_i, a.item[:, None], None, rows_i, 1, d.dtype)
    gw_u, gb_u = _weight_grads(dproj_u, pooled_user, want_uw, want_ub, d.dtype)
    gw_i, gb_i = _weight_grads(dproj_i, pooled_item, want_iw, want_ib, d.dtype)
    none = lambda: torch.empty((0,), device=dev, dtype=d.dtype)
    return tuple(none() if t is None else t.to(d.dtype) for t in (grad_u, grad_i, gw_u, gb_u, gw_i, gb_i))



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
        _launcher(K.segment_sum_kernel)[grid](d_pooled, order, starts, ends, sorted_ids, chunk_index, partial, out,
                                           rows, L, d_pooled.shape[1], BLOCK_D=bd, CHUNK=CHUNK)
        _launcher(K.chunk_sum_kernel)[grid](partial, starts, ends, sorted_ids, chunk_index, out, rows,
                                         d_pooled.shape[1], BLOCK_D=bd, CHUNK=CHUNK)
    return out


def _assert_ids_in_range(d, a: FusedArgs):
    # traceable (torch.compile) and capturable (CUDA graphs): a device-side assert; the
    # kernels mask bad ids either way, so none is read before it fires
    if d.user_ids:
        keep = a.user != a.padding_idx if a.padding_idx is not None else torch.ones_like(a.user, dtype=torch.bool)
        bad = keep & ((a.user < 0) | (a.user >= a.user_table.shape[0]))
        torch._assert_async(~bad.any(), "neumf_fast: a user id is out of range for user_table")
    if d.item_ids:
        bad = (a.item < 0) | (a.item >= a.item_table.shape[0])
        torch._assert_async(~bad.any(), "neumf_fast: an item id is out of range for item_table")


def triton_fused_input(
    user: Tensor, user_mask: Optional[Tensor], user_table: Optional[Tensor], padding_idx: Optional[int],
    item: Tensor, item_table: Optional[Tensor], user_weight: Optional[Tensor], user_bias: Optional[Tensor],
    item_weight: Optional[Tensor], item_bias: Optional[Tensor], h_mf: int, mode: str, save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward as a ``triton_op`` (what torch.compile traces): ``launch_forward``."""
    return launch_forward(FusedArgs(user, user_mask, user_table, padding_idx, item, item_table, user_weight,
                                    user_bias, item_weight, item_bias, h_mf, mode), save, False)


def triton_fused_input_backward(
    grad_gmf: Tensor, grad_mlp_in: Tensor, user: Tensor, user_mask: Optional[Tensor],
    user_table: Optional[Tensor], padding_idx: Optional[int], item: Tensor, item_table: Optional[Tensor],
    user_weight: Optional[Tensor], user_bias: Optional[Tensor], item_weight: Optional[Tensor],
    item_bias: Optional[Tensor], h_mf: int, mode: str, pooled_user: Tensor, pooled_item: Tensor,
    mf_user: Tensor, mf_item: Tensor, output_mask: list[bool], deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward as a ``triton_op``: ``launch_backward``."""
    args = FusedArgs(user, user_mask, user_table, padding_idx, item, item_table, user_weight, user_bias,
                     item_weight, item_bias, h_mf, mode)
    return launch_backward(grad_gmf, grad_mlp_in, args, (pooled_user, pooled_item, mf_user, mf_item), output_mask,
                           deterministic)


def _eager_backward(grad_gmf, grad_mlp_in, *rest):
    """The backward as ``Kernels.backward`` calls it (the op's arguments, the saves, the mask)."""
    return launch_backward(grad_gmf, grad_mlp_in, FusedArgs(*rest[:12]), rest[12:16], rest[16],
                           torch.are_deterministic_algorithms_enabled())


def table_update_(table: Tensor, moment1: Tensor, moment2: Tensor, step: Tensor, ids: Tensor, grad: Tensor,
                  padding_idx: Optional[int], optimizer: str, lr: float, beta1: float, beta2: float, eps: float,
                  weight_decay: float) -> None:
    """The ``table_update_`` op (also as the ``triton_op`` ``triton_table_update_``): ``_triton_update.launch``."""
    reasons = triton_reasons(table)  # a tensor has the .device and .dtype that they read
    if reasons:
        raise RuntimeError("neumf_fast: backend 'triton' cannot update this table: " + "; ".join(reasons))
    _triton_update.launch(K.table_update_kernel, table, moment1, moment2, step, ids, grad, padding_idx, optimizer,
                          lr, beta1, beta2, eps, weight_decay)


KERNELS: Kernels | None = None
if TRITON_ERROR is None:
    # Registered for torch.compile (and direct torch.ops callers); eager calls run the launchers
    # below the dispatcher, whose autograd and dynamo wrappers cost about 60 µs a call.
    triton_op("neumf_fast::triton_fused_input", mutates_args={})(triton_fused_input)
    triton_op("neumf_fast::triton_fused_input_backward", mutates_args={})(triton_fused_input_backward)
    register_autograd("neumf_fast::triton_fused_input", lambda *a: torch.ops.neumf_fast.triton_fused_input_backward(
        *a, torch.are_deterministic_algorithms_enabled()))
    triton_op("neumf_fast::triton_table_update_", mutates_args={"table", "moment1", "moment2", "step"})(table_update_)
    KERNELS = Kernels(lambda *a: launch_forward(FusedArgs(*a[:12]), a[12], True), _eager_backward,
                      torch.ops.neumf_fast.triton_fused_input)


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
