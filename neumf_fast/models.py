"""The recommendation models: the paper's GMF, MLP and NeuMF (He et al., WWW 2017) and the
project's SequenceNeuMF.

Every model's first stage is one call of the fused op (``neumf_fast.ops.neumf_input``), so the
backend is a setting (``backend=``) and the ``state_dict`` is the same on every backend.  GMF,
MLP and NeuMF use the op's "no projection" mode: each side has one embedding table holding
``[mf | mlp]`` side by side, and the op splits it.

Every model returns a logit per (user, item) row from ``forward`` and has ``score(user, items)``
for ranking, which computes the user side once per user, not once per candidate.  Scoring relies
on the first MLP layer being linear: ``W1 @ cat(u, i) = W1_u @ u + W1_i @ i``, so the user half
and the item half of that layer are each computed once and added with broadcasting.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import StackedProjections, TableOwner
from .ops import neumf_input

PAPER_LAYERS = (64, 32, 16, 8)


def _paper_init_embedding(table: Tensor) -> None:
    # the authors' Keras code draws embeddings from N(0, 0.01)
    nn.init.normal_(table, std=0.01)


def _paper_init_tower(layers: nn.ModuleList) -> None:
    # Keras Dense default: Glorot uniform weights, zero bias
    for layer in layers:
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)


def _paper_init_predict(layer: nn.Linear) -> None:
    # the prediction layer is LeCun uniform in the authors' code
    bound = math.sqrt(3.0 / layer.in_features)
    nn.init.uniform_(layer.weight, -bound, bound)
    nn.init.zeros_(layer.bias)


def _tower(widths: Sequence[int]) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))


def _run_tower(layers: nn.ModuleList, x: Tensor, first_done: bool = False) -> Tensor:
    """ReLU after every layer; ``first_done`` means x is already the first layer's pre-activation."""
    for i, layer in enumerate(layers):
        x = F.relu(x if (first_done and i == 0) else layer(x))
    return x


def _as_candidates(users: int, items: Tensor) -> Tensor:
    if items.dim() == 1:  # one shared candidate list (full ranking)
        return items
    if items.dim() != 2 or items.shape[0] != users:
        raise ValueError(f"items must be [num_candidates] or [{users}, num_candidates], got {list(items.shape)}")
    return items


class _Ranker(TableOwner, nn.Module):
    """The prediction layer, and shared scoring: ``user_parts`` and ``item_parts`` give each
    side's GMF vector and its share of the first tower layer's pre-activation; ``head`` combines
    them with broadcasting."""

    # What the prediction layer reads, in this order: "gmf" (the GMF product) and/or "mlp" (the
    # tower's output).  forward, score and the written-out training step (written_out.py, which
    # differentiates it by hand) all follow it, so a head cannot change in one of them alone.
    HEAD: tuple[str, ...] = ()

    def user_parts(self, user, **kw) -> tuple[Tensor | None, Tensor | None]:
        raise NotImplementedError

    def item_parts(self, items: Tensor) -> tuple[Tensor | None, Tensor | None]:
        raise NotImplementedError

    def head_columns(self) -> dict[str, slice]:
        """The columns of the prediction layer's input that each part of ``HEAD`` fills."""
        mlp = self.tower[-1].out_features if "mlp" in self.HEAD else 0
        widths = {"gmf": self.predict.in_features - mlp, "mlp": mlp}
        starts = [0]
        for part in self.HEAD:
            starts.append(starts[-1] + widths[part])
        return {part: slice(a, b) for part, a, b in zip(self.HEAD, starts, starts[1:])}

    def predict_logit(self, gmf: Tensor | None, mlp_out: Tensor | None) -> Tensor:
        """The prediction layer on ``HEAD``'s parts; in scoring one part is broadcast over the other."""
        parts = [gmf if part == "gmf" else mlp_out for part in self.HEAD]
        if len(parts) > 1 and parts[0].shape[:-1] != parts[1].shape[:-1]:
            lead = torch.broadcast_shapes(parts[0].shape[:-1], parts[1].shape[:-1])
            parts = [p.expand(*lead, -1) for p in parts]
        return self.predict(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]).squeeze(-1)

    def head(self, gmf: Tensor | None, first: Tensor | None) -> Tensor:
        """The logit from the GMF product and the first tower layer's pre-activation."""
        mlp_out = None if first is None else _run_tower(self.tower, first, first_done=True)
        return self.predict_logit(gmf, mlp_out)

    @torch.no_grad()
    def score(self, user, items: Tensor, **user_kw) -> Tensor:
        """Logits of each user against candidate items.

        Args:
            user: what ``forward`` takes as its user (ids ``[U]``, or a history ``[U, L]``).
            items: ids ``[U, C]`` (per-user candidates) or ``[C]`` (the same candidates for all).

        Returns:
            ``[U, C]`` logits.  The user side is computed once per user and the item side once
            per distinct candidate column.
        """
        num_users = user.shape[0]
        items = _as_candidates(num_users, items)
        mf_u, first_u = self.user_parts(user, **user_kw)
        mf_i, first_i = self.item_parts(items.reshape(-1))
        shape = (num_users if items.dim() == 2 else 1, items.shape[-1], -1)
        gmf = None if mf_u is None else mf_u[:, None, :] * mf_i.reshape(shape)
        first = None if first_u is None else first_u[:, None, :] + first_i.reshape(shape)
        return self.head(gmf, first)


class GMF(_Ranker):
    """Generalized Matrix Factorization: ``logit = h · (p_u ⊙ q_i) + b``."""

    HEAD = ("gmf",)

    def __init__(self, num_users: int, num_items: int, factors: int = 8, *, backend: str = "auto"):
        super().__init__()
        self.backend, self.factors = backend, factors
        self.user_embedding = nn.Embedding(num_users, factors)
        self.item_embedding = nn.Embedding(num_items, factors)
        self.predict = nn.Linear(factors, 1)
        _paper_init_embedding(self.user_embedding.weight)
        _paper_init_embedding(self.item_embedding.weight)
        _paper_init_predict(self.predict)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        gmf, _ = neumf_input(user[:, None], item, h_mf=self.factors, user_table=self.user_embedding.weight,
                             item_table=self.item_embedding.weight, backend=self.backend, table_optimizer=self.table_optimizer)
        return self.predict_logit(gmf, None)

    def user_parts(self, user):
        return self.user_embedding(user), None

    def item_parts(self, items):
        return self.item_embedding(items), None


class MLP(_Ranker):
    """The paper's MLP: ``layers[0]`` is the width of ``cat(p_u, q_i)`` (so each embedding is
    ``layers[0] // 2`` wide), followed by ReLU layers of the remaining widths and a logit."""

    HEAD = ("mlp",)

    def __init__(self, num_users: int, num_items: int, layers: Sequence[int] = PAPER_LAYERS, *, backend: str = "auto"):
        super().__init__()
        if len(layers) < 2 or layers[0] % 2:
            raise ValueError(f"layers must have at least two widths and an even first one, got {list(layers)}")
        self.backend, self.layers_spec = backend, list(layers)
        dim = layers[0] // 2
        self.user_embedding = nn.Embedding(num_users, dim)
        self.item_embedding = nn.Embedding(num_items, dim)
        self.tower = _tower(layers)
        self.predict = nn.Linear(layers[-1], 1)
        _paper_init_embedding(self.user_embedding.weight)
        _paper_init_embedding(self.item_embedding.weight)
        _paper_init_tower(self.tower)
        _paper_init_predict(self.predict)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        _, mlp_in = neumf_input(user[:, None], item, h_mf=0, user_table=self.user_embedding.weight,
                                item_table=self.item_embedding.weight, backend=self.backend, table_optimizer=self.table_optimizer)
        return self.predict_logit(None, _run_tower(self.tower, mlp_in))

    def _split_first(self):
        dim = self.user_embedding.embedding_dim
        w = self.tower[0].weight
        return w[:, :dim], w[:, dim:]

    def user_parts(self, user):
        w_u, _ = self._split_first()
        return None, F.linear(self.user_embedding(user), w_u, self.tower[0].bias)

    def item_parts(self, items):
        _, w_i = self._split_first()
        return None, F.linear(self.item_embedding(items), w_i)


class NeuMF(_Ranker):
    """Neural Matrix Factorization: GMF and MLP with separate embeddings, fused in the last layer.

    Each side has one table ``[N, factors + layers[0] // 2]`` whose first ``factors`` columns are
    the GMF embedding and the rest the MLP embedding, so the fused op's "no projection" mode
    produces both the GMF product and the MLP input in one call.
    ``logit = h · cat(p_u ⊙ q_i, mlp_out) + b``.
    """

    HEAD = ("gmf", "mlp")

    def __init__(self, num_users: int, num_items: int, factors: int = 8, layers: Sequence[int] = PAPER_LAYERS,
                 *, backend: str = "auto"):
        super().__init__()
        if len(layers) < 2 or layers[0] % 2:
            raise ValueError(f"layers must have at least two widths and an even first one, got {list(layers)}")
        self.backend, self.factors, self.layers_spec = backend, factors, list(layers)
        width = factors + layers[0] // 2
        self.user_embedding = nn.Embedding(num_users, width)
        self.item_embedding = nn.Embedding(num_items, width)
        self.tower = _tower(layers)
        self.predict = nn.Linear(factors + layers[-1], 1)
        _paper_init_embedding(self.user_embedding.weight)
        _paper_init_embedding(self.item_embedding.weight)
        _paper_init_tower(self.tower)
        _paper_init_predict(self.predict)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        gmf, mlp_in = neumf_input(user[:, None], item, h_mf=self.factors, user_table=self.user_embedding.weight,
                                  item_table=self.item_embedding.weight, backend=self.backend, table_optimizer=self.table_optimizer)
        return self.predict_logit(gmf, _run_tower(self.tower, mlp_in))

    @classmethod
    def from_pretrained(cls, gmf: GMF, mlp: MLP, alpha: float = 0.5, *, backend: str = "auto") -> "NeuMF":
        """The paper's pretraining: embeddings and tower copied from a trained GMF and MLP, and
        the prediction layer ``[α·h_gmf | (1-α)·h_mlp]`` with bias ``α·b_gmf + (1-α)·b_mlp``."""
        num_users, num_items = gmf.user_embedding.num_embeddings, gmf.item_embedding.num_embeddings
        if (mlp.user_embedding.num_embeddings, mlp.item_embedding.num_embeddings) != (num_users, num_items):
            raise ValueError("GMF and MLP were trained on different numbers of users or items")
        model = cls(num_users, num_items, gmf.factors, mlp.layers_spec, backend=backend)
        f = gmf.factors
        with torch.no_grad():
            for side in ("user_embedding", "item_embedding"):
                table = getattr(model, side).weight
                table[:, :f] = getattr(gmf, side).weight
                table[:, f:] = getattr(mlp, side).weight
            model.tower.load_state_dict(mlp.tower.state_dict())
            model.predict.weight.copy_(torch.cat([alpha * gmf.predict.weight, (1 - alpha) * mlp.predict.weight], dim=1))
            model.predict.bias.copy_(alpha * gmf.predict.bias + (1 - alpha) * mlp.predict.bias)
        return model

    def _split_first(self):
        dim = self.layers_spec[0] // 2
        w = self.tower[0].weight
        return w[:, :dim], w[:, dim:]

    def user_parts(self, user):
        row = self.user_embedding(user)
        w_u, _ = self._split_first()
        return row[:, :self.factors], F.linear(row[:, self.factors:], w_u, self.tower[0].bias)

    def item_parts(self, items):
        row = self.item_embedding(items)
        _, w_i = self._split_first()
        return row[:, :self.factors], F.linear(row[:, self.factors:], w_i)


class SequenceNeuMF(StackedProjections, _Ranker):
    """NeuMF whose user is a pooled sequence: item ids from the user's history (gathered from
    ``history_embedding`` inside the fused op) or dense feature vectors ``[B, L, user_dim]``.

    The fused op pools the user, applies the dual MF/MLP projections of both sides and forms the
    GMF product; an MLP tower (widths ``tower_mult × dim``, by default ``[2, 8, 4, 2, 1]`` as in
    the design) runs on ``mlp_in``, and a final linear layer over ``cat(mlp_out, gmf)`` gives the
    logit.  Its first stage is a ``FusedUserItem``-shaped set of four projections.

    Args:
        num_items: items that can be scored (ids ``0..num_items-1``).
        dim: embedding width, and the width of each MF and MLP projection.
        history_items: with ids as the user, the size of the history vocabulary; the padding id
            is ``history_items`` (one extra row).  ``None`` means dense user features.
        user_dim: width of dense user features (with ``history_items=None``).
        mode: ``"mean"`` (default) or ``"sum"`` pooling.
    """

    HEAD = ("mlp", "gmf")  # the design's order; the paper's NeuMF has the GMF product first

    def __init__(self, num_items: int, dim: int = 32, *, history_items: int | None = None, user_dim: int | None = None,
                 tower_mult: Sequence[int] = (2, 8, 4, 2, 1), mode: str = "mean", backend: str = "auto"):
        super().__init__()
        if (history_items is None) == (user_dim is None):
            raise ValueError("give exactly one of history_items (id histories) or user_dim (dense features)")
        if tower_mult[0] != 2:
            raise ValueError(f"the tower's first width is mlp_in = 2 × dim, so tower_mult[0] must be 2, got {tower_mult[0]}")
        self.backend, self.mode, self.dim = backend, mode, dim
        self.padding_idx = history_items
        in_dim = dim if history_items is not None else user_dim
        self.history_embedding = nn.Embedding(history_items + 1, dim, padding_idx=history_items) if history_items is not None else None
        self.item_embedding = nn.Embedding(num_items, dim)
        # the four projections, stacked per side as the fused op takes them (StackedProjections:
        # no concatenation per call; the state_dict still has mf_user, mlp_user, mf_item, mlp_item)
        self._stack_projections(in_dim, dim, dim, dim, dim)
        self.tower = _tower([m * dim for m in tower_mult])
        self.predict = nn.Linear(tower_mult[-1] * dim + dim, 1)
        if self.history_embedding is not None:
            _paper_init_embedding(self.history_embedding.weight)
        _paper_init_embedding(self.item_embedding.weight)
        _paper_init_tower(self.tower)
        _paper_init_predict(self.predict)

    def _user_kw(self, user: Tensor, user_mask: Tensor | None) -> dict:
        if self.history_embedding is not None:
            if user_mask is not None:
                raise ValueError("with id histories, mark empty positions with the padding id, not user_mask")
            return {"user_table": self.history_embedding.weight, "padding_idx": self.padding_idx}
        return {"user_mask": user_mask}

    def forward(self, user: Tensor, item: Tensor, user_mask: Tensor | None = None) -> Tensor:
        gmf, mlp_in = neumf_input(user, item, h_mf=self.dim, item_table=self.item_embedding.weight,
                                  user_weight=self.user_weight, user_bias=self.user_bias, item_weight=self.item_weight,
                                  item_bias=self.item_bias, mode=self.mode, backend=self.backend, table_optimizer=self.table_optimizer,
                                  **self._user_kw(user, user_mask))
        return self.predict_logit(gmf, _run_tower(self.tower, mlp_in))

    def _pool(self, user: Tensor, user_mask: Tensor | None) -> Tensor:
        # scoring is inference only; the reference pooling is the op's own definition of it
        from .reference import pool_user
        kw = self._user_kw(user, user_mask)
        return pool_user(user, kw.get("user_mask"), kw.get("user_table"), kw.get("padding_idx"), self.mode)

    def user_parts(self, user, user_mask: Tensor | None = None):
        pooled = self._pool(user, user_mask)
        w = self.tower[0].weight
        mlp_user = self.mlp_user(pooled)
        return self.mf_user(pooled), F.linear(mlp_user, w[:, :self.dim], self.tower[0].bias)

    def item_parts(self, items):
        row = self.item_embedding(items)
        w = self.tower[0].weight
        return self.mf_item(row), F.linear(self.mlp_item(row), w[:, self.dim:])


MODELS = {"gmf": GMF, "mlp": MLP, "neumf": NeuMF, "seq": SequenceNeuMF}
