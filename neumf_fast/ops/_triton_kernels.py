"""Triton kernels of the fused NeuMF input op (``backend="triton"``).

Math (see ``neumf_fast.reference``), for a block of BLOCK_B rows per program:

    forward   pooled_u = scale · Σ_l keep[b,l] · x[b,l,:]      (x dense, or user_table[ids])
              mf_u | mlp_u = pooled_u · [W_mf | W_mlp]ᵀ + b     (or the columns of pooled_u)
              the item side likewise with L = 1; gmf = mf_u ⊙ mf_i; mlp_in = [mlp_u | mlp_i]
    backward  d_mf_u = d_gmf ⊙ mf_i, d_mf_i = d_gmf ⊙ mf_u, d_mlp_* = the halves of d_mlp_in
              d_pooled = [d_mf | d_mlp] · W  (or [d_mf | d_mlp] itself with no projection)
              d_x[b,l] = keep · scale · d_pooled[b]   (dense), or scattered into the table rows
              d_W = d_projᵀ · pooled and d_b = Σ_b d_proj: a library GEMM and a column sum on the
              saved fp32 d_proj and pooled (triton_backend._weight_grads), no atomics

Tiling.  The forward loops over D in BLOCK_K tiles; for each tile it pools the sequence over L
in registers (fp32) and immediately multiplies the tile into the MF and MLP accumulators with
``tl.dot``, so the pooled row never goes to memory between pooling and projection.  The item
side runs in the same program.  The epilogue adds the biases and forms the GMF product.

Saved for backward (only when autograd needs it): pooled_user and pooled_item (fp32, for d_W),
and mf_user and mf_item (fp32, for the GMF product's gradient).  The MLP halves of the
projections are not needed by the backward and are not saved.

Precision: fp32 accumulation always.  fp32 dots run in IEEE precision (``PRECISION="ieee"``)
unless ``torch.backends.cuda.matmul.allow_tf32`` is set (``"tf32"``); bf16/fp16 inputs go to
the dots in their own dtype, with fp32 accumulation.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# NEUMF_FAST_TRITON_AUTOTUNE=0: one config, no search (the tests set it: dozens of shapes would
# otherwise each compile and time every config)
AUTOTUNE = os.environ.get("NEUMF_FAST_TRITON_AUTOTUNE", "1") != "0" and not INTERPRET


def _forward_configs():
    if not AUTOTUNE:
        return [triton.Config({"BLOCK_B": 16 if INTERPRET else 32, "BLOCK_K": 16 if INTERPRET else 64}, num_warps=4)]
    # small BLOCK_B for serving-sized batches (more programs), large for training-sized ones
    return [triton.Config({"BLOCK_B": bb, "BLOCK_K": bk}, num_warps=w, num_stages=st)
            for bb, bk, w, st in ((16, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 3), (64, 64, 8, 3), (128, 32, 8, 3))]


@triton.jit
def _pool_tile(src, ids_ptr, mask_ptr, rows64, row_ok, cols, col_ok, L, pad,
               stride_s0, stride_s1, stride_s2, stride_i0, stride_i1,
               IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr, BLOCK_B: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """Σ_l keep[b,l] · x[b,l,cols] for one column tile, in fp32."""
    acc = tl.zeros([BLOCK_B, BLOCK_K], dtype=tl.float32)
    for l in range(0, L):
        keep = row_ok
        if IDS:
            ids = tl.load(ids_ptr + rows64 * stride_i0 + l * stride_i1, mask=row_ok, other=0).to(tl.int64)
            if HAS_PAD:
                keep = keep & (ids != pad)
            ptrs = src + ids[:, None] * stride_s0 + cols[None, :].to(tl.int64) * stride_s1
        else:
            if HAS_MASK:
                keep = keep & (tl.load(mask_ptr + rows64 * L + l, mask=row_ok, other=0) != 0)
            ptrs = src + rows64[:, None] * stride_s0 + l * stride_s1 + cols[None, :].to(tl.int64) * stride_s2
        x = tl.load(ptrs, mask=keep[:, None] & col_ok[None, :], other=0.0)
        acc += x.to(tl.float32)
    return acc


@triton.jit
def _row_scale(ids_ptr, mask_ptr, rows64, row_ok, L, pad, stride_i0, stride_i1,
               IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr, MEAN: tl.constexpr,
               BLOCK_B: tl.constexpr):
    """1 (sum) or 1 / max(1, kept positions) (mean) per row."""
    scale = tl.full([BLOCK_B], 1.0, dtype=tl.float32)
    if MEAN:
        count = tl.zeros([BLOCK_B], dtype=tl.float32)
        for l in range(0, L):
            keep = row_ok
            if IDS:
                if HAS_PAD:
                    ids = tl.load(ids_ptr + rows64 * stride_i0 + l * stride_i1, mask=row_ok, other=0).to(tl.int64)
                    keep = keep & (ids != pad)
            else:
                if HAS_MASK:
                    keep = keep & (tl.load(mask_ptr + rows64 * L + l, mask=row_ok, other=0) != 0)
            count += keep.to(tl.float32)
        scale = 1.0 / tl.maximum(count, 1.0)
    return scale


@triton.jit
def _side_forward(src, ids_ptr, mask_ptr, w_ptr, b_ptr, pooled_ptr, mf_ptr, rows64, row_ok, scale,
                  L, D, H_MF, H_MLP, pad,
                  stride_s0, stride_s1, stride_s2, stride_i0, stride_i1,
                  IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr, PROJ: tl.constexpr,
                  BIAS: tl.constexpr, SAVE: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_MF: tl.constexpr, BLOCK_MLP: tl.constexpr):
    """(mf [BLOCK_B, BLOCK_MF], mlp [BLOCK_B, BLOCK_MLP]) of one side, fp32."""
    h_mf = tl.arange(0, BLOCK_MF)
    h_mlp = tl.arange(0, BLOCK_MLP)
    mf_ok = h_mf < H_MF
    mlp_ok = h_mlp < H_MLP
    if PROJ:
        mf = tl.zeros([BLOCK_B, BLOCK_MF], dtype=tl.float32)
        mlp = tl.zeros([BLOCK_B, BLOCK_MLP], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < D
            tile = _pool_tile(src, ids_ptr, mask_ptr, rows64, row_ok, cols, col_ok, L, pad,
                              stride_s0, stride_s1, stride_s2, stride_i0, stride_i1,
                              IDS, HAS_MASK, HAS_PAD, BLOCK_B, BLOCK_K) * scale[:, None]
            if SAVE:
                tl.store(pooled_ptr + rows64[:, None] * D + cols[None, :], tile, mask=row_ok[:, None] & col_ok[None, :])
            w_mf = tl.load(w_ptr + h_mf[:, None] * D + cols[None, :], mask=mf_ok[:, None] & col_ok[None, :], other=0.0)
            w_mlp = tl.load(w_ptr + (H_MF + h_mlp[:, None]) * D + cols[None, :],
                            mask=mlp_ok[:, None] & col_ok[None, :], other=0.0)
            a = tile.to(w_mf.dtype)
            mf += tl.dot(a, tl.trans(w_mf), input_precision=PRECISION)
            mlp += tl.dot(a, tl.trans(w_mlp), input_precision=PRECISION)
        if BIAS:
            mf += tl.load(b_ptr + h_mf, mask=mf_ok, other=0.0).to(tl.float32)[None, :]
            mlp += tl.load(b_ptr + H_MF + h_mlp, mask=mlp_ok, other=0.0).to(tl.float32)[None, :]
    else:
        # no projection: the pooled vector itself is [mf | mlp]
        mf = _pool_tile(src, ids_ptr, mask_ptr, rows64, row_ok, h_mf, mf_ok, L, pad,
                        stride_s0, stride_s1, stride_s2, stride_i0, stride_i1,
                        IDS, HAS_MASK, HAS_PAD, BLOCK_B, BLOCK_MF) * scale[:, None]
        mlp = _pool_tile(src, ids_ptr, mask_ptr, rows64, row_ok, H_MF + h_mlp, mlp_ok, L, pad,
                         stride_s0, stride_s1, stride_s2, stride_i0, stride_i1,
                         IDS, HAS_MASK, HAS_PAD, BLOCK_B, BLOCK_MLP) * scale[:, None]
    if SAVE:
        tl.store(mf_ptr + rows64[:, None] * H_MF + h_mf[None, :], mf, mask=row_ok[:, None] & mf_ok[None, :])
    return mf, mlp


@triton.jit
def fused_forward_kernel(
    user, user_mask, user_src, item, item_src, user_w, user_b, item_w, item_b,
    gmf_out, mlp_out, pooled_user, pooled_item, mf_user, mf_item,
    B, L, D, DI, H_MF, H_MLP_U, H_MLP_I, pad,
    su0, su1, su2, sui0, sui1, si0, si1, si2, sii0, B_CLASS,
    USER_IDS: tl.constexpr, ITEM_IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr,
    MEAN: tl.constexpr, USER_PROJ: tl.constexpr, ITEM_PROJ: tl.constexpr, USER_BIAS: tl.constexpr,
    ITEM_BIAS: tl.constexpr, SAVE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_MF: tl.constexpr, BLOCK_MLP_U: tl.constexpr, BLOCK_MLP_I: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """user_src / item_src: the table (id input) or the dense tensor itself.  Strides:
    ``su*``/``si*`` of the source as [row, position, column] (a table: [id, column, -]),
    ``sui*``/``sii0`` of the ids.  ``B_CLASS`` (0: serving-sized B, 1: training-sized) is only an
    autotuning key."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    scale = _row_scale(user, user_mask, rows64, row_ok, L, pad, sui0, sui1,
                       USER_IDS, HAS_MASK, HAS_PAD, MEAN, BLOCK_B)
    mf_u, mlp_u = _side_forward(user_src, user, user_mask, user_w, user_b, pooled_user, mf_user, rows64, row_ok, scale,
                                L, D, H_MF, H_MLP_U, pad, su0, su1, su2, sui0, sui1,
                                USER_IDS, HAS_MASK, HAS_PAD, USER_PROJ, USER_BIAS, SAVE, PRECISION,
                                BLOCK_B, BLOCK_K, BLOCK_MF, BLOCK_MLP_U)
    ones = tl.full([BLOCK_B], 1.0, dtype=tl.float32)
    # the item is a sequence of length 1
    mf_i, mlp_i = _side_forward(item_src, item, user_mask, item_w, item_b, pooled_item, mf_item, rows64, row_ok, ones,
                                1, DI, H_MF, H_MLP_I, pad, si0, si1, si2, sii0, 0,
                                ITEM_IDS, False, False, ITEM_PROJ, ITEM_BIAS, SAVE, PRECISION,
                                BLOCK_B, BLOCK_K, BLOCK_MF, BLOCK_MLP_I)
    h_mf = tl.arange(0, BLOCK_MF)
    h_u = tl.arange(0, BLOCK_MLP_U)
    h_i = tl.arange(0, BLOCK_MLP_I)
    W = H_MLP_U + H_MLP_I
    tl.store(gmf_out + rows64[:, None] * H_MF + h_mf[None, :], (mf_u * mf_i).to(gmf_out.dtype.element_ty),
             mask=row_ok[:, None] & (h_mf < H_MF)[None, :])
    tl.store(mlp_out + rows64[:, None] * W + h_u[None, :], mlp_u.to(mlp_out.dtype.element_ty),
             mask=row_ok[:, None] & (h_u < H_MLP_U)[None, :])
    tl.store(mlp_out + rows64[:, None] * W + H_MLP_U + h_i[None, :], mlp_i.to(mlp_out.dtype.element_ty),
             mask=row_ok[:, None] & (h_i < H_MLP_I)[None, :])


@triton.jit
def _side_backward(d_mf, d_mlp, w_ptr, dproj_ptr, dsrc_ptr, ids_ptr, mask_ptr, rows64, row_ok, scale,
                   L, D, H_MF, H_MLP, pad, stride_i0, stride_i1,
                   IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr, PROJ: tl.constexpr,
                   SAVE_DPROJ: tl.constexpr, WANT_SRC: tl.constexpr, ATOMIC: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_MF: tl.constexpr, BLOCK_MLP: tl.constexpr):
    """Stores d_proj (for the weight pass) and the source gradient of one side.

    Source gradient: dense ``[B, L, D]`` written directly; for ids, either atomically added into
    the table gradient (``ATOMIC``) or written as scaled ``d_pooled [B, D]`` for the
    deterministic segment reduction.
    """
    h_mf = tl.arange(0, BLOCK_MF)
    h_mlp = tl.arange(0, BLOCK_MLP)
    mf_ok = h_mf < H_MF
    mlp_ok = h_mlp < H_MLP
    H = H_MF + H_MLP
    if SAVE_DPROJ:
        tl.store(dproj_ptr + rows64[:, None] * H + h_mf[None, :], d_mf, mask=row_ok[:, None] & mf_ok[None, :])
        tl.store(dproj_ptr + rows64[:, None] * H + H_MF + h_mlp[None, :], d_mlp, mask=row_ok[:, None] & mlp_ok[None, :])
    if WANT_SRC:
        if PROJ:
            for k0 in range(0, D, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                col_ok = cols < D
                w_mf = tl.load(w_ptr + h_mf[:, None] * D + cols[None, :], mask=mf_ok[:, None] & col_ok[None, :], other=0.0)
                w_mlp = tl.load(w_ptr + (H_MF + h_mlp[:, None]) * D + cols[None, :],
                                mask=mlp_ok[:, None] & col_ok[None, :], other=0.0)
                dp = tl.dot(d_mf.to(w_mf.dtype), w_mf, input_precision=PRECISION)
                dp += tl.dot(d_mlp.to(w_mlp.dtype), w_mlp, input_precision=PRECISION)
                _scatter_tile(dp * scale[:, None], cols, col_ok, dsrc_ptr, ids_ptr, mask_ptr, rows64, row_ok,
                              L, D, pad, stride_i0, stride_i1, IDS, HAS_MASK, HAS_PAD, ATOMIC, BLOCK_B)
        else:
            _scatter_tile(d_mf * scale[:, None], h_mf, mf_ok, dsrc_ptr, ids_ptr, mask_ptr, rows64, row_ok,
                          L, D, pad, stride_i0, stride_i1, IDS, HAS_MASK, HAS_PAD, ATOMIC, BLOCK_B)
            _scatter_tile(d_mlp * scale[:, None], H_MF + h_mlp, mlp_ok, dsrc_ptr, ids_ptr, mask_ptr, rows64,
                          row_ok, L, D, pad, stride_i0, stride_i1, IDS, HAS_MASK, HAS_PAD, ATOMIC, BLOCK_B)


@triton.jit
def _scatter_tile(dp, cols, col_ok, dsrc_ptr, ids_ptr, mask_ptr, rows64, row_ok, L, D, pad, stride_i0, stride_i1,
                  IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr, ATOMIC: tl.constexpr,
                  BLOCK_B: tl.constexpr):
    cols64 = cols.to(tl.int64)
    if IDS:
        if ATOMIC:
            for l in range(0, L):
                ids = tl.load(ids_ptr + rows64 * stride_i0 + l * stride_i1, mask=row_ok, other=0).to(tl.int64)
                keep = row_ok
                if HAS_PAD:
                    keep = keep & (ids != pad)
                tl.atomic_add(dsrc_ptr + ids[:, None] * D + cols64[None, :], dp, mask=keep[:, None] & col_ok[None, :])
        else:
            tl.store(dsrc_ptr + rows64[:, None] * D + cols64[None, :], dp, mask=row_ok[:, None] & col_ok[None, :])
    else:
        for l in range(0, L):
            keep = row_ok
            if HAS_MASK:
                keep = keep & (tl.load(mask_ptr + rows64 * L + l, mask=row_ok, other=0) != 0)
            val = tl.where(keep[:, None], dp, 0.0)
            tl.store(dsrc_ptr + (rows64[:, None] * L + l) * D + cols64[None, :], val.to(dsrc_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def fused_backward_rows_kernel(
    d_gmf, d_mlp_in, mf_user, mf_item, user, user_mask, item, user_w, item_w,
    dproj_user, dproj_item, dsrc_user, dsrc_item,
    B, L, D, DI, H_MF, H_MLP_U, H_MLP_I, pad, sui0, sui1, sii0,
    USER_IDS: tl.constexpr, ITEM_IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr,
    MEAN: tl.constexpr, USER_PROJ: tl.constexpr, ITEM_PROJ: tl.constexpr,
    SAVE_DPROJ_U: tl.constexpr, SAVE_DPROJ_I: tl.constexpr, WANT_USER: tl.constexpr, WANT_ITEM: tl.constexpr,
    ATOMIC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_MF: tl.constexpr, BLOCK_MLP_U: tl.constexpr, BLOCK_MLP_I: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    h_mf = tl.arange(0, BLOCK_MF)
    h_u = tl.arange(0, BLOCK_MLP_U)
    h_i = tl.arange(0, BLOCK_MLP_I)
    mf_mask = row_ok[:, None] & (h_mf < H_MF)[None, :]
    W = H_MLP_U + H_MLP_I
    g = tl.load(d_gmf + rows64[:, None] * H_MF + h_mf[None, :], mask=mf_mask, other=0.0).to(tl.float32)
    mfu = tl.load(mf_user + rows64[:, None] * H_MF + h_mf[None, :], mask=mf_mask, other=0.0)
    mfi = tl.load(mf_item + rows64[:, None] * H_MF + h_mf[None, :], mask=mf_mask, other=0.0)
    d_mlp_u = tl.load(d_mlp_in + rows64[:, None] * W + h_u[None, :], mask=row_ok[:, None] & (h_u < H_MLP_U)[None, :],
                      other=0.0).to(tl.float32)
    d_mlp_i = tl.load(d_mlp_in + rows64[:, None] * W + H_MLP_U + h_i[None, :],
                      mask=row_ok[:, None] & (h_i < H_MLP_I)[None, :], other=0.0).to(tl.float32)
    scale = _row_scale(user, user_mask, rows64, row_ok, L, pad, sui0, sui1,
                       USER_IDS, HAS_MASK, HAS_PAD, MEAN, BLOCK_B)
    ones = tl.full([BLOCK_B], 1.0, dtype=tl.float32)
    _side_backward(g * mfi, d_mlp_u, user_w, dproj_user, dsrc_user, user, user_mask, rows64, row_ok, scale,
                   L, D, H_MF, H_MLP_U, pad, sui0, sui1,
                   USER_IDS, HAS_MASK, HAS_PAD, USER_PROJ, SAVE_DPROJ_U, WANT_USER, ATOMIC, PRECISION,
                   BLOCK_B, BLOCK_K, BLOCK_MF, BLOCK_MLP_U)
    _side_backward(g * mfu, d_mlp_i, item_w, dproj_item, dsrc_item, item, user_mask, rows64, row_ok, ones,
                   1, DI, H_MF, H_MLP_I, pad, sii0, 0,
                   ITEM_IDS, False, False, ITEM_PROJ, SAVE_DPROJ_I, WANT_ITEM, ATOMIC, PRECISION,
                   BLOCK_B, BLOCK_K, BLOCK_MF, BLOCK_MLP_I)


@triton.jit
def segment_sum_kernel(d_pooled, order, starts, ends, sorted_ids, out, ROWS, L, D, BLOCK_D: tl.constexpr):
    """Deterministic table gradient.  Positions are sorted stably by id; program j is the j-th
    sorted position, and if it starts a run of equal ids it sums ``d_pooled[order[k] // L]``
    over the run in that order and writes the row.  Padding sorts last as id ``ROWS``."""
    j = tl.program_id(0)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = ds < D
    row_id = tl.load(sorted_ids + j)
    if (tl.load(starts + j) == j) & (row_id < ROWS):
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for k in range(j, tl.load(ends + j)):
            row = tl.load(order + k) // L
            acc += tl.load(d_pooled + row * D + ds, mask=d_ok, other=0.0)
        tl.store(out + row_id * D + ds, acc.to(out.dtype.element_ty), mask=d_ok)


FORWARD_CONFIGS = _forward_configs()
