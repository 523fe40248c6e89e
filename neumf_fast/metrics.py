"""Ranking metrics for leave-one-out evaluation: HR@K, NDCG@K, MRR@K and AUC.

Everything starts from the 0-based rank of the held-out item among the candidates.  Ties never
flatter the model: the held-out item is ranked below every candidate with an equal score (so a
model that scores everything equally gets rank C-1, not 0), and a NaN score for the held-out
item counts as the worst rank.  NaN scores of other candidates are treated as +inf.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def target_rank(scores: Tensor, target: Tensor | int = 0, exclude: Tensor | None = None) -> Tensor:
    """0-based rank of the target column in each row of ``scores [U, C]``.

    Args:
        scores: candidate scores, higher is better.
        target: column of the held-out item, an int or ``[U]``.
        exclude: optional bool ``[U, C]``; True columns are ignored (e.g. training items in full
            ranking).  The target column itself is never excluded.

    Returns:
        int64 ``[U]``: the number of other (non-excluded) candidates scoring ``>=`` the target.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [U, C], got {list(scores.shape)}")
    num_users = scores.shape[0]
    target = torch.as_tensor(target, device=scores.device).expand(num_users).long()
    rows = torch.arange(num_users, device=scores.device)
    target_score = scores[rows, target]
    others = torch.nan_to_num(scores, nan=math.inf)
    beats = others >= target_score[:, None]
    beats[rows, target] = False
    if exclude is not None:
        beats &= ~exclude
    rank = beats.sum(dim=1)
    worst = scores.shape[1] - 1 - (0 if exclude is None else exclude.sum(dim=1) - exclude[rows, target].long())
    return torch.where(torch.isnan(target_score), worst, rank)


def hit_ratio(rank: Tensor, k: int = 10) -> float:
    """Share of users whose held-out item is in the top k."""
    return float((rank < k).double().mean()) if rank.numel() else math.nan


def ndcg(rank: Tensor, k: int = 10) -> float:
    """Mean NDCG@k with one relevant item: ``1 / log2(rank + 2)`` inside the top k, else 0."""
    if not rank.numel():
        return math.nan
    gain = 1.0 / torch.log2(rank.double() + 2.0)
    return float(torch.where(rank < k, gain, torch.zeros_like(gain)).mean())


def mrr(rank: Tensor, k: int = 10) -> float:
    """Mean reciprocal rank, cut at k."""
    if not rank.numel():
        return math.nan
    rr = 1.0 / (rank.double() + 1.0)
    return float(torch.where(rank < k, rr, torch.zeros_like(rr)).mean())


def auc(rank: Tensor, num_candidates: int | Tensor) -> float:
    """Mean AUC of the held-out item against its negatives: the share it scores strictly above
    (ties count as losses).  ``num_candidates`` counts the held-out item itself."""
    if not rank.numel():
        return math.nan
    negatives = torch.as_tensor(num_candidates, device=rank.device).double() - 1.0
    return float((1.0 - rank.double() / negatives.clamp_min(1.0)).mean())


def summarize(rank: Tensor, num_candidates: int | Tensor, k: int = 10) -> dict[str, float]:
    return {f"hr@{k}": hit_ratio(rank, k), f"ndcg@{k}": ndcg(rank, k), f"mrr@{k}": mrr(rank, k),
            "auc": auc(rank, num_candidates), "users": int(rank.numel())}
