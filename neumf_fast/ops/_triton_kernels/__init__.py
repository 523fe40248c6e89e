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
(``_triton_configs._forward_config``), not a search.

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

``table_update_kernel`` (update.py), the ``table_update_`` op's row-wise optimizer step, states
its own math and tiling.
"""

from .backward import chunk_sum_kernel, fused_backward_rows_kernel, segment_sum_kernel
from .forward import fused_forward_kernel
from .update import table_update_kernel

__all__ = ["chunk_sum_kernel", "fused_backward_rows_kernel", "fused_forward_kernel", "segment_sum_kernel",
           "table_update_kernel"]
