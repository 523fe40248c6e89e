"""The backward kernels: per-row gradients with the table scatter, and the deterministic
segment sum (chunks of a run, then the chunks in order)."""

from __future__ import annotations

import triton
import triton.language as tl

from .common import _NO_ALIGN, _NO_SPEC


@triton.jit
def _row_scale(ids_ptr, mask_ptr, rows64, row_ok, L, pad, rows_in_table, stride_i0, stride_i1,
               IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr, MEAN: tl.constexpr,
               BLOCK_B: tl.constexpr):
    """1 (sum) or 1 / max(1, kept positions) (mean) per row, counted as the forward counts."""
    scale = tl.full([BLOCK_B], 1.0, dtype=tl.float32)
    if MEAN:
        count = tl.zeros([BLOCK_B], dtype=tl.float32)
        for l in range(0, L):
            keep = row_ok
            if IDS:
                ids = tl.load(ids_ptr + rows64 * stride_i0 + l * stride_i1, mask=row_ok, other=0).to(tl.int64)
                keep = keep & (ids >= 0) & (ids < rows_in_table)
                if HAS_PAD:
                    keep = keep & (ids != pad)
            else:
                if HAS_MASK:
                    keep = keep & (tl.load(mask_ptr + rows64 * L + l, mask=row_ok, other=0) != 0)
            count += keep.to(tl.float32)
        scale = 1.0 / tl.maximum(count, 1.0)
    return scale
@triton.jit
def _grad_cols(d_gmf, mf_other, d_mlp_in, rows64, row_ok, c, H_MF, H, W, mlp_col0):
    """Columns ``c`` of one side's [d_mf | d_mlp] (fp32 [BLOCK_B, len(c)]), read from memory:
    d_mf = d_gmf ⊙ the other side's saved MF half, d_mlp = the side's half of d_mlp_in.
    Read per tile, not held: a [BLOCK_B, H] operand of an fp32 dot over all of H spills."""
    is_mf = c < H_MF
    is_mlp = (c >= H_MF) & (c < H)
    r = rows64[:, None]
    m_mf = row_ok[:, None] & is_mf[None, :]
    g = tl.load(d_gmf + r * H_MF + c[None, :], mask=m_mf, other=0.0).to(tl.float32)
    g = g * tl.load(mf_other + r * H_MF + c[None, :], mask=m_mf, other=0.0)
    m = tl.load(d_mlp_in + r * W + mlp_col0 + (c - H_MF)[None, :], mask=row_ok[:, None] & is_mlp[None, :],
                other=0.0).to(tl.float32)
    return g + m  # the masks are disjoint


@triton.jit
def _side_backward(d_gmf, mf_other, d_mlp_in, mlp_col0, W, w_ptr, dproj_ptr, dsrc_ptr, ids_ptr, mask_ptr,
                   rows64, row_ok, scale, L, D, H_MF, H_MLP, pad, rows_in_table, stride_i0, stride_i1,
                   IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr, PROJ: tl.constexpr,
                   SAVE_DPROJ: tl.constexpr, WANT_SRC: tl.constexpr, ATOMIC: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr):
    """Stores d_proj (for the weight pass) and the source gradient of one side.

    d_pooled[:, k-tile] = Σ over H tiles of [d_mf | d_mlp][:, h-tile] · W[h-tile, k-tile]: both
    reductions tiled, so nothing [BLOCK_B, H]-sized stays in registers.  Source gradient: dense
    ``[B, L, D]`` written directly; for ids, either atomically added into the table gradient
    (``ATOMIC``) or written as scaled ``d_pooled [B, D]`` for the deterministic segment reduction.
    """
    H = H_MF + H_MLP
    if SAVE_DPROJ:
        for h0 in range(0, H, BLOCK_H):
            c = h0 + tl.arange(0, BLOCK_H)
            t = _grad_cols(d_gmf, mf_other, d_mlp_in, rows64, row_ok, c, H_MF, H, W, mlp_col0)
            tl.store(dproj_ptr + rows64[:, None] * H + c[None, :], t, mask=row_ok[:, None] & (c < H)[None, :])
    if WANT_SRC:
        for k0 in range(0, D, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < D
            if PROJ:
                dp = tl.zeros([BLOCK_B, BLOCK_K], dtype=tl.float32)
                for h0 in range(0, H, BLOCK_H):
                    c = h0 + tl.arange(0, BLOCK_H)
                    t = _grad_cols(d_gmf, mf_other, d_mlp_in, rows64, row_ok, c, H_MF, H, W, mlp_col0)
                    w = tl.load(w_ptr + c[:, None] * D + cols[None, :], mask=(c < H)[:, None] & col_ok[None, :],
                                other=0.0)
                    dp += tl.dot(t.to(w.dtype), w, input_precision=PRECISION)
            else:  # no projection: the pooled vector is [mf | mlp] itself (D = H)
                dp = _grad_cols(d_gmf, mf_other, d_mlp_in, rows64, row_ok, cols, H_MF, H, W, mlp_col0)
            _scatter_tile(dp * scale[:, None], cols, col_ok, dsrc_ptr, ids_ptr, mask_ptr, rows64, row_ok,
                          L, D, pad, rows_in_table, stride_i0, stride_i1, IDS, HAS_MASK, HAS_PAD, ATOMIC, BLOCK_B)


@triton.jit
def _scatter_tile(dp, cols, col_ok, dsrc_ptr, ids_ptr, mask_ptr, rows64, row_ok, L, D, pad, rows_in_table,
                  stride_i0, stride_i1,
                  IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr, ATOMIC: tl.constexpr,
                  BLOCK_B: tl.constexpr):
    cols64 = cols.to(tl.int64)
    if IDS:
        if ATOMIC:
            for l in range(0, L):
                ids = tl.load(ids_ptr + rows64 * stride_i0 + l * stride_i1, mask=row_ok, other=0).to(tl.int64)
                keep = row_ok & (ids >= 0) & (ids < rows_in_table)  # a bad id scatters nothing
                if HAS_PAD:
                    keep = keep & (ids != pad)
                # relaxed: each add is independent of every other memory access (no fence)
                tl.atomic_add(dsrc_ptr + ids[:, None] * D + cols64[None, :], dp, mask=keep[:, None] & col_ok[None, :],
                              sem="relaxed")
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


@triton.jit(do_not_specialize=_NO_SPEC, do_not_specialize_on_alignment=_NO_ALIGN)
def fused_backward_rows_kernel(
    d_gmf, d_mlp_in, mf_user, mf_item, user, user_mask, item, user_w, item_w,
    dproj_user, dproj_item, dsrc_user, dsrc_item,
    B, L, D, DI, H_MF, H_MLP_U, H_MLP_I, pad, ROWS_U, ROWS_I, sui0, sui1, sii0,
    USER_IDS: tl.constexpr, ITEM_IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PAD: tl.constexpr,
    MEAN: tl.constexpr, USER_PROJ: tl.constexpr, ITEM_PROJ: tl.constexpr,
    SAVE_DPROJ_U: tl.constexpr, SAVE_DPROJ_I: tl.constexpr, WANT_USER: tl.constexpr, WANT_ITEM: tl.constexpr,
    ATOMIC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    W = H_MLP_U + H_MLP_I
    scale = _row_scale(user, user_mask, rows64, row_ok, L, pad, ROWS_U, sui0, sui1,
                       USER_IDS, HAS_MASK, HAS_PAD, MEAN, BLOCK_B)
    ones = tl.full([BLOCK_B], 1.0, dtype=tl.float32)
    _side_backward(d_gmf, mf_item, d_mlp_in, 0, W, user_w, dproj_user, dsrc_user, user, user_mask, rows64, row_ok,
                   scale, L, D, H_MF, H_MLP_U, pad, ROWS_U, sui0, sui1,
                   USER_IDS, HAS_MASK, HAS_PAD, USER_PROJ, SAVE_DPROJ_U, WANT_USER, ATOMIC, PRECISION,
                   BLOCK_B, BLOCK_K, BLOCK_H)
    _side_backward(d_gmf, mf_user, d_mlp_in, H_MLP_U, W, item_w, dproj_item, dsrc_item, item, user_mask, rows64,
                   row_ok, ones, 1, DI, H_MF, H_MLP_I, pad, ROWS_I, sii0, 0,
                   ITEM_IDS, False, False, ITEM_PROJ, SAVE_DPROJ_I, WANT_ITEM, ATOMIC, PRECISION,
                   BLOCK_B, BLOCK_K, BLOCK_H)


@triton.jit
def segment_sum_kernel(d_pooled, order, starts, ends, sorted_ids, chunk_index, partial, out, ROWS, L, D,
                       BLOCK_D: tl.constexpr, CHUNK: tl.constexpr):
    """Deterministic table gradient, pass 1.  Positions are sorted stably by id; program j is the
    j-th sorted position.  A run of equal ids of at most ``CHUNK`` positions is summed by the
    program at its start, in sorted order, straight into its table row; a longer run is cut every
    ``CHUNK`` positions and the program at each cut sums its chunk into
    ``partial[chunk_index[j]]`` (``chunk_sum_kernel`` adds them up), so a popular id is not one
    program's serial loop.  Ids outside ``[0, ROWS)`` and padding sort as ``ROWS``: skipped."""
    j = tl.program_id(0)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = ds < D
    row_id = tl.load(sorted_ids + j)
    start = tl.load(starts + j)
    end = tl.load(ends + j)
    if ((j - start) % CHUNK == 0) & (row_id < ROWS):
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for k in range(j, tl.minimum(end, j + CHUNK)):
            row = tl.load(order + k) // L
            acc += tl.load(d_pooled + row * D + ds, mask=d_ok, other=0.0)
        if end - start > CHUNK:
            tl.store(partial + tl.load(chunk_index + j) * D + ds, acc, mask=d_ok)
        else:
            tl.store(out + row_id * D + ds, acc.to(out.dtype.element_ty), mask=d_ok)


@triton.jit
def chunk_sum_kernel(partial, starts, ends, sorted_ids, chunk_index, out, ROWS, D,
                     BLOCK_D: tl.constexpr, CHUNK: tl.constexpr):
    """Pass 2: the program at the start of a run longer than ``CHUNK`` adds its chunks' sums (at
    consecutive ``partial`` rows) in order and writes the table row."""
    j = tl.program_id(0)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = ds < D
    row_id = tl.load(sorted_ids + j)
    start = tl.load(starts + j)
    end = tl.load(ends + j)
    if (start == j) & (row_id < ROWS) & (end - start > CHUNK):
        first = tl.load(chunk_index + j)
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for c in range(0, tl.cdiv(end - start, CHUNK)):
            acc += tl.load(partial + (first + c) * D + ds, mask=d_ok, other=0.0)
        tl.store(out + row_id * D + ds, acc.to(out.dtype.element_ty), mask=d_ok)
