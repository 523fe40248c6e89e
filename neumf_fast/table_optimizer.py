"""``TableOptimizer``: embedding tables updated inside the fused op's backward, row by row.

``dense`` (no ``TableOptimizer``) is the paper's setting: each table gets a ``.grad`` and
``torch.optim`` updates every row at every step.  A ``TableOptimizer`` instead updates, inside the
backward, only the rows a batch touched (``neumf_fast.ops.table_update``), with one of:

- ``adam``: row-wise ("lazy") Adam, per-element moments; bias correction counts the table's
  steps (``torch.optim.SparseAdam``'s choice: one count per table, no per-row state);
- ``rowwise_adagrad``: one accumulator per row (fbgemm's ``EXACT_ROWWISE_ADAGRAD``);
- ``sgd``.

Its hyper-parameters are set here, once, and saved with its state (``state_dict``).  Under
``torch.distributed`` each step all-gathers the ranks' ids and row gradients (divided by the world
size, as DDP averages) and every rank applies the same update, so the tables stay identical.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .ops.table_update import TABLE_OPTIMIZERS, TableState, new_state, update_kernel

# The recommended learning rate of each (docs/training.md has the measurements behind them).
DEFAULT_LR = {"adam": 0.002, "rowwise_adagrad": 0.2, "sgd": 50.0}
CHOICES = ("dense", *TABLE_OPTIMIZERS)


@dataclasses.dataclass(frozen=True)
class TableHyper:
    name: str = "adam"
    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0


class TableOptimizer:
    """Updates ``tables`` (names to the table parameters, as ``model.tables()`` gives them) in the
    fused op's backward.  Pass it to the model (``model.table_optimizer = opt``) and give
    ``torch.optim`` only the other parameters (``model.dense_parameters()``)."""

    def __init__(self, tables: dict[str, Tensor], name: str = "adam", *, lr: float | None = None,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 backend: str = "auto", process_group=None):
        if name not in TABLE_OPTIMIZERS:
            raise ValueError(f"neumf_fast: table optimizer must be one of {TABLE_OPTIMIZERS}, got {name!r}")
        self.hyper = TableHyper(name, DEFAULT_LR[name] if lr is None else lr, betas[0], betas[1], eps, weight_decay)
        self.tables = dict(tables)
        self.state = {n: new_state(name, t) for n, t in self.tables.items()}
        self._names = {id(t): n for n, t in self.tables.items()}
        self.backend, self.process_group = backend, process_group

    def holds(self, table: Tensor) -> bool:
        return id(table) in self._names

    def update(self, table: Tensor, ids: Tensor, grad: Tensor, padding_idx: int | None) -> None:
        """One step on the rows of ``table`` that ``ids`` ``[M, K]`` names, each position taking
        its row of ``grad`` ``[M, D]`` (``reference.table_update_``)."""
        ids, grad, padding_idx = self._gather(ids, grad, padding_idx)
        h = self.hyper
        state: TableState = self.state[self._names[id(table)]]
        with torch.no_grad():
            update_kernel(table.device, self.backend)(table, *state, ids, grad, padding_idx, h.name, h.lr, h.beta1,
                                                      h.beta2, h.eps, h.weight_decay)

    def _gather(self, ids: Tensor, grad: Tensor, padding_idx: int | None) -> tuple[Tensor, Tensor, int | None]:
        """Every rank's ids and gradients (divided by the world size, as DDP averages), in rank
        order, so that each rank applies the same update; this rank's own in one process.  Ranks'
        shares of a batch differ by up to one row: each pads its share to the largest with
        padding positions (id ``padding_idx``, or -1 made the padding id where there is none)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(self.process_group) == 1:
            return ids, grad, padding_idx
        world = dist.get_world_size(self.process_group)
        sizes = ids.new_tensor([ids.shape[0]])
        dist.all_reduce(sizes, op=dist.ReduceOp.MAX, group=self.process_group)
        pad = -1 if padding_idx is None else padding_idx
        rows = int(sizes)
        ids = torch.cat([ids, ids.new_full((rows - ids.shape[0], ids.shape[1]), pad)])
        grad = torch.cat([grad.div(world), grad.new_zeros((rows - grad.shape[0], grad.shape[1]))])
        out_ids = ids.new_empty((world * rows, ids.shape[1]))
        out_grad = grad.new_empty((world * rows, grad.shape[1]))
        dist.all_gather_into_tensor(out_ids, ids.contiguous(), group=self.process_group)
        dist.all_gather_into_tensor(out_grad, grad.contiguous(), group=self.process_group)
        return out_ids, out_grad, pad

    def state_dict(self) -> dict:
        return {"hyper": dataclasses.asdict(self.hyper),
                "state": {n: s._asdict() for n, s in self.state.items()}}

    def load_state_dict(self, saved: dict) -> None:
        """Restores the state in place (its tensors keep their identity, so a captured CUDA graph
        still reads them); the hyper-parameters must match this optimizer's."""
        if saved["hyper"] != dataclasses.asdict(self.hyper):
            raise ValueError(f"neumf_fast: the saved table optimizer is {saved['hyper']}, this one is "
                             f"{dataclasses.asdict(self.hyper)}")
        if set(saved["state"]) != set(self.state):
            raise ValueError(f"neumf_fast: the saved table optimizer holds {sorted(saved['state'])}, this one "
                             f"{sorted(self.state)}")
        with torch.no_grad():
            for n, s in self.state.items():
                for field, t in s._asdict().items():
                    t.copy_(saved["state"][n][field])
