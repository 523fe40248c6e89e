"""A trained run from Python: load ``best.pt`` with its split, then score or recommend by the
dataset's original user and item ids.

    import neumf_fast
    run = neumf_fast.load_run("runs/neumf")              # the directory, or a checkpoint in it
    run.recommend(user=42, k=10)                          # [(original item id, score), ...]
    run.score(users=[42, 7], items=[1193, 661])           # [2, 2] scores
    run.recommend_many([42, 7], k=10)                    # a DataFrame: user, rank, item, score
    run.test_metrics()                                    # HR@10/NDCG@10 as `neumf-fast evaluate`

A ``SequenceNeuMF`` run (``--model seq``) also scores users it never saw, from their history of
original item ids (oldest first; the latest ``history_len`` known items are the user):

    run.recommend(history=[1193, 661, 914], k=10)        # history items are left out of the top k
    run.recommend_many(histories={"ann": [1193, 661], "bob": [914]}, k=10)

``unknown_users="popular"`` answers an unknown user id (or a history with no known item) with
the most popular items of the training data instead of raising.

The model's own ids are contiguous indices; ``run.user_index`` / ``run.item_index`` map original
ids to them and ``run.user_ids`` / ``run.item_ids`` map back (the table is in ``split.npz``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .data import NegativeSampler, Split
from .data.histories import Histories, group_of_items, latest
from .data.interactions import lookup
from .scoring import CatalogueScorer, user_blocks

RECOMMENDATION_COLUMNS = ("user", "rank", "item", "score")


class Run:
    """A trained model with the split it was trained on (``Run.load`` builds one)."""

    def __init__(self, model, config, checkpoint: dict, split: Split, device="cpu"):
        self.model, self.config, self.checkpoint, self.split = model, config, checkpoint, split
        self.device = torch.device(device)
        self._seen = None
        self.checkpoint_path: Path | None = None  # where Run.load read the model from
        self._user_input_fn = None  # built once: for SequenceNeuMF it gathers every user's history

    @classmethod
    def load(cls, path: str | os.PathLike, *, backend: str | None = None, device="cpu",
             split: str | os.PathLike | None = None) -> "Run":
        """``path`` is a run directory (its ``best.pt`` is loaded) or a checkpoint file; the split
        is ``split.npz`` beside it unless ``split`` names another."""
        from .checkpoints import load_model

        path = Path(path)
        ckpt_path = path / "best.pt" if path.is_dir() else path
        model, config, ckpt = load_model(ckpt_path, backend=backend, device=device)
        split_path = Path(split) if split is not None else ckpt_path.parent / "split.npz"
        if not split_path.exists():
            raise FileNotFoundError(f"{split_path} not found; pass the run's split.npz")
        loaded = Split.load(split_path)
        if loaded.fingerprint != ckpt["data_fingerprint"]:
            raise ValueError(f"{ckpt_path} was trained on different data than {split_path}")
        model.eval()
        run = cls(model, config, ckpt, loaded, device)
        run.checkpoint_path = ckpt_path
        return run

    # ---- ids ------------------------------------------------------------------------------------

    @property
    def user_ids(self) -> np.ndarray:
        """Original user id of each model user index."""
        return self.split.user_ids

    @property
    def item_ids(self) -> np.ndarray:
        """Original item id of each model item index."""
        return self.split.item_ids

    @staticmethod
    def _as_ids(table: np.ndarray, ids) -> np.ndarray:
        """``ids`` as an array, as integers where the table's ids are and they convert (so errors
        name 1193, not '1193', for ids read from a file; text is never cast to the table's width,
        which would cut it); ``lookup`` is the one lookup of original ids."""
        wanted = np.atleast_1d(np.asarray(ids))
        if table.dtype.kind not in "iu":
            return wanted
        try:
            return wanted.astype(table.dtype)
        except (ValueError, OverflowError):
            return wanted

    def _index(self, table: np.ndarray, ids, what: str) -> torch.Tensor:
        wanted = self._as_ids(table, ids)
        pos, unknown = lookup(table, wanted)
        if unknown.any():
            raise KeyError(f"unknown {what} id {wanted[unknown][0].item()!r}")
        return torch.from_numpy(pos)

    def find_users(self, ids, *, skip_unknown: bool = False) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """(model indices, the original ids found, the ids not in the data) of many user ids.
        Unknown ids raise a ``KeyError`` naming them, unless ``skip_unknown``."""
        wanted = self._as_ids(self.split.user_ids, ids)
        if wanted.size == 0:
            raise ValueError("no user ids given")
        pos, unknown = lookup(self.split.user_ids, wanted)
        if unknown.any() and not skip_unknown:
            bad = wanted[unknown]
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise KeyError(f"{len(bad)} unknown user ids: {', '.join(repr(v.item()) for v in bad[:5])}{more}")
        return torch.from_numpy(pos[~unknown]), self.split.user_ids[pos[~unknown]], wanted[unknown]

    def user_index(self, ids) -> torch.Tensor:
        """Model indices ``[N]`` of original user ids (one id or a sequence); ``KeyError`` for unknown ids."""
        return self._index(self.split.user_ids, ids, "user")

    def item_index(self, ids) -> torch.Tensor:
        return self._index(self.split.item_ids, ids, "item")

    # ---- scoring --------------------------------------------------------------------------------

    def _user_input(self, users: torch.Tensor) -> torch.Tensor:
        if self._user_input_fn is None:
            from .evaluate import UserInput

            self._user_input_fn = UserInput(self.split, self.model, self.config.history_len, self.device)
        return self._user_input_fn(users.to(self.device))

    @torch.no_grad()
    def score(self, users, items) -> torch.Tensor:
        """Scores (logits) ``[len(users), len(items)]`` of original user ids against original item ids."""
        u, i = self.user_index(users), self.item_index(items)
        return self.model.score(self._user_input(u), i.to(self.device)).cpu()

    def seen(self, users) -> torch.Tensor:
        """Bool ``[len(users), num_items]``: the items each user interacted with in the data."""
        return self._seen_items().positive_mask(self.user_index(users))

    def _seen_items(self) -> NegativeSampler:
        """The data's positives by user, built once (a sampler's ``positive_mask``)."""
        if self._seen is None:
            self._seen = NegativeSampler(*self.split.all_positives(), self.split.num_items, self.split.num_users)
        return self._seen

    @torch.no_grad()
    def recommend(self, user=None, k: int = 10, *, history=None, exclude_seen: bool = True,
                  skip_unknown: bool = False, unknown_users: str = "error") -> list[tuple[object, float]]:
        """The top ``k`` items for one original user id, or for one ``history`` of original item
        ids (a ``SequenceNeuMF`` run), as ``(original item id, score)``, best first.  The items
        the user interacted with (the history's items) are left out unless ``exclude_seen=False``;
        ``skip_unknown`` and ``unknown_users`` as for ``iter_recommendations``."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if (user is None) == (history is None):
            raise ValueError("give one of user (an original user id) or history (original item ids)")
        if history is not None or unknown_users == "popular":
            frame = self.recommend_many([user] if history is None else None, k, exclude_seen=exclude_seen,
                                        histories=None if history is None else [history], skip_unknown=skip_unknown,
                                        unknown_users=unknown_users)
            return list(zip(frame.item.tolist(), frame.score.tolist()))
        u = self.user_index(user)
        scores = self.model.score(self._user_input(u), torch.arange(self.split.num_items, device=self.device))[0].cpu()
        if exclude_seen:
            scores = scores.masked_fill(self.seen(user)[0], float("-inf"))
        available = int(torch.isfinite(scores).sum()) if exclude_seen else len(scores)
        top = scores.topk(min(k, available))
        return [(self.split.item_ids[i].item(), s) for i, s in zip(top.indices.tolist(), top.values.tolist())]

    def popular(self, k: int = 10) -> list[tuple[object, float]]:
        """The ``k`` items with the most training interactions, as ``(original item id, count)``:
        what ``unknown_users="popular"`` answers (a user nothing is known of has seen nothing)."""
        from .evaluate import popularity_scores

        top = popularity_scores(self.split).topk(min(k, self.split.num_items))
        return [(self.split.item_ids[i].item(), s) for i, s in zip(top.indices.tolist(), top.values.tolist())]

    def _popular_frame(self, users, k: int):
        import pandas as pd

        top = self.popular(k)
        n = len(users)
        return pd.DataFrame({"user": np.repeat(np.asarray(users), len(top)), "rank": np.tile(np.arange(1, len(top) + 1), n),
                             "item": np.tile(np.array([i for i, _ in top]), n),
                             "score": np.tile(np.array([s for _, s in top], np.float32), n)})

    def scorer(self, precision: str = "fp32", **blocks) -> CatalogueScorer:
        """The whole-catalogue scorer of this run's model (``neumf_fast.scoring``)."""
        return CatalogueScorer(self.model, torch.arange(self.split.num_items, device=self.device),
                               precision=precision, **blocks)

    @torch.no_grad()
    def iter_recommendations(self, users=None, k: int = 10, *, histories=None, exclude_seen: bool = True,
                             precision: str = "fp32", skip_unknown: bool = False, unknown_users: str = "error",
                             user_block: int | None = None, progress: bool = False, counts: dict | None = None):
        """Yields the top ``k`` of users block by block, as DataFrames of ``RECOMMENDATION_COLUMNS``
        (original ids, rank from 1, logit), so memory is bounded by the block, not by users × items.

        ``users``: original ids, or ``None`` for every user; ``skip_unknown`` leaves out ids not in
        the data (``find_users`` says which) instead of raising.  Or ``histories`` (a
        ``SequenceNeuMF`` run): ``{user: [original item ids]}``, a list of such lists, or a
        ``data.histories.Histories``; ``skip_unknown`` then skips unknown item ids.
        ``unknown_users="popular"``: an unknown user id, or a history with no known item, gets
        ``popular(k)`` (its score: the training count) instead of an error.  ``counts``, a dict,
        receives how many users got that fallback and how many item ids were skipped."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if unknown_users not in ("error", "popular"):
            raise ValueError(f"unknown_users must be 'error' or 'popular', got {unknown_users!r}")
        counts = {} if counts is None else counts
        counts.update(popular=0, unknown_items=0)
        if histories is not None:
            yield from self._iter_histories(Histories.of(histories), k, exclude_seen, precision, skip_unknown,
                                            unknown_users == "popular", user_block, counts)
            return
        if users is None:
            index, ids, unknown = torch.arange(self.split.num_users), self.split.user_ids, []
        else:
            index, ids, unknown = self.find_users(users, skip_unknown=skip_unknown or unknown_users == "popular")
        scorer = self.scorer(precision, user_block=user_block)
        seen_items = self._seen_items() if exclude_seen else None
        blocks = range(0, len(index), scorer.user_block)
        if progress:
            from tqdm import tqdm

            blocks = tqdm(blocks, desc="recommend", unit="block", total=len(blocks))
        for start in blocks:
            u = index[start:start + scorer.user_block]
            seen = seen_items.positive_mask(u).to(self.device) if exclude_seen else None
            values, items = scorer.top_k(self._user_input(u), k, (lambda sl: seen[:, sl]) if exclude_seen else None)
            yield self._frame(ids[start:start + len(u)], values, items)
        if unknown_users == "popular" and len(unknown):
            counts["popular"] = len(unknown)
            yield self._popular_frame(unknown, k)

    def _frame(self, ids: np.ndarray, values: torch.Tensor, items: torch.Tensor):
        """A block's top-K as rows of ``RECOMMENDATION_COLUMNS`` (``-inf`` entries dropped: a user
        with fewer than k candidates left)."""
        import pandas as pd

        values, items = values.float().cpu().numpy(), items.cpu().numpy()
        keep = np.isfinite(values)
        rows = np.broadcast_to(np.arange(len(ids))[:, None], values.shape)[keep]
        return pd.DataFrame({"user": ids[rows], "rank": np.nonzero(keep)[1] + 1,
                             "item": self.split.item_ids[items[keep]], "score": values[keep]})

    def check_takes_histories(self) -> None:
        """A ``ValueError`` unless the model's user is a history of item ids."""
        from .models import SequenceNeuMF

        if not isinstance(self.model, SequenceNeuMF) or self.model.history_embedding is None:
            raise ValueError(f"this run's model ({self.config.model}, {type(self.model).__name__}) takes user ids, "
                             "not histories: only a SequenceNeuMF run (train --model seq) scores a history; for users "
                             "outside the run, use --unknown-users popular (unknown_users='popular')")

    def _iter_histories(self, hist: Histories, k: int, exclude_seen: bool, precision: str, skip_unknown: bool,
                        popular: bool, user_block: int | None, counts: dict):
        import pandas as pd

        self.check_takes_histories()
        pos, unknown = lookup(self.split.item_ids, hist.items)
        if unknown.any() and not skip_unknown:
            j = np.flatnonzero(unknown)
            raise KeyError(f"unknown item id {hist.items[j[0]].item()!r} in {hist.where(j[0])}"
                           + (f" ({len(j)} unknown item ids in all)" if len(j) > 1 else ""))
        group, pos = group_of_items(hist.offsets)[~unknown], pos[~unknown]
        known = np.bincount(group, minlength=len(hist))
        empty = known == 0
        if empty.any() and not popular:
            raise KeyError(f"{hist.source}: {int(empty.sum())} users have no item this run knows in their history, "
                           f"the first {hist.users[empty][0].item()!r} (unknown_users='popular' answers them)")
        counts.update(popular=int(empty.sum()), unknown_items=int(unknown.sum()))
        offsets = np.concatenate([[0], np.cumsum(known)])
        length, pad = self.config.history_len, self.split.num_items
        scorer = self.scorer(precision, user_block=user_block)
        for sl in user_blocks(len(hist), scorer.user_block):
            rows = slice(offsets[sl.start], offsets[sl.stop])
            g, items = group[rows] - sl.start, pos[rows]
            user = torch.from_numpy(latest(g, items, sl.stop - sl.start, length, pad)).to(self.device)
            seen = torch.zeros(len(user), self.split.num_items, dtype=torch.bool, device=self.device)
            seen[torch.from_numpy(g).to(self.device), torch.from_numpy(items).to(self.device)] = exclude_seen
            values, top = scorer.top_k(user, k, lambda part: seen[:, part])
            frame = self._frame(hist.users[sl], values, top)
            fallback = hist.users[sl][empty[sl]]
            if len(fallback):  # in file order: the popular rows take the empty users' places
                frame = pd.concat([frame[~frame.user.isin(fallback)], self._popular_frame(fallback, k)])
                order = {u: n for n, u in enumerate(hist.users[sl].tolist())}
                frame = frame.sort_values(["user", "rank"], key=lambda c: c.map(order) if c.name == "user" else c,
                                          kind="stable", ignore_index=True)
            yield frame

    def recommend_many(self, users=None, k: int = 10, **kw):
        """The top ``k`` of many users (original ids; ``None``: all), or of ``histories=``, as one
        DataFrame with columns ``user, rank, item, score``; the keywords are ``iter_recommendations``'s."""
        import pandas as pd

        frames = list(self.iter_recommendations(users, k, **kw))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RECOMMENDATION_COLUMNS))

    def test_metrics(self) -> dict:
        """Test HR/NDCG/MRR@K and AUC over the fixed candidates and over the full ranking."""
        from .train import test_metrics

        return test_metrics(self.model, self.split, self.config, self.device)

    def new_user_metrics(self) -> dict | None:
        """The held-out new users' metrics beside popularity's (``evaluate.new_user_metrics``):
        ``None`` when the run holds no users out (``train --model seq --new-users 0.1`` does)."""
        from .evaluate import new_user_metrics

        self.check_takes_histories()
        return new_user_metrics(self.model, self.split, k=self.config.k, history_len=self.config.history_len,
                                device=self.device)


def load_run(path: str | os.PathLike, *, backend: str | None = None, device="cpu",
             split: str | os.PathLike | None = None) -> Run:
    """Loads a training run (its directory or a checkpoint); see ``Run``."""
    return Run.load(path, backend=backend, device=device, split=split)
