"""Scoring and evaluation of a trained model under the paper's protocols.

- ``evaluate_candidates``: HR/NDCG/MRR@K and AUC of the held-out item among its fixed
  candidates (the held-out item and 99 sampled negatives in the paper).
- ``evaluate_full``: the same metrics over a ranking of every item, with the user's training
  items (and the other held-out item) excluded, scored by ``scoring.CatalogueScorer``.
- ``popularity_scores``: the popularity baseline, scored through the same code.

The model side is any ``neumf_fast.models`` module: ``model.score(user, items)`` computes the
user side once per user.  ``UserInput`` turns user ids into what the model takes as a user (the
ids themselves, or the user's history of training items for ``SequenceNeuMF``).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor

from . import metrics
from .data import NegativeSampler, Split
from .data.histories import latest
from .models import SequenceNeuMF
from .scoring import CatalogueScorer


class UserInput:
    """Maps user ids to a model's user input: ids, or the last ``history_len`` training items of
    each user (by time, padded with the padding id ``num_items``) for ``SequenceNeuMF``."""

    def __init__(self, split: Split, model, history_len: int = 20, device="cpu", *, new_users: bool = False):
        self.history = None
        if isinstance(model, SequenceNeuMF):  # new_users: the held-out users' histories instead
            self.history = training_history(split, history_len, new_users).to(device)
            self.pad = split.num_items

    def __call__(self, users: Tensor, items: Tensor | None = None) -> Tensor:
        if self.history is None:
            return users
        hist = self.history[users]
        if items is not None:  # a training positive must not see itself in its own history
            hist = hist.masked_fill(hist == items[:, None], self.pad)
        return hist


def training_history(split: Split, history_len: int, new_users: bool = False) -> Tensor:
    """``[num_users, history_len]`` int64: each user's latest training items (``new_users``: the
    held-out users' history items), oldest first, left-padded with ``num_items``."""
    user, item, time = ((split.new_history_user, split.new_history_item, split.new_history_time) if new_users else
                        (split.train_user, split.train_item, split.train_time))
    order = np.lexsort((time, user))
    return torch.from_numpy(latest(user[order], item[order], split.num_users, history_len, split.num_items))


def popularity_scores(split: Split) -> Tensor:
    """Training-set interaction count of every item: the popularity baseline's scores."""
    return torch.from_numpy(np.bincount(split.train_item, minlength=split.num_items).astype(np.float32))


@contextlib.contextmanager
def _eval_mode(model):
    """Model in eval mode for the block, restored after (no-op for the popularity baseline)."""
    was_training = model is not None and model.training
    if model is not None:
        model.eval()
    try:
        yield
    finally:
        if model is not None:
            model.train(was_training)


def _scores(model, user_input, users: Tensor, items: Tensor) -> Tensor:
    return model.score(user_input(users) if user_input else users, items)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def evaluate_candidates(model, split: Split, which: str = "valid", *, k: int = 10, user_input: UserInput | None = None,
                        batch_users: int = 2048, device="cpu", popularity: Tensor | None = None) -> dict:
    """Metrics of the held-out item among its fixed candidates (column 0 is the held-out item).
    With ``popularity`` given instead of a model, ranks by those per-item scores.  Candidates
    ``-1`` (a small catalogue's padding, see ``leave_one_out``) are not candidates."""
    users, cands = split.candidates(which)
    users, cands = torch.from_numpy(users), torch.from_numpy(cands)
    padded = bool((cands < 0).any())
    ranks = []
    with _eval_mode(model):
        for sl in _chunks(len(users), batch_users):
            c = cands[sl].to(device)
            pad = c < 0 if padded else None
            c = c.clamp_min(0) if padded else c
            scores = popularity.to(device)[c] if popularity is not None else _scores(model, user_input, users[sl].to(device), c)
            ranks.append(metrics.target_rank(scores.float(), 0, pad).cpu())
    rank = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    return metrics.summarize(rank, (cands >= 0).sum(1) if padded else cands.shape[1], k)


@torch.no_grad()
def evaluate_full(model, split: Split, which: str = "test", *, k: int = 10, user_input: UserInput | None = None,
                  batch_users: int = 256, device="cpu", popularity: Tensor | None = None) -> dict:
    """Metrics of the held-out item ranked against every item, excluding the user's training
    items and the other held-out item (validation when testing, and vice versa).  ``"new"``: the
    held-out new users' test items, excluding their history items."""
    held = split.valid if which == "valid" else split.test
    other = split.test if which == "valid" else split.valid if which == "test" else np.full_like(split.test, -1)
    users = torch.from_numpy(split.eval_users(which))
    known = (split.new_history_user, split.new_history_item) if which == "new" else (split.train_user, split.train_item)
    train = NegativeSampler(*known, split.num_items, split.num_users, device=device)
    all_items = torch.arange(split.num_items, device=device)
    held_t, other_t = torch.from_numpy(held).to(device), torch.from_numpy(other).to(device)
    ranks, counts = [], []
    with _eval_mode(model):
        scorer = CatalogueScorer(model, all_items) if popularity is None else None
        for sl in _chunks(len(users), batch_users):
            u = users[sl].to(device)
            if popularity is not None:
                scores = popularity.to(device)[None, :].expand(len(u), -1)
            else:
                scores = scorer.scores(user_input(u) if user_input else u)
            exclude = train.positive_mask(u)
            o = other_t[u]
            has_other = o >= 0
            exclude[has_other.nonzero(as_tuple=True)[0], o[has_other]] = True
            target = held_t[u]
            exclude[torch.arange(len(u), device=device), target] = False
            ranks.append(metrics.target_rank(scores.float(), target, exclude).cpu())
            counts.append((split.num_items - exclude.sum(1)).cpu())
    rank = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    count = torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)
    return metrics.summarize(rank, count, k)


def new_user_metrics(model, split: Split, *, k: int = 10, history_len: int = 20, device="cpu") -> dict | None:
    """The held-out new users' test metrics (``Split`` with ``new_users``), among the candidates
    and in the full ranking, for a ``SequenceNeuMF`` scored from their history and for the
    popularity baseline; ``None`` when the split holds no new users."""
    if not len(split.new_users):
        return None
    ui = UserInput(split, model, history_len, device, new_users=True)
    pop = popularity_scores(split)
    both = lambda **kw: {"candidates": evaluate_candidates(split=split, which="new", k=k, device=device, **kw),
                         "full": evaluate_full(split=split, which="new", k=k, device=device, **kw)}
    return {"users": len(split.new_users), "model": both(model=model, user_input=ui),
            "popularity": both(model=None, popularity=pop)}
