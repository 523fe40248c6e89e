"""Train/validation/test splits: the paper's leave-one-out by timestamp, and random ratio splits.

Leave-one-out (He et al. 2017, §4.1): for each user the latest interaction is the test item and
the one before it the validation item; the rest is training data.  Ties in time are broken by
the order of the rows in the source.  Users with few interactions are handled deliberately:

- 3 or more: train, validation and test items;
- exactly 2: the earlier one trains, the later one is the test item; no validation item
  (``valid == -1``), so the user is left out of validation metrics;
- exactly 1: the interaction trains; the user has no held-out items and is left out of
  evaluation (``valid == test == -1``).

Each evaluated user also gets fixed evaluation candidates: the held-out item in column 0 and
``num_negatives`` (99 in the paper) distinct items the user never interacted with, drawn from a
seed.  They are saved with the split (``Split.save``) so that runs are comparable.

Small catalogues: a user who has interacted with all but fewer than ``num_negatives`` items gets
every item they have not interacted with as their negatives, and the rest of the row is ``-1``
(padding, never scored).  Their metrics are then over fewer candidates, as in the sampled
protocol's usual fallback; ``leave_one_out`` warns, counting those users.

New users (``new_users=0.1``): a share of the users with two or more interactions, drawn from
``seed``, is held out of training entirely.  Their latest interaction is their test item, with
candidates drawn as everyone's; their earlier interactions are kept apart (``new_history_*``)
as the history a model that takes one (``SequenceNeuMF``) scores them from.  They have no
training or validation item, and the leave-one-out test leaves them out.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .interactions import DataError, IdSpace, Interactions
from .sampling import NegativeSampler, distinct_negatives

NONE = -1


@dataclasses.dataclass
class Split(IdSpace):
    """A leave-one-out split.  ``valid``/``test`` are ``[num_users]`` item ids (``-1``: none);
    ``valid_candidates``/``test_candidates`` are ``[num_users, 1 + num_negatives]`` with the
    held-out item in column 0 (rows of users without that item are all ``-1``)."""

    train_user: np.ndarray
    train_item: np.ndarray
    train_time: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    valid_candidates: np.ndarray
    test_candidates: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    fingerprint: str
    name: str = "split"
    # held-out new users (none by default; a split file without these fields has none)
    new_users: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    new_history_user: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    new_history_item: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    new_history_time: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    def eval_users(self, which: str) -> np.ndarray:
        """The users evaluated on ``"valid"``, ``"test"`` (leave-one-out) or ``"new"`` (held out)."""
        if which == "new":
            return self.new_users
        held = self.valid if which == "valid" else self.test
        users = np.flatnonzero(held >= 0)
        return np.setdiff1d(users, self.new_users, assume_unique=True) if len(self.new_users) else users

    def candidates(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(users, candidates ``[U, C]``) of the evaluated users for ``"valid"``, ``"test"`` or
        ``"new"`` (a new user's test item is in ``test`` and its candidates in ``test_candidates``)."""
        if which not in ("valid", "test", "new"):
            raise ValueError(f"which must be 'valid', 'test' or 'new', got {which!r}")
        users = self.eval_users(which)
        table = self.valid_candidates if which == "valid" else self.test_candidates
        return users, table[users]

    def all_positives(self) -> tuple[np.ndarray, np.ndarray]:
        """Every known (user, item) pair: training, validation, test and new users' histories."""
        users = np.arange(self.num_users)
        extra_u = np.concatenate([users[self.valid >= 0], users[self.test >= 0], self.new_history_user])
        extra_i = np.concatenate([self.valid[self.valid >= 0], self.test[self.test >= 0], self.new_history_item])
        return np.concatenate([self.train_user, extra_u]), np.concatenate([self.train_item, extra_i])

    def save(self, path: str | os.PathLike) -> None:
        """Writes the split atomically (temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **{k: v for k, v in dataclasses.asdict(self).items() if isinstance(v, np.ndarray)},
                     fingerprint=np.array(self.fingerprint), name=np.array(self.name))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Split":
        try:
            with np.load(path, allow_pickle=False) as z:
                fields = {f.name: z[f.name] for f in dataclasses.fields(cls)
                          if f.name in z.files or f.default_factory is dataclasses.MISSING}
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{path}: not a readable split file ({e})") from None
        fields["fingerprint"], fields["name"] = str(fields["fingerprint"]), str(fields["name"])
        return cls(**fields)


def leave_one_out(data: Interactions, *, num_negatives: int = 99, seed: int = 0, device="cpu",
                  new_users: float = 0.0) -> Split:
    """The paper's protocol: latest interaction per user for test, the one before for validation.
    ``device`` is where the candidates are drawn (the same draw on any device would need the
    same generator, so the candidates of a GPU-built split differ from a CPU-built one).
    ``new_users``: the share of users held out of training entirely (module docstring)."""
    if len(data) == 0:
        raise DataError(f"{data.name}: cannot split an empty dataset")
    order = np.lexsort((np.arange(len(data)), data.timestamp, data.user))  # by user, time, row
    user, item = data.user[order], data.item[order]
    counts = np.bincount(user, minlength=data.num_users)
    ends = np.cumsum(counts)
    rank_from_end = np.repeat(ends, counts) - np.arange(len(user)) - 1  # 0 = latest
    user_count = counts[user]
    is_test = (rank_from_end == 0) & (user_count >= 2)
    newcomers = held_out_users(counts, new_users, seed)
    is_new = np.isin(user, newcomers) & ~is_test  # a new user's history: kept apart, never trained on
    is_valid = (rank_from_end == 1) & (user_count >= 3) & ~np.isin(user, newcomers)
    train = ~(is_test | is_valid | is_new)
    valid = np.full(data.num_users, NONE, np.int64)
    test = np.full(data.num_users, NONE, np.int64)
    valid[user[is_valid]] = item[is_valid]
    test[user[is_test]] = item[is_test]

    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    sampler = NegativeSampler(data.user, data.item, data.num_items, data.num_users, device=device)
    width = 1 + num_negatives
    evaluated = np.flatnonzero(test >= 0)
    free = data.num_items - sampler.positives_per_user[torch.from_numpy(evaluated).to(sampler.device)].cpu().numpy()
    short = int((free < num_negatives).sum())
    if short:
        warnings.warn(f"{data.name}: {short} of {len(evaluated)} evaluated users have fewer than {num_negatives} items "
                      f"they never interacted with (as few as {int(free.min())}); their candidates are all of those "
                      "items, so their metrics rank among fewer candidates (--eval-negatives sets the number)",
                      UserWarning, stacklevel=2)
    cands = []
    for k, held in enumerate((valid, test)):
        table = np.full((data.num_users, width), NONE, np.int64)
        users = np.flatnonzero(held >= 0)
        if len(users):
            negs = distinct_negatives(sampler, torch.from_numpy(users), num_negatives, seed=seed * 2 + k,
                                      pad=True).cpu().numpy()
            table[users, 0] = held[users]
            table[users, 1:] = negs
        cands.append(table)
    time = data.timestamp[order]
    return Split(user[train], item[train], time[train], valid, test, cands[0], cands[1],
                 data.user_ids, data.item_ids, data.fingerprint(), name=data.name, new_users=newcomers,
                 new_history_user=user[is_new], new_history_item=item[is_new], new_history_time=time[is_new])


def held_out_users(counts: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A ``share`` of the users with two or more interactions (a history and a test item), drawn
    from ``seed``, sorted."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"new_users must lie in [0, 1), got {share}")
    eligible = np.flatnonzero(counts >= 2)
    count = int(round(share * len(eligible)))
    return np.sort(np.random.default_rng([seed, 1]).choice(eligible, count, replace=False)).astype(np.int64)


def random_split(data: Interactions, ratio: float = 0.8, *, seed: int = 0) -> tuple[Interactions, Interactions]:
    """A random split of the interactions: a ``ratio`` share trains, the rest tests.  Ids keep
    their meaning in both parts (same ``user_ids``/``item_ids``)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must lie in (0, 1), got {ratio}")
    keep = np.random.default_rng(seed).random(len(data)) < ratio
    part = lambda m, tag: Interactions(data.user[m], data.item[m], data.timestamp[m], data.user_ids,
                                       data.item_ids, f"{data.name}[{tag}]")
    return part(keep, "train"), part(~keep, "test")
