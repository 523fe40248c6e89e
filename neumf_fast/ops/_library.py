"""The C++ kernels (``torch.ops.neumf_fast``) on the Python side: fake kernels, autograd and the
``Kernels`` that the ``cpu`` and ``cuda`` backends run.

The C++ extension declares the schemas (csrc/ops.cpp) and registers the CPU kernels
(csrc/cpu/) and, when built with CUDA, the CUDA kernels (csrc/cuda/); the tensors' device picks
one.  The kernels validate their own calls (``check_fused_input``).

- ``fused_input`` returns ``(gmf, mlp_in)`` plus the tensors backward reads, and nothing more,
  in op-math dtype (fp32 for bf16/fp16): ``pooled_user``, ``pooled_item`` (a side's ``[B, D]``
  pooled rows, the input of its weight gradient; an empty tensor for a side with no weight) and
  ``mf_user``, ``mf_item`` (the ``[B, H_mf]`` MF half of a side's projection, or of its pooled
  rows with no weight: the other factor of the GMF gradient).  The Triton launcher saves the
  same.  With ``save=False`` (inference) all four are empty tensors and the kernels do not
  write them.
- ``fused_input_backward`` returns the six gradients that ``ops/_autograd.py`` describes.
"""

from __future__ import annotations

import importlib

import torch

from ._autograd import Kernels, register_autograd
from ._checks import INDEX_DTYPES, FusedArgs

try:
    importlib.import_module("neumf_fast._C")  # loading it registers the ops

    EXTENSION_ERROR: str | None = None
except ImportError as exc:  # built with NEUMF_FAST_SKIP_EXTENSION=1, or a failed build
    EXTENSION_ERROR = f"the C++ extension neumf_fast._C is not built or does not load ({exc})"

# Whether the extension was built with the CUDA kernels (csrc/cuda/) registered.
CUDA_KERNELS_BUILT = EXTENSION_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(
    "neumf_fast::fused_input", "CUDA")


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _source(ids: torch.Tensor, table, dense_rank: int, name: str) -> torch.Tensor:
    """The tensor a side's rows come from (its table for ids), checked for rank."""
    is_ids = ids.dtype in INDEX_DTYPES
    torch._check_value(not is_ids or table is not None, lambda: f"neumf_fast: {name} ids need {name}_table")
    torch._check_value(ids.dim() == dense_rank - is_ids, lambda: f"neumf_fast: {name} has rank {ids.dim()}")
    return table if is_ids else ids


def _fake_fused_input(*inputs):
    a, save = FusedArgs(*inputs[:12]), inputs[12] if len(inputs) > 12 else True
    user_src, item_src = _source(a.user, a.user_table, 3, "user"), _source(a.item, a.item_table, 2, "item")
    batch, dtype = a.user.shape[0], user_src.dtype
    for name, t in zip(FusedArgs._fields, a):
        if isinstance(t, torch.Tensor) and name not in ("user", "item", "user_mask"):
            torch._check_type(t.dtype == dtype, lambda: f"neumf_fast: {name} has dtype {t.dtype}, not {dtype}")
        if isinstance(t, torch.Tensor):
            torch._check_value(t.device == a.user.device, lambda: f"neumf_fast: {name} is on {t.device}, not {a.user.device}")
    torch._check_value(a.item.shape[0] == batch, lambda: "neumf_fast: user and item have different batch sizes")
    user_proj = a.user_weight.shape[0] if a.user_weight is not None else user_src.shape[-1]
    item_proj = a.item_weight.shape[0] if a.item_weight is not None else item_src.shape[-1]
    torch._check_value(0 <= a.h_mf <= min(user_proj, item_proj), lambda: f"neumf_fast: h_mf={a.h_mf} is out of range")
    new, acc = a.user.new_empty, _opmath(dtype)
    saved = lambda shape, kept=True: new(shape if save and kept else (0,), dtype=acc)
    return (new((batch, a.h_mf), dtype=dtype), new((batch, user_proj + item_proj - 2 * a.h_mf), dtype=dtype),
            saved((batch, user_src.shape[-1]), a.user_weight is not None),
            saved((batch, item_src.shape[-1]), a.item_weight is not None),
            saved((batch, a.h_mf)), saved((batch, a.h_mf)))


def _fake_fused_input_backward(grad_gmf, grad_mlp_in, *rest):
    a, output_mask = FusedArgs(*rest[:12]), rest[-1]
    sources = [a.user_table if a.user_table is not None else a.user,
               a.item_table if a.item_table is not None else a.item,
               a.user_weight, a.user_bias, a.item_weight, a.item_bias]
    return tuple(grad_gmf.new_empty(t.shape if want and t is not None else (0,), dtype=sources[0].dtype)
                 for want, t in zip(output_mask, sources))


def _kernel_call(*args):
    """The device kernel itself, below the Autograd key: for calls that need no autograd (inside
    ``FusedFunction.forward``, or with nothing to differentiate), the registered Python
    autograd would only add its no-grad wrapper (about 5 µs a call)."""
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.neumf_fast.fused_input.default(*args)


KERNELS: Kernels | None = None
if EXTENSION_ERROR is None:
    torch.library.register_fake("neumf_fast::fused_input")(_fake_fused_input)
    torch.library.register_fake("neumf_fast::fused_input_backward")(_fake_fused_input_backward)
    register_autograd("neumf_fast::fused_input", torch.ops.neumf_fast.fused_input_backward)
    KERNELS = Kernels(_kernel_call, torch.ops.neumf_fast.fused_input_backward.default,
                      torch.ops.neumf_fast.fused_input)
