"""The op's autograd, written once for every kernel backend, and the one route of a call.

A kernel backend is a ``Kernels``: an eager forward and backward called below the dispatcher,
and the registered op that ``torch.compile`` traces.  Each forward takes the op's arguments
(``FusedArgs``) and ``save``, and returns ``(gmf, mlp_in)`` plus the four tensors its backward
reads (empty with ``save=False``).  Each backward takes the output gradients, the arguments, the
saved tensors and a ``bool[6]`` mask of the gradients wanted, and returns the six gradients
(source of each side, then weight and bias of each side), an empty tensor where not wanted.

``save_for_backward`` and ``input_grads`` are the autograd formula: ``FusedFunction`` (eager)
and ``register_autograd`` (the registered ops, for ``torch.compile`` and direct ``torch.ops``
callers) both use them, so the two cannot drift.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ._checks import FusedArgs


class Kernels(NamedTuple):
    forward: Callable  # (*args, save) -> (gmf, mlp_in, pooled_user, pooled_item, mf_user, mf_item)
    backward: Callable  # (grad_gmf, grad_mlp_in, *args, *saved, output_mask) -> six gradients
    compiled: Callable  # the registered forward op (autograd registered): what torch.compile traces


def run_kernels(kernels: Kernels, args: FusedArgs) -> tuple[Tensor, Tensor]:
    """``(gmf, mlp_in)``: the one route of a kernel backend's call.  Eager calls skip the
    registered op's Python autograd (``fill_defaults`` over the schema and a generated wrapper,
    about 150 µs a training step): they run ``FusedFunction`` when autograd must record the call,
    else the kernel alone with nothing saved.  Both run the same kernels and formula as the op."""
    if torch.compiler.is_compiling():
        out = kernels.compiled(*args, args.needs_grad())
    elif args.needs_grad():
        return FusedFunction.apply(kernels, *args)
    else:
        out = kernels.forward(*args, False)
    return out[0], out[1]


class FusedFunction(torch.autograd.Function):
    """The eager autograd of every kernel backend: ``apply(kernels, *args)``."""

    @staticmethod
    def forward(ctx, kernels: Kernels, *args):
        out = kernels.forward(*args, True)  # grad mode is off in here
        ctx.backward_kernel = kernels.backward
        save_for_backward(ctx, FusedArgs(*args), out)
        return out[0], out[1]

    @staticmethod
    def backward(ctx, grad_gmf, grad_mlp_in):
        return None, *input_grads(ctx, ctx.backward_kernel, ctx.needs_input_grad[1:], grad_gmf, grad_mlp_in)


def register_autograd(op_name: str, backward: Callable) -> None:
    """The formula for a registered forward op whose arguments are the op's and then ``save``."""

    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[2:])
        save_for_backward(ctx, FusedArgs(*inputs[:len(FusedArgs._fields)]), output)

    def op_backward(ctx, grad_gmf, grad_mlp_in, *_saved_grads):
        needs = ctx.needs_input_grad[:-1]
        return *input_grads(ctx, backward, needs, grad_gmf, grad_mlp_in), None  # `save` has no gradient

    torch.library.register_autograd(op_name, op_backward, setup_context=setup_context)


_NON_TENSORS = ("padding_idx", "h_mf", "mode")
_TENSOR_FIELDS = [n for n in FusedArgs._fields if n not in _NON_TENSORS]


def save_for_backward(ctx, args: FusedArgs, output) -> None:
    ctx.save_for_backward(*(getattr(args, n) for n in _TENSOR_FIELDS), *output[2:6])
    ctx.padding_idx, ctx.h_mf, ctx.mode = args.padding_idx, args.h_mf, args.mode


def input_grads(ctx, backward: Callable, needs: tuple[bool, ...], grad_gmf: Tensor | None,
                grad_mlp_in: Tensor | None) -> list:
    """The gradient of each of the op's arguments, in ``FusedArgs`` order (None where none);
    ``needs`` is ``ctx.needs_input_grad`` of those arguments."""
    *tensors, pooled_user, pooled_item, mf_user, mf_item = ctx.saved_tensors
    args = FusedArgs(**dict(zip(_TENSOR_FIELDS, tensors)), padding_idx=ctx.padding_idx, h_mf=ctx.h_mf,
                     mode=ctx.mode)
    need = dict(zip(FusedArgs._fields, needs))
    user_src = "user_table" if args.user_table is not None else "user"
    item_src = "item_table" if args.item_table is not None else "item"
    names = [user_src, item_src, "user_weight", "user_bias", "item_weight", "item_bias"]
    mask = [need[n] for n in names]
    if grad_gmf is None or grad_mlp_in is None:  # one output unused: a zero gradient for it
        dtype, device, batch = getattr(args, user_src).dtype, args.user.device, args.user.shape[0]
        width = lambda w, src: (w.shape[0] if w is not None else getattr(args, src).shape[-1]) - ctx.h_mf
        if grad_gmf is None:
            grad_gmf = torch.zeros((batch, ctx.h_mf), dtype=dtype, device=device)
        if grad_mlp_in is None:
            grad_mlp_in = torch.zeros((batch, width(args.user_weight, user_src) + width(args.item_weight, item_src)),
                                      dtype=dtype, device=device)
    grads = backward(grad_gmf, grad_mlp_in, *args, pooled_user, pooled_item, mf_user, mf_item, mask)
    by_name = {n: g for n, g, want in zip(names, grads, mask) if want}
    return [by_name.get(n) for n in FusedArgs._fields]
