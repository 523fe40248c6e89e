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
in registers (fp32), counting the kept positions in the same loop (mean pooling needs no second
pass over the ids), and multiplies the tile into the MF and MLP accumulators with ``tl.dot``, so
the pooled row never goes to memory between pooling and projection.  The sequence loop is a
``tl.range`` with ``NUM_STAGES`` so the next position's ids and rows are in flight while one is
added.  The user side's MLP half is stored as soon as it is done, so only its MF half stays in
registers while the item side runs.  Block sizes and warps come from a rule on the shapes
(``triton_backend._forward_config``), not a search.

Ids are checked where they are read: an id outside ``[0, rows)`` (padding excepted) is never
dereferenced (its load is masked: it adds zeros and does not count for mean pooling) and the
program stores ``[1, id, rows]`` into ``errors[0:3]`` (user) or ``errors[3:6]`` (item), plain
stores (any bad id may win), which ``_id_check`` reports without a host sync.  The backward
kernels skip such ids too, so no gradient is scattered out of bounds.

Saved for backward (only when autograd needs it): pooled_user and pooled_item (fp32, for d_W;
only with a projection), and mf_user and mf_item (fp32, for the GMF product's gradient).  The
MLP halves of the projections are not needed by the backward and are not saved.

Precision: fp32 accumulation always.  fp32 dots run in IEEE precision (``PRECISION="ieee"``)
unless ``torch.backends.cuda.matmul.allow_tf32`` is set (``"tf32"``); bf16/fp16 inputs go to
the dots in their own dtype, with fp32 accumulation.

Specialisation: the batch size and the padding id are ``do_not_specialize`` (a ragged last
batch, or padding id 0 against 29, reuses the compiled kernel); the table gradient's atomics
are ``sem="relaxed"`` (a fence-free ``RED``: the adds need no ordering with anything else).
"""

from __future__ import annotations

import triton
import triton.language as tl

_NO_SPEC = ["B", "pad"]
# ids and masks are read one [BLOCK_B] column at a time: their alignment buys nothing, and a batch
# sliced out of a larger tensor at an odd offset must not compile a second kernel
_NO_ALIGN = ["user", "user_mask", "item"]
INT64_MAX = tl.constexpr(9223372036854775807)


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
def _record_bad_ids(errors, slot, bad_any, bad_id, rows_in_table):
    """errors[slot:slot+3] = [1, a bad id, rows] when this program saw one (plain stores)."""
    n = tl.sum(bad_any)
    found = n > 0
    worst = tl.min(tl.where(bad_any != 0, bad_id, INT64_MAX))
    tl.store(errors + slot, (worst * 0 + 1), mask=found)
    tl.store(errors + slot + 1, worst, mask=found)
    tl.store(errors + slot + 2, worst * 0 + rows_in_table, mask=found)


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
