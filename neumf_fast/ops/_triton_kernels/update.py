"""The table update kernel: one row-wise optimizer step on the rows a batch names, in place.

Math (``neumf_fast.reference.table_update_`` is the spec): a row's gradient is the sum of
``grad[m]`` over its positions ``ids[m, k]`` (padding left out), plus ``weight_decay * row``; then

    sgd              row -= lr g
    adam             m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g²
                     row -= lr / (1 - b1^t) · m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    rowwise_adagrad  s += mean(g²);  row -= lr g / (sqrt(s) + eps)

with ``t`` read from the ``step`` tensor (the launcher has advanced it).  The state is fp32.

Tiling.  The launcher sorts the positions stably by id (padding and bad ids keyed as ``ROWS``, so
they sort last); program ``p`` is sorted position ``p``.  The program at the start of a run of
equal ids owns it: it sums the run's gradient rows (row ``order[q] // K`` of ``grad``) in fp32,
``BLOCK_P`` positions at a time in sorted order, holding the whole row (``BLOCK_D >= D``), then
updates the row and its state; every other program returns after two loads.  The summation order
depends only on the sorted order and ``BLOCK_P``: the same bits on every run, whatever the launch
order.  Each row is written by one program, so there are no atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _power(base, exponent):
    """``base ** exponent`` for an int64 ``exponent >= 0``, by squaring: multiplies only, so as
    exact as ``base``'s dtype (fp64 here; GPU fp64 ``exp``/``log`` would need libdevice)."""
    result = base * 0.0 + 1.0
    while exponent > 0:
        result = tl.where((exponent & 1) == 1, result * base, result)
        base = base * base
        exponent = exponent >> 1
    return result


@triton.jit
def _run_gradient(grad, sorted_keys, order, start, row, N, D, K, cols, col_ok,
                  BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """fp32 sum of the gradient rows of the run of ``row`` that starts at sorted position
    ``start``.  A block all inside the run means the run may go on: read the next one."""
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    q0 = start
    more = start >= 0
    while more:
        q = q0 + tl.arange(0, BLOCK_P)
        in_run = tl.load(sorted_keys + q, mask=q < N, other=-1) == row
        src = tl.load(order + q, mask=in_run, other=0) // K
        tile = tl.load(grad + src[:, None] * D + cols[None, :], mask=in_run[:, None] & col_ok[None, :], other=0.0)
        acc += tl.sum(tile.to(tl.float32), axis=0)
        more = tl.sum(in_run.to(tl.int32), axis=0) == BLOCK_P
        q0 += BLOCK_P
    return acc


@triton.jit
def _adam(w, g, moment1, moment2, step, offs, col_ok, lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps):
    """The row after one Adam step; stores its moments.  The bias corrections in fp64 from
    ``1 - beta`` (passed as such: fp32 ``beta2 = 0.999`` would be 1.3e-5 off in ``1 - beta2``)."""
    t = tl.load(step)
    bc1 = 1.0 - _power(1.0 - tl.cast(one_minus_beta1, tl.float64), t)
    bc2 = 1.0 - _power(1.0 - tl.cast(one_minus_beta2, tl.float64), t)
    step_size = (lr / bc1).to(tl.float32)
    bc2_sqrt = tl.sqrt_rn(bc2.to(tl.float32))  # fp64 was for the cancellation in 1 - b2^t
    m = beta1 * tl.load(moment1 + offs, mask=col_ok, other=0.0) + one_minus_beta1 * g
    v = beta2 * tl.load(moment2 + offs, mask=col_ok, other=0.0) + one_minus_beta2 * g * g
    tl.store(moment1 + offs, m, mask=col_ok)
    tl.store(moment2 + offs, v, mask=col_ok)
    return w - step_size * m / (tl.sqrt_rn(v) / bc2_sqrt + eps)


@triton.jit(do_not_specialize=["N"])
def table_update_kernel(table, moment1, moment2, step, grad, sorted_keys, order, N, ROWS, D, K,
                        lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, weight_decay,
                        OPTIMIZER: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)
    row = tl.load(sorted_keys + p)
    before = tl.load(sorted_keys + p - 1, mask=p > 0, other=-1)
    if (row < ROWS) & (row != before):  # a run starts here: this program owns its row
        cols = tl.arange(0, BLOCK_D)
        col_ok = cols < D
        offs = row * D + cols
        g = _run_gradient(grad, sorted_keys, order, p, row, N, D, K, cols, col_ok, BLOCK_P, BLOCK_D)
        w = tl.load(table + offs, mask=col_ok, other=0.0).to(tl.float32)
        g += weight_decay * w  # masked columns stay 0: they add nothing to adagrad's mean
        if OPTIMIZER == "sgd":
            w -= lr * g
        elif OPTIMIZER == "adam":
            w = _adam(w, g, moment1, moment2, step, offs, col_ok, lr, beta1, beta2, one_minus_beta1,
                      one_minus_beta2, eps)
        else:  # rowwise_adagrad: one accumulator a row
            s = tl.load(moment2 + row) + tl.sum(g * g, axis=0) / D
            tl.store(moment2 + row, s)
            w -= lr / (tl.sqrt_rn(s) + eps) * g
        tl.store(table + offs, w.to(table.dtype.element_ty), mask=col_ok)
