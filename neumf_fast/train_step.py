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
multi-process training (DDP's gradient hooks).  ``capture_problems`` is the one list of reasons:
``TrainStep`` refuses capture with them, and ``use_cuda_graphs`` is the trainer's switch.

On the CPU the paper's models (GMF, MLP, NeuMF) take a second fast path, the written-out step
(``written_out.py``): the same step without autograd.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from .written_out import WrittenOutStep

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
    ``Adam(fused=True)``, take the written-out step (``WrittenOutStep``); ``False`` keeps every
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
            why = capture_problems(precision, world, optimizer, scaler)
            if why:
                raise ValueError(CANNOT_CAPTURE + "; ".join(why))
        self.model, self.optimizer, self.batch_size = model, optimizer, batch_size
        self.user_input, self.precision, self.scaler, self.world = user_input, precision, scaler, world
        self.capture, self.warmup = capture, warmup
        self.total: Tensor | None = None  # the summed loss, on the device
        self.graph = None
        self._static: tuple[Tensor, Tensor, Tensor] | None = None
        self._warm = 0
        # the written-out CPU step, where it applies (see WrittenOutStep.why_not)
        self.written_out = (WrittenOutStep(model, optimizer, optimizer_threads)
                            if written_out and not capture and user_input is None and precision == "fp32"
                            and scaler is None and world == 1 and not WrittenOutStep.why_not(model, optimizer)
                            else None)

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


CANNOT_CAPTURE = "neumf_fast: the training step cannot be captured in a CUDA graph: "


def capture_problems(precision: str, world: int, optimizer=None, scaler=None) -> list[str]:
    """Why a training step with these settings cannot be captured (empty when it can)."""
    why = []
    if not torch.cuda.is_available():
        why.append("CUDA graphs need a CUDA device")
    if precision == "fp16" or scaler is not None:
        why.append("fp16's GradScaler reads its inf check on the host every step (use --precision bf16)")
    if world > 1:
        why.append("multi-process training is not captured (DDP's gradient hooks)")
    if optimizer is not None and "capturable" in optimizer.defaults \
            and not all(g["capturable"] for g in optimizer.param_groups):
        why.append(f"the optimizer must be built with capturable=True ({type(optimizer).__name__})")
    return why


def use_cuda_graphs(requested: bool, device: torch.device, precision: str, world: int) -> bool:
    """The trainer's ``cuda_graphs`` switch: off CUDA it is ignored with a warning (a config
    written for a GPU still trains elsewhere); on CUDA a setting that cannot be captured raises,
    saying why, before any work (the optimizer, built next with ``capturable=True``, is checked
    by ``TrainStep``)."""
    if requested and device.type != "cuda":
        warnings.warn(f"neumf_fast: cuda_graphs ignored: CUDA graphs need a CUDA device, training on {device}",
                      RuntimeWarning, stacklevel=2)
        return False
    if requested:
        why = capture_problems(precision, world)
        if why:
            raise ValueError(CANNOT_CAPTURE + "; ".join(why))
    return requested
