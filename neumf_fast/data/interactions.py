"""``Interactions``: implicit feedback as parallel arrays, with contiguous user and item ids."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np


class DataError(ValueError):
    """A data file or dataset that cannot be used; the message names the file (and line)."""


class IdSpace:
    """Sizes of the contiguous id ranges, from the original-id maps ``user_ids``/``item_ids``."""

    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def lookup(table: np.ndarray, ids) -> tuple[np.ndarray, np.ndarray]:
    """(positions ``[N]`` int64, unknown ``[N]`` bool) of original ids in a sorted id table
    (``user_ids``/``item_ids``); an id that is not of the table's type (text for integer ids) is
    unknown.  Unknown ids get position 0."""
    wanted = np.atleast_1d(np.asarray(ids))
    if len(table) == 0 or wanted.size == 0:
        return np.zeros(wanted.size, np.int64), np.ones(wanted.size, bool)
    ok = np.ones(wanted.size, bool)
    if table.dtype.kind in "iu" and wanted.dtype.kind not in "iu":
        text = wanted.astype(str)
        ok = np.char.isdigit(np.char.lstrip(text, "-")) & (np.char.str_len(text) < 19)
        converted = np.zeros(wanted.size, np.int64)
        converted[ok] = text[ok].astype(np.int64)
        wanted = converted
    else:  # text ids: compared as text of any width (a cast to the table's width would cut them)
        wanted = wanted.astype(table.dtype if table.dtype.kind in "iu" else str)
    pos = np.minimum(np.searchsorted(table, wanted), len(table) - 1)
    unknown = ~ok | (table[pos] != wanted)
    return np.where(unknown, 0, pos).astype(np.int64), unknown


@dataclasses.dataclass
class Interactions(IdSpace):
    """One row per (user, item) positive.

    ``user`` and ``item`` are contiguous ids ``0..num_users-1`` and ``0..num_items-1``;
    ``user_ids[u]`` and ``item_ids[i]`` are the original ids from the source.  ``timestamp`` is
    int64 (all zeros when the source has none).
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    name: str = "interactions"

    def __len__(self) -> int:
        return len(self.user)

    def fingerprint(self) -> str:
        """SHA-256 over the interactions and the id maps: equal data, equal fingerprint."""
        h = hashlib.sha256()
        for a in (self.user, self.item, self.timestamp, self.user_ids, self.item_ids):
            h.update(np.ascontiguousarray(a).tobytes())
            h.update(b"|")
        return h.hexdigest()

    def describe(self) -> str:
        density = len(self) / max(1, self.num_users * self.num_items)
        return (f"{self.name}: {self.num_users:,} users, {self.num_items:,} items, "
                f"{len(self):,} interactions (density {density:.2%})")


def from_raw(user, item, timestamp=None, rating=None, *, threshold: float | None = None,
             name: str = "interactions") -> Interactions:
    """Builds ``Interactions`` from raw id columns.

    Every row is an implicit positive.  With ``threshold``, only rows with ``rating >= threshold``
    are kept.  A (user, item) pair that occurs more than once is kept once, at its earliest
    timestamp.  Ids are remapped to contiguous ranges in sorted order of the original ids.
    Raises ``DataError`` if nothing is left.
    """
    user, item = np.asarray(user), np.asarray(item)
    timestamp = np.zeros(len(user), np.int64) if timestamp is None else np.asarray(timestamp, np.int64)
    if threshold is not None:
        if rating is None:
            raise DataError(f"{name}: a rating threshold was given but the data has no rating column")
        keep = np.asarray(rating, np.float64) >= threshold
        user, item, timestamp = user[keep], item[keep], timestamp[keep]
    if len(user) == 0:
        raise DataError(f"{name}: the dataset is empty" + (" after the rating threshold" if threshold is not None else ""))
    user_ids, user_new = np.unique(user, return_inverse=True)
    item_ids, item_new = np.unique(item, return_inverse=True)
    user_new, item_new = user_new.astype(np.int64), item_new.astype(np.int64)
    # earliest occurrence of each pair: stable sort by time, then the first of each key
    order = np.argsort(timestamp, kind="stable")
    keys = user_new[order] * len(item_ids) + item_new[order]
    _, first = np.unique(keys, return_index=True)
    rows = np.sort(order[first])
    return Interactions(user_new[rows], item_new[rows], timestamp[rows], user_ids, item_ids, name)
