"""Ranking metrics: hand-computed values, ties that never flatter, NaN, exclusions."""

from __future__ import annotations

import math

import pytest
import torch

from neumf_fast import metrics


def test_rank_hr_ndcg_mrr_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.95],   # target col 0: one above -> rank 1
                           [0.2, 0.3, 0.4, 0.5],    # all above -> rank 3
                           [1.0, 0.0, 0.0, 0.0]])   # rank 0
    rank = metrics.target_rank(scores, 0)
    assert rank.tolist() == [1, 3, 0]
    assert metrics.hit_ratio(rank, 2) == pytest.approx(2 / 3)
    assert metrics.ndcg(rank, 2) == pytest.approx((1 / math.log2(3) + 1.0) / 3)
    assert metrics.mrr(rank, 2) == pytest.approx((0.5 + 1.0) / 3)
    assert metrics.auc(rank, 4) == pytest.approx(((1 - 1 / 3) + 0 + 1) / 3)


def test_ties_never_flatter_the_model():
    scores = torch.zeros(2, 100)
    rank = metrics.target_rank(scores, 0)
    assert rank.tolist() == [99, 99]
    assert metrics.hit_ratio(rank, 10) == 0.0 and metrics.auc(rank, 100) == 0.0
    scores = torch.tensor([[1.0, 1.0, 0.0]])
    assert metrics.target_rank(scores, 0).tolist() == [1]


def test_nan_target_is_the_worst_rank_and_nan_others_beat_it():
    scores = torch.tensor([[float("nan"), 0.0, 1.0], [0.5, float("nan"), 0.0]])
    assert metrics.target_rank(scores, 0).tolist() == [2, 1]


def test_target_column_and_exclusion():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    exclude = torch.tensor([[True, True, False, False]])
    assert metrics.target_rank(scores, torch.tensor([2]), exclude).tolist() == [0]
    assert metrics.target_rank(scores, torch.tensor([3]), exclude).tolist() == [1]
    # the target is never excluded, even if the mask says so; NaN target: worst among the rest
    nan = torch.tensor([[float("nan"), 4.0, 3.0, 2.0]])
    assert metrics.target_rank(nan, 0, exclude).tolist() == [2]


def test_summary_and_empty():
    assert math.isnan(metrics.hit_ratio(torch.zeros(0, dtype=torch.long)))
    s = metrics.summarize(torch.tensor([0, 20]), 100, 10)
    assert s == {"hr@10": 0.5, "ndcg@10": 0.5, "mrr@10": 0.5, "auc": pytest.approx((1 + (1 - 20 / 99)) / 2), "users": 2}
    with pytest.raises(ValueError, match=r"scores must be \[U, C\]"):
        metrics.target_rank(torch.zeros(3), 0)
