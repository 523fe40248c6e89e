"""One training step (forward, log loss, backward, optimizer step) and, on CUDA, the same step
captured once in a CUDA graph and replayed for every batch.

Why capture: the paper's model is small.  At batch 256 to 4096 a GPU step is microseconds of
kernels behind about a hundred launches and the Python that issues them; an H200 took 3.6 ms a
step at batch 4096 without capture.  A replay is one launch for the whole step.

What capture needs, and where it is met:

- *Static inputs.*  Each full batch is copied into fixed buffers (user, item, label) that the
  graph reads.
- *No host synchronisation inside the step.*  The loss is summed into a device tensor that is
  read once per epoch.  Adam is fused and ``capturable`` (its step count lives on the device).
  The op's id range checks turn into device-side asserts while a graph is captured
  (``ops._checks.check_id_range``; the CUDA kernels trap instead of raising).
- *Warm-up before capture.*  The first ``warmup`` full batches run eagerly on a side stream, as
  PyTorch's whole-network capture recipe does: they create Adam's state and autograd's lazily
  made buffers.  They are real training steps on real batches, so a run trains on the same
  batches in the same order with or without graphs.
- *Gradients.*  They are set to ``None`` before capture, so the captured backward allocates them
  in the graph's memory pool and overwrites them on every replay.  A batch that does not fill
  the buffers (an epoch's last) runs eagerly and zeroes those gradients in place, so the graph's
  gradient buffers stay the parameters' gradients.

Not captured: fp16 (``GradScaler`` reads its inf check on the host every step) and
multi-process training (DDP's gradient hooks).  ``TrainStep`` refuses both with capture.

On the CPU the paper's models (GMF, MLP, NeuMF) take a second fast path, ``_WrittenOutStep``:
the same forward, loss, backward and fused Adam written out as about 40 tensor calls, with no
autograd graph, no ``nn.Module`` calls and no ``Optimizer.step`` bookkeeping.  At the paper's
batch of 256 a step is mostly that overhead (PyTorch's per-op cost on a model this small), and
the fused op's backward and Adam's update are the only real work.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import _library

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainStep:
    """Runs training steps on ``model`` with ``optimizer`` and sums their loss on the device.

    Each call takes one global batch ``(user, item, label)`` of ``n`` rows, of which this rank
    trains ``user, item, label`` (its share, with ``world > 1``).  The loss is the mean log
    loss of the global batch: with ``world > 1`` each rank's summed loss is scaled by
    ``world / n``, so that DDP's gradient average is the global batch's gradient.

    ``capture=True`` (CUDA, one process, fp32 or bf16) captures the step for batches of
    ``batch_size`` rows after ``warmup`` eager ones; other batches run eagerly.
    ``precision`` ``"bf16"``/``"fp16"`` runs the forward under ``torch.autocast`` (parameters
    and optimizer stay fp32); ``scaler`` is the ``torch.amp.GradScaler`` that fp16 needs.
    ``written_out`` lets GMF, MLP and NeuMF on the C++ CPU kernel, fp32, one process, with
    ``Adam(fused=True)``, take the written-out step (``_WrittenOutStep``); ``False`` keeps every
    step on autograd.  ``optimizer_threads``, if given, is the torch thread count for that
    step's Adam update alone, the rest of the step keeping its own.  The trainer leaves it off:
    at batch 256 on the 2-core VM, Adam on both cores made a step 13% faster in some processes
    and 65% slower in others (0.88 against 0.53 ms, for a whole process: waking the second core
    for each step's update), in an A/B of 1 and 2 threads interleaved block by block.
    """

    def __init__(self, model, optimizer, batch_size: int, *, user_input=None, precision: str = "fp32",
                 scaler=None, world: int = 1, capture: bool = False, warmup: int = 3, written_out: bool = True,
                 optimizer_threads: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if capture:
            why = _capture_problems(optimizer, precision, scaler, world)
            if why:
                raise ValueError("neumf_fast: the training step cannot be captured in a CUDA graph: " + "; ".join(why))
        self.model, self.optimizer, self.batch_size = model, optimizer, batch_size
        self.user_input, self.precision, self.scaler, self.world = user_input, precision, scaler, world
        self.capture, self.warmup = capture, warmup
        self.total: Tensor | None = None  # the summed loss, on the device
        self.graph = None
        self._static: tuple[Tensor, Tensor, Tensor] | None = None
        self._warm = 0
        # the written-out CPU step, where it applies (see _WrittenOutStep.why_not)
        self.written_out = (_WrittenOutStep(model, optimizer, optimizer_threads) if written_out and not capture and user_input is None
                            and precision == "fp32" and scaler is None and world == 1
                            and not _WrittenOutStep.why_not(model, optimizer) else None)

    def begin_epoch(self, device) -> None:
        """Starts a new loss sum.  It stays the same tensor once a graph holds it, so that
        replays add to it; the sum is zeroed in place."""
        if self.total is None:
            self.total = torch.zeros((), device=device)
        else:
            self.total.zero_()

    def mean_loss(self, samples: int) -> float:
        """The mean log loss of the epoch's ``samples`` rows (one host sync)."""
        total = self.total
        if self.world > 1:
            total = total.clone()
            torch.distributed.all_reduce(total)
        return float(total) / max(1, samples)

    def __call__(self, user: Tensor, item: Tensor, label: Tensor, n: int) -> None:
        if self.total is None:
            self.begin_epoch(label.device)
        if self.written_out is not None and self.written_out.ready():
            self.total += self.written_out.step(user, item, label) * n
        elif not (self.capture and n == self.batch_size):
            self._eager(user, item, label, n)
        elif self.graph is not None:
            for buffer, batch in zip(self._static, (user, item, label)):
                buffer.copy_(batch, non_blocking=True)
            self.graph.replay()
        elif self._warm < self.warmup:
            self._warm += 1
            side = torch.cuda.Stream(device=label.device)
            side.wait_stream(torch.cuda.current_stream(label.device))
            with torch.cuda.stream(side):
                self._eager(user, item, label, n)
            torch.cuda.current_stream(label.device).wait_stream(side)
        else:
            self._capture_and_replay(user, item, label, n)

    def _autocast(self, device_type: str):
        low = PRECISIONS[self.precision]
        if low is None:
            return contextlib.nullcontext()
        # a graph replays the casts it captured; autocast's cast cache would outlive them
        return torch.autocast(device_type, dtype=low, cache_enabled=not self.capture)

    def _loss(self, user: Tensor, item: Tensor, label: Tensor, n: int) -> Tensor:
        """Forward and loss; adds this step's summed loss to ``self.total``."""
        with self._autocast(label.device.type):
            logits = self.model(self.user_input(user, item) if self.user_input else user, item)
        if self.world == 1:
            loss = F.binary_cross_entropy_with_logits(logits.float(), label)
            self.total += loss.detach() * n
            return loss
        summed = F.binary_cross_entropy_with_logits(logits.float(), label, reduction="sum")
        self.total += summed.detach()
        return summed * (self.world / n)

    def _backward_and_step(self, loss: Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def _eager(self, user: Tensor, item: Tensor, label: Tensor, n: int) -> None:
        # once a graph exists, its gradient buffers are the parameters' gradients: zero them in
        # place rather than replacing them
        self.optimizer.zero_grad(set_to_none=self.graph is None)
        self._backward_and_step(self._loss(user, item, label, n))

    def _capture_and_replay(self, user: Tensor, item: Tensor, label: Tensor, n: int) -> None:
        self._static = tuple(t.clone() for t in (user, item, label))
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._backward_and_step(self._loss(*self._static, n))
        self.graph = graph
        graph.replay()  # capture records the step without running it


def _capture_problems(optimizer, precision: str, scaler, world: int) -> list[str]:
    why = []
    if not torch.cuda.is_available():
        why.append("CUDA graphs need a CUDA device")
    if precision == "fp16" or scaler is not None:
        why.append("fp16's GradScaler reads its inf check on the host every step (use --precision bf16)")
    if world > 1:
        why.append("multi-process training is not captured (DDP's gradient hooks)")
    if "capturable" in optimizer.defaults and not all(g["capturable"] for g in optimizer.param_groups):
        why.append(f"the optimizer must be built with capturable=True ({type(optimizer).__name__})")
    return why


class _WrittenOutStep:
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
        from . import models
        from .ops import dispatch

        why = []
        if type(model) not in (models.GMF, models.MLP, models.NeuMF):
            why.append(f"{type(model).__name__} is not one of the paper's models")
            return why
        if model.user_embedding.weight.device.type != "cpu" or model.user_embedding.weight.dtype != torch.float32:
            why.append("not float32 CPU parameters")
        if _library.EXTENSION_ERROR is not None:
            why.append(_library.EXTENSION_ERROR)
        else:
            dims = dispatch.probe_kind("cpu", torch.float32)._replace(user_ids=True, item_ids=True)
            try:
                if dispatch.select_backend(dims, model.backend).name != "cpu":
                    why.append("the model's backend is not the C++ CPU kernel")
            except (ValueError, dispatch.BackendUnavailable) as e:
                why.append(str(e))
        if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
            why.append("not one torch.optim.Adam parameter group")
        else:
            group = optimizer.param_groups[0]
            if not group.get("fused") or group["amsgrad"] or group["maximize"] or group.get("differentiable") \
                    or group.get("capturable") or group.get("decoupled_weight_decay"):
                why.append("Adam must be fused=True without amsgrad, maximize, capturable or differentiable")
            if {id(p) for p in group["params"]} != {id(p) for p in model.parameters()}:
                why.append("the optimizer does not hold exactly the model's parameters")
        return why

    def __init__(self, model, optimizer, optimizer_threads: int | None = None):
        from . import models

        self.model, self.optimizer, self.optimizer_threads = model, optimizer, optimizer_threads
        self.params = list(optimizer.param_groups[0]["params"])
        self.tables = (model.user_embedding.weight, model.item_embedding.weight)
        self.h_mf = 0 if isinstance(model, models.MLP) else model.factors
        self.tower = [] if isinstance(model, models.GMF) else [(layer.weight, layer.bias) for layer in model.tower]
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
        GMF no tower, so their GMF product and MLP input are ``[B, 0]`` and drop out."""
        with torch.no_grad():
            user_table, item_table = self.tables
            ids = user[:, None]
            args = (ids, None, user_table, None, item, item_table, None, None, None, None, self.h_mf, "sum")
            gmf, mlp_in, *saved = _library._kernel_call(*args, True)
            acts = [mlp_in]
            for weight, bias in self.tower:
                acts.append(torch.addmm(bias, acts[-1], weight.t()).relu_())
            pw, pb = self.predict
            feats = acts[-1] if self.h_mf == 0 else gmf if not self.tower else torch.cat([gmf, acts[-1]], dim=-1)
            logit = torch.addmm(pb, feats, pw.t()).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(logit, label)
            # d loss / d logit of the mean log loss, as autograd's backward of it computes it
            d_logit = torch.sigmoid(logit).sub_(label).mul_(1.0 / len(label))[:, None]
            grads = {id(pw): d_logit.t().mm(feats), id(pb): d_logit.sum(0)}
            d_feats = d_logit.mm(pw)
            d_gmf, d_h = d_feats[:, :self.h_mf], d_feats[:, self.h_mf:]
            for k in range(len(self.tower) - 1, -1, -1):
                weight, bias = self.tower[k]
                g = torch.ops.aten.threshold_backward(d_h, acts[k + 1], 0)
                grads[id(weight)], grads[id(bias)] = g.t().mm(acts[k]), g.sum(0)
                d_h = g.mm(weight)
            g_user, g_item, *_ = torch.ops.neumf_fast.fused_input_backward(
                d_gmf.contiguous(), d_h.contiguous(), *args, *saved, [True, True, False, False, False, False])
            grads[id(user_table)], grads[id(item_table)] = g_user, g_item
        return loss, grads
