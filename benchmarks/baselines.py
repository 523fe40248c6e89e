"""What a user writes instead of neumf_fast's first stage: the baselines of the op benchmarks
(CPU and GPU), and the FusedUserItem twin that holds the same weights.

    plain = PlainFirstHalf(dim, hidden)                      # the design's four nn.Linear on user.sum(1)
    plain = PlainFirstHalf(dim, hidden, num_rows=100_000)    # ids: nn.EmbeddingBag + nn.Embedding + the same
    fused = fused_twin(plain, backend="cpu")                 # neumf_fast.FusedUserItem, same weights
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
