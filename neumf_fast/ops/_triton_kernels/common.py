"""What the forward and backward kernels share: specialisation lists and the bad-id record."""

from __future__ import annotations

import triton
import triton.language as tl

_NO_SPEC = ["B", "pad"]
# ids and masks are read one [BLOCK_B] column at a time: their alignment buys nothing, and a batch
# sliced out of a larger tensor at an odd offset must not compile a second kernel
_NO_ALIGN = ["user", "user_mask", "item"]
INT64_MAX = tl.constexpr(9223372036854775807)


@triton.jit
def _record_bad_ids(errors, slot, bad_any, bad_id, rows_in_table):
    """errors[slot:slot+3] = [1, a bad id, rows] when this program saw one (plain stores)."""
    n = tl.sum(bad_any)
    found = n > 0
    worst = tl.min(tl.where(bad_any != 0, bad_id, INT64_MAX))
    tl.store(errors + slot, (worst * 0 + 1), mask=found)
    tl.store(errors + slot + 1, worst, mask=found)
    tl.store(errors + slot + 2, worst * 0 + rows_in_table, mask=found)
