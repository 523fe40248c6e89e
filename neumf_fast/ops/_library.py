"""The ``torch.ops.neumf_fast`` namespace on the Python side: fake kernels and autograd.

The C++ extension declares the schemas (csrc/ops.cpp) and registers the CPU kernels
(csrc/cpu/) and, when built with CUDA, the CUDA kernels (csrc/cuda/).  This module loads it
and adds what ``torch.compile`` and autograd need, so that every device implementation of ``fused_input`` shares one autograd formula:

- ``fused_input`` returns ``(gmf, mlp_in)`` plus the tensors backward reads, and nothing more,
  in op-math dtype (fp32 for bf16/fp16): ``pooled_user``, ``pooled_item`` (a side's ``[B, D]``
  pooled rows, the input of its weight gradient; an empty tensor for a side with no weight) and
  ``mf_user``, ``mf_item`` (the ``[B, H_mf]`` MF half of a side's projection, or of its pooled
  rows with no weight: the other factor of the GMF gradient).  The Triton launcher saves the
  same.  With ``save=False`` (inference) all four are empty tensors and the kernels do not
  write them.
- ``fused_input_backward`` returns the gradients of the user source (dense sequence or user
  table), the item source (dense item or item table), and both weights and biases; a gradient
  nobody asked for comes back as an empty tensor.
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from ._checks import check_inputs

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


def _fake_fused_input(user, user_mask, user_table, padding_idx, item, item_table,
                      user_weight, user_bias, item_weight, item_bias, h_mf, mode, save=True):
    d = check_inputs(user, user_mask, user_table, padding_idx, item, item_table,
                     user_weight, user_bias, item_weight, item_bias, h_mf, mode)
    acc = _opmath(d.dtype)
    new = user.new_empty
    return (
        new((d.batch, h_mf), dtype=d.dtype),
        new((d.batch, d.h_mlp), dtype=d.dtype),
        new((d.batch, d.user_dim) if save and user_weight is not None else (0,), dtype=acc),
        new((d.batch, d.item_dim) if save and item_weight is not None else (0,), dtype=acc),
        new((d.batch, h_mf) if save else (0,), dtype=acc),
        new((d.batch, h_mf) if save else (0,), dtype=acc),
    )


def _fake_fused_input_backward(grad_gmf, grad_mlp_in, user, user_mask, user_table, padding_idx, item,
                               item_table, user_weight, user_bias, item_weight, item_bias, h_mf, mode,
                               pooled_user, pooled_item, mf_user, mf_item, output_mask):
    d = check_inputs(user, user_mask, user_table, padding_idx, item, item_table,
                     user_weight, user_bias, item_weight, item_bias, h_mf, mode)
    user_src = user_table if d.user_ids else user
    item_src = item_table if d.item_ids else item
    shapes = [
        user_src.shape,
        item_src.shape,
        user_weight.shape if user_weight is not None else None,
        user_bias.shape if user_bias is not None else None,
        item_weight.shape if item_weight is not None else None,
        item_bias.shape if item_bias is not None else None,
    ]
    return tuple(
        grad_gmf.new_empty(shape if want and shape is not None else (0,), dtype=d.dtype)
        for want, shape in zip(output_mask, shapes)
    )


_INPUT_NAMES = ("user", "user_mask", "user_table", "padding_idx", "item", "item_table",
                "user_weight", "user_bias", "item_weight", "item_bias", "h_mf", "mode")


class AutogradGlue:
    """Saving and backward shared by every backend's op: the forward's first twelve inputs are
    the op's (``_INPUT_NAMES``) and its outputs are ``(gmf, mlp_in, *four saved tensors)``; the
    backward op takes the output gradients, the inputs, the saved tensors, a ``bool[6]`` mask of
    the gradients wanted, then ``extra()``, and returns the six gradients (source of each side,
    then weight and bias of each side)."""

    def __init__(self, backward_op, extra=lambda: ()):
        self.backward_op, self.extra = backward_op, extra

    def save(self, ctx, inputs, output):
        args = dict(zip(_INPUT_NAMES, inputs))
        ctx.save_for_backward(*(args[n] for n in _INPUT_NAMES if n not in ("padding_idx", "h_mf", "mode")),
                              *output[2:6])
        ctx.padding_idx, ctx.h_mf, ctx.mode = args["padding_idx"], args["h_mf"], args["mode"]

    def setup_context(self, ctx, inputs, output):
        ctx.mark_non_differentiable(*output[2:])
        self.save(ctx, inputs, output)

    def backward(self, ctx, grad_gmf, grad_mlp_in, *_unused):
        (user, user_mask, user_table, item, item_table, user_weight, user_bias, item_weight, item_bias,
         *saved) = ctx.saved_tensors
        need = dict(zip(_INPUT_NAMES, ctx.needs_input_grad))
        user_ids, item_ids = user_table is not None, item_table is not None
        user_src, item_src = (user_table if user_ids else user), (item_table if item_ids else item)
        batch = user.shape[0]
        if grad_gmf is None:
            grad_gmf = torch.zeros((batch, ctx.h_mf), dtype=user_src.dtype, device=user.device)
        if grad_mlp_in is None:
            width = (user_weight.shape[0] if user_weight is not None else user_src.shape[-1]) + (
                item_weight.shape[0] if item_weight is not None else item_src.shape[-1]) - 2 * ctx.h_mf
            grad_mlp_in = torch.zeros((batch, width), dtype=user_src.dtype, device=user.device)
        mask = [need["user_table" if user_ids else "user"], need["item_table" if item_ids else "item"],
                need["user_weight"], need["user_bias"], need["item_weight"], need["item_bias"]]
        grads = self.backward_op(
            grad_gmf, grad_mlp_in, user, user_mask, user_table, ctx.padding_idx, item, item_table,
            user_weight, user_bias, item_weight, item_bias, ctx.h_mf, ctx.mode, *saved, mask, *self.extra())
        g_user_src, g_item_src, g_uw, g_ub, g_iw, g_ib = (g if want else None for g, want in zip(grads, mask))
        out = dict.fromkeys(_INPUT_NAMES)
        out["user_table" if user_ids else "user"] = g_user_src
        out["item_table" if item_ids else "item"] = g_item_src
        out.update(user_weight=g_uw, user_bias=g_ub, item_weight=g_iw, item_bias=g_ib)
        # inputs after the twelve (flags such as Triton's `save`) get no gradient
        return (*(out[n] for n in _INPUT_NAMES), *[None] * (len(ctx.needs_input_grad) - len(_INPUT_NAMES)))


_GLUE = AutogradGlue(lambda *a: torch.ops.neumf_fast.fused_input_backward(*a))


if EXTENSION_ERROR is None:
    torch.library.register_fake("neumf_fast::fused_input")(_fake_fused_input)
    torch.library.register_fake("neumf_fast::fused_input_backward")(_fake_fused_input_backward)
    torch.library.register_autograd("neumf_fast::fused_input", _GLUE.backward, setup_context=_GLUE.setup_context)


def make_eager_function(name: str, op, save, backward) -> type:
    """An ``autograd.Function`` with the same forward and backward as an op's
    ``register_autograd`` registration, for eager calls.  The registered path costs about
    150 µs of Python per training step (``fill_defaults`` over the schema's arguments and the
    generated wrapper, in forward and backward); this one calls the op below autograd and the
    backward directly.  ``torch.compile`` and direct ``torch.ops`` calls keep using the
    registered op, which is what they can trace."""

    def forward(ctx, *inputs):
        output = op(*inputs)  # grad mode is off in here
        save(ctx, inputs, output)
        return output[0], output[1]

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def use_eager_function(args) -> bool:
    return (torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and any(isinstance(t, Tensor) and t.requires_grad for t in args))


def _kernel_call(*args):
    """The device kernel itself, below the Autograd key: for calls that need no autograd (inside
    an autograd.Function's forward, or with nothing to differentiate), the registered Python
    autograd would only add its no-grad wrapper (about 5 µs a call)."""
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.neumf_fast.fused_input.default(*args)


_EagerFusedInput = make_eager_function("_EagerFusedInput", _kernel_call, _GLUE.save, _GLUE.backward)


def fused_input(*args) -> tuple[Tensor, Tensor]:
    """``(gmf, mlp_in)`` from the registered op (whichever device kernel the tensors select), on
    the op's twelve arguments (``_INPUT_NAMES``)."""
    if torch.compiler.is_compiling():  # torch.compile traces the registered autograd
        save = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in args)
        gmf, mlp_in, *_saved = torch.ops.neumf_fast.fused_input(*args, save)
        return gmf, mlp_in
    if use_eager_function(args):
        return _EagerFusedInput.apply(*args)
    out = _kernel_call(*args, False)  # eager with nothing to differentiate: nothing saved, no autograd
    return out[0], out[1]
