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

    def eval_users(self, which: str) -> np.ndarray:
        held = self.valid if which == "valid" else self.test
        return np.flatnonzero(held >= 0)

    def candidates(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(users, candidates ``[U, C]``) of the evaluated users for ``"valid"`` or ``"test"``."""
        if which not in ("valid", "test"):
            raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
        users = self.eval_users(which)
        table = self.valid_candidates if which == "valid" else self.test_candidates
        return users, table[users]

    def all_positives(self) -> tuple[np.ndarray, np.ndarray]:
        """Every known (user, item) pair: training, validation and test."""
        users = np.arange(self.num_users)
        extra_u = np.concatenate([users[self.valid >= 0], users[self.test >= 0]])
        extra_i = np.concatenate([self.valid[self.valid >= 0], self.test[self.test >= 0]])
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
                fields = {f.name: z[f.name] for f in dataclasses.fields(cls)}
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{path}: not a readable split file ({e})") from None
        fields["fingerprint"], fields["name"] = str(fields["fingerprint"]), str(fields["name"])
        return cls(**fields)


def leave_one_out(data: Interactions, *, num_negatives: int = 99, seed: int = 0, device="cpu") -> Split:
    """The paper's protocol: latest interaction per user for test, the one before for validation.
    ``device`` is where the candidates are drawn (the same draw on any device would need the
    same generator, so the candidates of a GPU-built split differ from a CPU-built one)."""
    if len(data) == 0:
        raise DataError(f"{data.name}: cannot split an empty dataset")
    order = np.lexsort((np.arange(len(data)), data.timestamp, data.user))  # by user, time, row
    user, item = data.user[order], data.item[order]
    counts = np.bincount(user, minlength=data.num_users)
    ends = np.cumsum(counts)
    rank_from_end = np.repeat(ends, counts) - np.arange(len(user)) - 1  # 0 = latest
    user_count = counts[user]
    is_test = (rank_from_end == 0) & (user_count >= 2)
    is_valid = (rank_from_end == 1) & (user_count >= 3)
    train = ~(is_test | is_valid)
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
    return Split(user[train], item[train], data.timestamp[order][train], valid, test, cands[0], cands[1],
                 data.user_ids, data.item_ids, data.fingerprint(), name=data.name)


def random_split(data: Interactions, ratio: float = 0.8, *, seed: int = 0) -> tuple[Interactions, Interactions]:
    """A random split of the interactions: a ``ratio`` share trains, the rest tests.  Ids keep
    their meaning in both parts (same ``user_ids``/``item_ids``)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must lie in (0, 1), got {ratio}")
    keep = np.random.default_rng(seed).random(len(data)) < ratio
    part = lambda m, tag: Interactions(data.user[m], data.item[m], data.timestamp[m], data.user_ids,
                                       data.item_ids, f"{data.name}[{tag}]")
    return part(keep, "train"), part(~keep, "test")
