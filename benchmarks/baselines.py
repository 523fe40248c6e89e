"""What a user writes instead of neumf_fast's first stage: the baselines of the op benchmarks
(CPU and GPU), and the FusedUserItem twin that holds the same weights.

    plain = PlainFirstHalf(dim, hidden)                      # the design's four nn.Linear on user.sum(1)
    plain = PlainFirstHalf(dim, hidden, num_rows=100_000)    # ids: nn.EmbeddingBag + nn.Embedding + the same
    fused = fused_twin(plain, backend="cpu")                 # neumf_fast.FusedUserItem, same weights
    plain = PlainNeuMFInput(138_493, 26_744, 64, 128)        # NeuMF's first stage: two nn.Embedding, sliced
    fused = neumf_input_twin(plain, backend="cuda")          # the same tables through neumf_input
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
