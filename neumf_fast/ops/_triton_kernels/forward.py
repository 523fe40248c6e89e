"""The forward kernel: pooling, both projections and the GMF product in one program per row block."""

from __future__ import annotations

import triton
import triton.language as tl

from .common import _NO_ALIGN, _NO_SPEC, _record_bad_ids


@triton.jit
def _pool_tile(src, ids_ptr, mask_ptr, rows64, row_ok, cols, col_ok, L, pad, rows_in_table,
               stride_s0, stride_s1, stride_s2, stride_i0, stride_i1,
               IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr, BLOCK_B: tl.constexpr,
               BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr):
    """(Σ_l keep[b,l] · x[b,l,cols] in fp32, kept positions per row, per row: whether it holds a
    bad id and one of them)."""
    acc = tl.zeros([BLOCK_B, BLOCK_K], dtype=tl.float32)
    count = tl.zeros([BLOCK_B], dtype=tl.float32)
    bad_any = tl.zeros([BLOCK_B], dtype=tl.int32)
    bad_id = tl.zeros([BLOCK_B], dtype=tl.int64)
    cols64 = cols.to(tl.int64)
    for l in tl.range(0, L, num_stages=NUM_STAGES):
        keep = row_ok
        if IDS:
            ids = tl.load(ids_ptr + rows64 * stride_i0 + l * stride_i1, mask=row_ok, other=0).to(tl.int64)
            if HAS_PAD:
                keep = keep & (ids != pad)
            bad = keep & ((ids < 0) | (ids >= rows_in_table))
            bad_any = tl.where(bad, 1, bad_any)
            bad_id = tl.where(bad, ids, bad_id)
            keep = keep & (ids >= 0) & (ids < rows_in_table)
            ptrs = src + ids[:, None] * stride_s0 + cols64[None, :] * stride_s1
        else:
            if HAS_MASK:
                keep = keep & (tl.load(mask_ptr + rows64 * L + l, mask=row_ok, other=0) != 0)
            ptrs = src + rows64[:, None] * stride_s0 + l * stride_s1 + cols64[None, :] * stride_s2
        count += keep.to(tl.float32)
        x = tl.load(ptrs, mask=keep[:, None] & col_ok[None, :], other=0.0)
        acc += x.to(tl.float32)
    return acc, count, bad_any, bad_id


@triton.jit
def _side_forward(src, ids_ptr, mask_ptr, w_ptr, b_ptr, pooled_ptr, mf_ptr, mlp_out, mlp_col0, mlp_width,
                  errors, slot, rows64, row_ok, L, D, H_MF, H_MLP, pad, rows_in_table,
                  stride_s0, stride_s1, stride_s2, stride_i0, stride_i1,
                  IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr, MEAN: tl.constexpr,
                  PROJ: tl.constexpr, BIAS: tl.constexpr, SAVE: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_MF: tl.constexpr, BLOCK_MLP: tl.constexpr,
                  NUM_STAGES: tl.constexpr):
    """The side's MF half [BLOCK_B, BLOCK_MF] (fp32); its MLP half is stored into
    ``mlp_out[:, mlp_col0:]`` here, and its bad ids recorded."""
    h_mf = tl.arange(0, BLOCK_MF)
    h_mlp = tl.arange(0, BLOCK_MLP)
    mf_ok = h_mf < H_MF
    mlp_ok = h_mlp < H_MLP
    if PROJ:
        mf = tl.zeros([BLOCK_B, BLOCK_MF], dtype=tl.float32)
        mlp = tl.zeros([BLOCK_B, BLOCK_MLP], dtype=tl.float32)
        bad_any = tl.zeros([BLOCK_B], dtype=tl.int32)
        bad_id = tl.zeros([BLOCK_B], dtype=tl.int64)
        for k0 in range(0, D, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < D
            tile, count, bad_any, bad_id = _pool_tile(
                src, ids_ptr, mask_ptr, rows64, row_ok, cols, col_ok, L, pad, rows_in_table,
                stride_s0, stride_s1, stride_s2, stride_i0, stride_i1, IDS, HAS_MASK, HAS_PAD, BLOCK_B, BLOCK_K,
                NUM_STAGES)
            if MEAN:
                tile = tile * (1.0 / tl.maximum(count, 1.0))[:, None]
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
        mf, count, bad_any, bad_id = _pool_tile(
            src, ids_ptr, mask_ptr, rows64, row_ok, h_mf, mf_ok, L, pad, rows_in_table,
            stride_s0, stride_s1, stride_s2, stride_i0, stride_i1, IDS, HAS_MASK, HAS_PAD, BLOCK_B, BLOCK_MF,
            NUM_STAGES)
        mlp, count, bad_any, bad_id = _pool_tile(
            src, ids_ptr, mask_ptr, rows64, row_ok, H_MF + h_mlp, mlp_ok, L, pad, rows_in_table,
            stride_s0, stride_s1, stride_s2, stride_i0, stride_i1, IDS, HAS_MASK, HAS_PAD, BLOCK_B, BLOCK_MLP,
            NUM_STAGES)
        if MEAN:
            scale = 1.0 / tl.maximum(count, 1.0)
            mf = mf * scale[:, None]
            mlp = mlp * scale[:, None]
    tl.store(mlp_out + rows64[:, None] * mlp_width + mlp_col0 + h_mlp[None, :], mlp.to(mlp_out.dtype.element_ty),
             mask=row_ok[:, None] & mlp_ok[None, :])
    if SAVE:
        tl.store(mf_ptr + rows64[:, None] * H_MF + h_mf[None, :], mf, mask=row_ok[:, None] & mf_ok[None, :])
    if IDS:
        _record_bad_ids(errors, slot, bad_any, bad_id, rows_in_table)
    return mf


@triton.jit(do_not_specialize=_NO_SPEC, do_not_specialize_on_alignment=_NO_ALIGN)
def fused_forward_kernel(
    user, user_mask, user_src, item, item_src, user_w, user_b, item_w, item_b,
    gmf_out, mlp_out, pooled_user, pooled_item, mf_user, mf_item, errors,
    B, L, D, DI, H_MF, H_MLP_U, H_MLP_I, pad, ROWS_U, ROWS_I,
    su0, su1, su2, sui0, sui1, si0, si1, si2, sii0,
    USER_IDS: tl.constexpr, ITEM_IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr,
    MEAN: tl.constexpr, USER_PROJ: tl.constexpr, ITEM_PROJ: tl.constexpr, USER_BIAS: tl.constexpr,
    ITEM_BIAS: tl.constexpr, SAVE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_MF: tl.constexpr, BLOCK_MLP_U: tl.constexpr, BLOCK_MLP_I: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """user_src / item_src: the table (id input) or the dense tensor itself.  Strides:
    ``su*``/``si*`` of the source as [row, position, column] (a table: [id, column, -]),
    ``sui*``/``sii0`` of the ids.  ``ROWS_*``: table rows (ids must lie in ``[0, ROWS)``);
    ``errors``: the int64[6] bad-id record."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    W = H_MLP_U + H_MLP_I
    mf_u = _side_forward(user_src, user, user_mask, user_w, user_b, pooled_user, mf_user, mlp_out, 0, W,
                         errors, 0, rows64, row_ok, L, D, H_MF, H_MLP_U, pad, ROWS_U, su0, su1, su2, sui0, sui1,
                         USER_IDS, HAS_MASK, HAS_PAD, MEAN, USER_PROJ, USER_BIAS, SAVE, PRECISION,
                         BLOCK_B, BLOCK_K, BLOCK_MF, BLOCK_MLP_U, NUM_STAGES)
    # the item is a sequence of length 1 (no pipelining to do)
    mf_i = _side_forward(item_src, item, user_mask, item_w, item_b, pooled_item, mf_item, mlp_out, H_MLP_U, W,
                         errors, 3, rows64, row_ok, 1, DI, H_MF, H_MLP_I, pad, ROWS_I, si0, si1, si2, sii0, 0,
                         ITEM_IDS, False, False, False, ITEM_PROJ, ITEM_BIAS, SAVE, PRECISION,
                         BLOCK_B, BLOCK_K, BLOCK_MF, BLOCK_MLP_I, 1)
    h_mf = tl.arange(0, BLOCK_MF)
    tl.store(gmf_out + rows64[:, None] * H_MF + h_mf[None, :], (mf_u * mf_i).to(gmf_out.dtype.element_ty),
             mask=row_ok[:, None] & (h_mf < H_MF)[None, :])
