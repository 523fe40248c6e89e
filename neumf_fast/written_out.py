"""The written-out training step on the CPU: GMF, MLP and NeuMF's forward, log loss, backward
and fused Adam as about 40 tensor calls, with no autograd graph, no ``nn.Module`` calls and no
``Optimizer.step`` bookkeeping.  At the paper's batch of 256 a step is mostly that overhead
(PyTorch's per-op cost on a model this small), and the fused op's backward and Adam's update are
the only real work.

The backward is derived once, for any model of the shape these three share: the fused op in its
"no projection" mode on one table per side (``h_mf`` columns of GMF embedding, the rest MLP
embedding), a ReLU tower on ``mlp_in``, and a prediction layer on the parts the model's ``HEAD``
names, in its order (``models._Ranker``).  It reads the widths, the tower and the order from the
model itself, so a change to a model's head changes this step with it; tests/test_train_step.py
compares its gradients with autograd's for each model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import models
from .ops import _library, dispatch


def _model_problems(model) -> list[str]:
    why = []
    if model.user_embedding.weight.device.type != "cpu" or model.user_embedding.weight.dtype != torch.float32:
        why.append("not float32 CPU parameters")
    if _library.EXTENSION_ERROR is not None:
        return why + [_library.EXTENSION_ERROR]
    dims = dispatch.probe_kind("cpu", torch.float32)._replace(user_ids=True, item_ids=True)
    try:
        if dispatch.select_backend(dims, model.backend).name != "cpu":
            why.append("the model's backend is not the C++ CPU kernel")
    except (ValueError, dispatch.BackendUnavailable) as e:
        why.append(str(e))
    return why


def _optimizer_problems(optimizer, model) -> list[str]:
    """This path runs ``torch._fused_adam_`` itself: the optimizer must be one plain fused Adam
    over exactly the model's parameters."""
    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
        return ["not one torch.optim.Adam parameter group"]
    why = []
    group = optimizer.param_groups[0]
    if not group.get("fused") or group["amsgrad"] or group["maximize"] or group.get("differentiable") \
            or group.get("capturable") or group.get("decoupled_weight_decay"):
        why.append("Adam must be fused=True without amsgrad, maximize, capturable or differentiable")
    if {id(p) for p in group["params"]} != {id(p) for p in model.dense_parameters()}:
        why.append("the optimizer does not hold exactly the model's parameters (but the tables a table "
                   "optimizer holds)")
    return why


class WrittenOutStep:
    """One training step of GMF, MLP or NeuMF on the CPU kernel, written out by hand: the fused
    op's forward and backward kernels, the tower's GEMMs, the log loss and its gradient, and
    ``torch._fused_adam_`` on the optimizer's own state, all outside autograd.

    It computes what autograd and ``torch.optim.Adam(fused=True)`` compute, with the same
    kernels except where noted: the log loss's gradient is ``(sigmoid(logit) - label) / B``, the
    formula autograd's ``binary_cross_entropy_with_logits`` backward uses.  Parameters and the
    optimizer's state end where the autograd step leaves them to float32 rounding
    (tests/test_train_step.py).  ``.grad`` is not written.  The first step of a fresh optimizer
    runs through autograd, which creates Adam's state; this path then updates that state, so
    checkpoints and resuming are unchanged."""

    @staticmethod
    def why_not(model, optimizer) -> list[str]:
        """Why this path cannot run ``model`` with ``optimizer`` (empty when it can)."""
        if type(model) not in (models.GMF, models.MLP, models.NeuMF):
            return [f"{type(model).__name__} is not one of the paper's models"]
        return _model_problems(model) + _optimizer_problems(optimizer, model)

    def __init__(self, model, optimizer, optimizer_threads: int | None = None):
        self.model, self.optimizer, self.optimizer_threads = model, optimizer, optimizer_threads
        self.params = list(optimizer.param_groups[0]["params"])
        self.tables = (model.user_embedding.weight, model.item_embedding.weight)
        self.table_optimizer = model.table_optimizer
        # the prediction layer's input: the parts of model.HEAD, in its order, at these columns
        self.head = model.head_columns()
        gmf = self.head.get("gmf")
        self.h_mf = 0 if gmf is None else gmf.stop - gmf.start  # the op's GMF width; the rest is mlp_in
        self.tower = [(layer.weight, layer.bias) for layer in model.tower] if "mlp" in self.head else []
        self.predict = (model.predict.weight, model.predict.bias)
        self._state = None
        # Adam keeps a 0-d step count per parameter; advancing eleven of them with
        # torch._foreach_add_ costs about 18 us a step on the CPU (3% of a batch-256 step).
        # The counts are moved into one buffer, each parameter's "step" a 0-d view of it, so
        # that one add_ advances them all; the state holds the same values in the same places.
        self._step_counts: Tensor | None = None
        self._step_views: list[Tensor] = []

    def ready(self) -> bool:
        """Whether Adam's state exists for every parameter (a fresh optimizer's first step goes
        through autograd, which creates it)."""
        state = self.optimizer.state
        if not all(p in state and "step" in state[p] for p in self.params):
            return False
        if self._state is None:  # from here on this path owns the step: autograd's .grad is stale
            self.optimizer.zero_grad(set_to_none=True)
        # read every step: load_state_dict replaces the state's tensors
        steps = [state[p]["step"] for p in self.params]
        if len(steps) != len(self._step_views) or any(s is not v for s, v in zip(steps, self._step_views)):
            self._step_counts = torch.stack([s.detach() for s in steps])
            self._step_views = list(self._step_counts.unbind())
            for p, view in zip(self.params, self._step_views):
                state[p]["step"] = view
        self._state = ([state[p]["exp_avg"] for p in self.params], [state[p]["exp_avg_sq"] for p in self.params],
                       self._step_views)
        return True

    def step(self, user: Tensor, item: Tensor, label: Tensor) -> Tensor:
        """One step on this batch; returns its mean log loss (a 0-d tensor)."""
        loss, grads = self._gradients(user, item, label)
        group = self.optimizer.param_groups[0]
        exp_avgs, exp_avg_sqs, steps = self._state
        beta1, beta2 = group["betas"]
        threads = torch.get_num_threads()
        if self.optimizer_threads:
            torch.set_num_threads(self.optimizer_threads)
        try:
            with torch.no_grad():
                self._step_counts.add_(1)  # every parameter's step count (see __init__)
                torch._fused_adam_(self.params, [grads[id(p)] for p in self.params], exp_avgs, exp_avg_sqs, [], steps,
                                   lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                                   eps=group["eps"], amsgrad=False, maximize=False)
        finally:
            if self.optimizer_threads:
                torch.set_num_threads(threads)
        return loss

    def gradients(self, user: Tensor, item: Tensor, label: Tensor) -> dict[str, Tensor]:
        """The step's gradients by parameter name (for tests)."""
        _, grads = self._gradients(user, item, label)
        return {name: grads[id(p)] for name, p in self.model.named_parameters()}

    def _gradients(self, user: Tensor, item: Tensor, label: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """(mean log loss, gradient of every parameter by ``id``); an MLP has ``h_mf = 0`` and a
        GMF no tower, so their GMF product or MLP input is ``[B, 0]`` and drops out."""
        with torch.no_grad():
            user_table, item_table = self.tables
            ids = user[:, None]
            args = (ids, None, user_table, None, item, item_table, None, None, None, None, self.h_mf, "sum")
            gmf, mlp_in, *saved = _library._kernel_call(*args, True)
            acts = [mlp_in]
            for weight, bias in self.tower:
                acts.append(torch.addmm(bias, acts[-1], weight.t()).relu_())
            parts = {"gmf": gmf, "mlp": acts[-1]}
            chosen = [parts[p] for p in self.head]
            feats = chosen[0] if len(chosen) == 1 else torch.cat(chosen, dim=-1)
            pw, pb = self.predict
            logit = torch.addmm(pb, feats, pw.t()).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(logit, label)
            # d loss / d logit of the mean log loss, as autograd's backward of it computes it
            d_logit = torch.sigmoid(logit).sub_(label).mul_(1.0 / len(label))[:, None]
            grads = {id(pw): d_logit.t().mm(feats), id(pb): d_logit.sum(0)}
            d_feats = d_logit.mm(pw)
            none = d_feats[:, :0]
            d_gmf, d_h = (d_feats[:, self.head[p]] if p in self.head else none for p in ("gmf", "mlp"))
            for k in range(len(self.tower) - 1, -1, -1):
                weight, bias = self.tower[k]
                g = torch.ops.aten.threshold_backward(d_h, acts[k + 1], 0)
                grads[id(weight)], grads[id(bias)] = g.t().mm(acts[k]), g.sum(0)
                d_h = g.mm(weight)
            if self.table_optimizer is None:
                grads[id(user_table)], grads[id(item_table)], *_ = torch.ops.neumf_fast.fused_input_backward(
                    d_gmf.contiguous(), d_h.contiguous(), *args, *saved, [True, True, False, False, False, False])
            else:  # the rows' gradients, then (every gradient formed) the update of those rows
                g_user, g_item = self._row_gradients(d_gmf, d_h, saved)
                self.table_optimizer.update(user_table, ids, g_user, None)
                self.table_optimizer.update(item_table, item[:, None], g_item, None)
        return loss, grads

    def _row_gradients(self, d_gmf: Tensor, d_mlp_in: Tensor, saved) -> tuple[Tensor, Tensor]:
        """Each side's ``[B, D]`` row gradient, what the op's backward forms before it scatters
        into a table: in its no-projection mode a side's row is ``[mf | mlp]``, so its gradient is
        ``[d_gmf * the other side's mf | its own columns of d_mlp_in]``.  Written out here (not the
        op's backward on the gathered rows) to spare a gather and a copy of each side's rows, 0.7
        ms of a 4 ms step at batch 8192 (tests/test_table_optimizer.py checks it against
        autograd)."""
        _, _, mf_user, mf_item = saved
        mlp_user = self.tables[0].shape[1] - self.h_mf
        return (torch.cat([d_gmf * mf_item, d_mlp_in[:, :mlp_user]], dim=1),
                torch.cat([d_gmf * mf_user, d_mlp_in[:, mlp_user:]], dim=1))
