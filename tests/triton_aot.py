"""Compiles every Triton kernel of ``backend="triton"`` ahead of time for real NVIDIA targets
(sm_80 and sm_90) with Triton's own compiler and bundled ptxas, without a GPU.

The interpreter (tests/test_triton.py) checks the math but not that the kernels compile for a
GPU: types, layouts and ``tl.dot`` shapes are only checked by the real backend.  Run by
tests/test_triton.py::test_kernels_compile_for_sm80_and_sm90 in a subprocess, because the
test session sets TRITON_INTERPRET=1.  Prints one line per failure; exit status 1 if any.

    python tests/triton_aot.py
"""

from __future__ import annotations

import itertools
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from neumf_fast.ops import _triton_kernels as K  # noqa: E402

TYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _compile(fn, signature: dict, constexprs: dict, arch: int) -> None:
    sig = {name: signature.get(name, "constexpr") for name in fn.arg_names}
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=GPUTarget("cuda", arch, 32))


def forward_cases():
    for dt, ids, proj, idx in itertools.product(("fp32", "bf16"), (False, True), (True, False), ("i64", "i32")):
        if idx == "i32" and not ids:
            continue
        src = f"*{dt}"
        sig = dict(user=f"*{idx}" if ids else src, user_mask="*u8", user_src=src, item=f"*{idx}" if ids else src,
                   item_src=src, user_w=src, user_b=src, item_w=src, item_b=src, gmf_out=src, mlp_out=src,
                   pooled_user="*fp32", pooled_item="*fp32", mf_user="*fp32", mf_item="*fp32")
        sig.update({n: "i32" for n in ("B", "L", "D", "DI", "H_MF", "H_MLP_U", "H_MLP_I", "pad", "su0", "su1",
                                       "su2", "sui0", "sui1", "si0", "si1", "si2", "sii0", "B_CLASS")})
        consts = dict(USER_IDS=ids, ITEM_IDS=ids, HAS_MASK=not ids, HAS_PAD=ids, MEAN=True, USER_PROJ=proj,
                      ITEM_PROJ=proj, USER_BIAS=proj, ITEM_BIAS=proj, SAVE=True, PRECISION="ieee",
                      BLOCK_MF=64, BLOCK_MLP_U=64, BLOCK_MLP_I=64, BLOCK_B=64, BLOCK_K=32)
        yield f"forward {dt} ids={ids} proj={proj} idx={idx}", K.fused_forward_kernel, sig, consts


def backward_cases():
    for dt, ids, proj, atomic in itertools.product(("fp32", "bf16"), (False, True), (True, False), (True, False)):
        if atomic and not ids:
            continue
        src = f"*{dt}"
        dsrc = "*fp32" if ids else src  # table gradients accumulate in fp32 buffers
        sig = dict(d_gmf=src, d_mlp_in=src, mf_user="*fp32", mf_item="*fp32", user="*i64" if ids else src,
                   user_mask="*u8", item="*i64" if ids else src, user_w=src, item_w=src, dproj_user="*fp32",
                   dproj_item="*fp32", dsrc_user=dsrc, dsrc_item=dsrc)
        sig.update({n: "i32" for n in ("B", "L", "D", "DI", "H_MF", "H_MLP_U", "H_MLP_I", "pad", "sui0", "sui1",
                                       "sii0")})
        consts = dict(USER_IDS=ids, ITEM_IDS=ids, HAS_MASK=not ids, HAS_PAD=ids, MEAN=True, USER_PROJ=proj,
                      ITEM_PROJ=proj, SAVE_DPROJ_U=proj, SAVE_DPROJ_I=proj, WANT_USER=True, WANT_ITEM=True,
                      ATOMIC=atomic, PRECISION="ieee", BLOCK_MF=64, BLOCK_MLP_U=64, BLOCK_MLP_I=64, BLOCK_B=32,
                      BLOCK_K=64)
        yield f"backward rows {dt} ids={ids} proj={proj} atomic={atomic}", K.fused_backward_rows_kernel, sig, consts
    for dt in ("fp32", "bf16"):
        sig = dict(d_pooled="*fp32", order="*i64", starts="*i64", ends="*i64", sorted_ids="*i64", out=f"*{dt}",
                   ROWS="i32", L="i32", D="i32")
        yield f"segment sum {dt}", K.segment_sum_kernel, sig, dict(BLOCK_D=128)


def main() -> int:
    failures = 0
    cases = [*forward_cases(), *backward_cases()]
    for arch in (90, 80):
        for name, fn, sig, consts in cases:
            if arch == 80 and "fp32" not in name:  # sm_80: one dtype is enough to catch arch issues
                continue
            try:
                _compile(fn, sig, consts, arch)
            except Exception as e:  # report every failing kernel, not just the first
                failures += 1
                print(f"FAILED sm_{arch} {name}: {type(e).__name__}: {str(e)[:2000]}")
    print(f"compiled {len(cases)} kernel variants for sm_90 and the fp32 ones for sm_80; {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
