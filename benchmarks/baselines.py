"""What a user writes instead of neumf_fast's first stage: the baselines of the op benchmarks
(CPU and GPU), and the FusedUserItem twin that holds the same weights.

    plain = PlainFirstHalf(dim, hidden)                      # the design's four nn.Linear on user.sum(1)
    plain = PlainFirstHalf(dim, hidden, num_rows=100_000)    # ids: nn.EmbeddingBag + nn.Embedding + the same
    fused = fused_twin(plain, backend="cpu")                 # neumf_fast.FusedUserItem, same weights
    plain = PlainNeuMFInput(138_493, 26_744, 64, 128)        # NeuMF's first stage: two nn.Embedding, sliced
    fused = neumf_input_twin(plain, backend="cuda")          # the same tables through neumf_input
    model = RecoClsNMF(128)                                  # the seed's whole model: first half, tower, predict
    fused = reco_twin(model, backend="cpu")                  # the same, its four nn.Linear a FusedUserItem
"""

from __future__ import annotations

import torch
from torch import nn

import neumf_fast


class PlainFirstHalf(nn.Module):
    """The design's module as a user writes it: sum-pool the user (under an optional mask), four
    nn.Linear, the GMF product and the MLP input.  With ``num_rows``, the user is a sequence of
    ids pooled by nn.EmbeddingBag (sum, padding id 0) and the item an nn.Embedding row."""

    def __init__(self, dim: int, hidden: int, num_rows: int | None = None):
        super().__init__()
        self.dim, self.hidden, self.num_rows = dim, hidden, num_rows
        self.mf_user, self.mlp_user = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.mf_item, self.mlp_item = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.user_embedding = nn.EmbeddingBag(num_rows, dim, mode="sum", padding_idx=0) if num_rows else None
        self.item_embedding = nn.Embedding(num_rows, dim) if num_rows else None

    def forward(self, user, item, user_mask=None):
        if self.user_embedding is not None:
            user, item = self.user_embedding(user), self.item_embedding(item)
        elif user_mask is not None:
            user = (user * user_mask.unsqueeze(-1).to(user.dtype)).sum(dim=1)
        else:
            user = user.sum(dim=1)
        gmf = self.mf_user(user) * self.mf_item(item)
        return gmf, torch.cat([self.mlp_user(user), self.mlp_item(item)], dim=-1)


def fused_twin(plain: PlainFirstHalf, backend: str) -> neumf_fast.FusedUserItem:
    """neumf_fast's module with ``plain``'s weights, dtype and device."""
    p = next(plain.parameters())
    ids = plain.num_rows is not None
    fused = neumf_fast.FusedUserItem(plain.dim, plain.dim, plain.hidden, plain.hidden,
                                     num_user_ids=plain.num_rows if ids else None,
                                     num_item_ids=plain.num_rows if ids else None, padding_idx=0 if ids else None,
                                     backend=backend, device=p.device, dtype=p.dtype)
    fused.load_state_dict(plain.state_dict())
    return fused


class RecoClsNMF(nn.Module):
    """The seed's whole model as a user writes it: the design's first half (``PlainFirstHalf``:
    sum-pool the user sequence, four nn.Linear, the GMF product, the MLP input), then the tower
    of ``neumf_fast.models.SequenceNeuMF``'s default widths (``tower_mult`` x ``dim``, ReLU after
    each layer) and the predict layer on ``[tower_out, gmf]``; forward returns the ``[B]`` logits."""

    def __init__(self, dim: int, tower_mult: tuple[int, ...] = (2, 8, 4, 2, 1)):
        super().__init__()
        self.dim, self.tower_mult = dim, tower_mult
        self.first_half = PlainFirstHalf(dim, dim)
        widths = [m * dim for m in tower_mult]
        self.tower = nn.Sequential(*(layer for a, b in zip(widths[:-1], widths[1:]) for layer in (nn.Linear(a, b), nn.ReLU())))
        self.predict = nn.Linear(widths[-1] + dim, 1)

    def forward(self, user, item, user_mask=None):
        gmf, mlp_in = self.first_half(user, item, user_mask)
        return self.predict(torch.cat([self.tower(mlp_in), gmf], dim=-1)).squeeze(-1)


def reco_twin(plain: RecoClsNMF, backend: str) -> RecoClsNMF:
    """``plain`` with its four nn.Linear swapped for ``neumf_fast.FusedUserItem`` (``fused_twin``);
    the tower and predict layer are copies of ``plain``'s (same weights)."""
    twin = RecoClsNMF(plain.dim, plain.tower_mult).to(next(plain.parameters()))
    twin.load_state_dict(plain.state_dict())
    twin.first_half = fused_twin(plain.first_half, backend)
    return twin


class PlainNeuMFInput(nn.Module):
    """NeuMF's first stage as a user writes it (the paper's model; ML-20M's training shape in the
    GPU benchmark): one ``nn.Embedding`` per side whose first ``factors`` columns are the GMF
    embedding and the rest the MLP's, the GMF product and the MLP input.  No projection: this is
    the op's call in ``neumf_fast.NeuMF`` (``user`` is ``[B, 1]`` ids, as there)."""

    def __init__(self, num_users: int, num_items: int, factors: int, mlp_half: int):
        super().__init__()
        self.factors = factors
        self.user_embedding = nn.Embedding(num_users, factors + mlp_half)
        self.item_embedding = nn.Embedding(num_items, factors + mlp_half)

    def forward(self, user, item, user_mask=None):
        u, i, f = self.user_embedding(user[:, 0]), self.item_embedding(item), self.factors
        return u[:, :f] * i[:, :f], torch.cat([u[:, f:], i[:, f:]], dim=-1)


class _NeuMFInputTwin(nn.Module):
    def __init__(self, plain: PlainNeuMFInput, backend: str):
        super().__init__()
        self.factors, self.backend = plain.factors, backend
        self.user_embedding, self.item_embedding = plain.user_embedding, plain.item_embedding

    def forward(self, user, item, user_mask=None):
        return neumf_fast.neumf_input(user, item, h_mf=self.factors, user_table=self.user_embedding.weight,
                                      item_table=self.item_embedding.weight, backend=self.backend)


def neumf_input_twin(plain: PlainNeuMFInput, backend: str) -> nn.Module:
    """``neumf_input`` on ``plain``'s own tables (shared, not copied: they are the big tensors)."""
    return _NeuMFInputTwin(plain, backend)
