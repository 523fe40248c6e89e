"""Histories of users by original item ids, for a model whose user is its history (cold start).

A history file is CSV, JSON Lines or Parquet (chosen by the suffix), in one of two layouts:

- **a list per user**: a user column and an ``items`` (or ``history``) column holding the
  user's item ids, oldest first: a list in JSON Lines and Parquet, and in CSV a text of ids
  separated by spaces, ``;``, ``|`` or (quoted) commas, optionally in brackets (``"[1193, 661]"``);
- **one row per interaction**: user and item columns, and an optional timestamp, under the
  names ``read_interactions`` accepts (``user``, ``userId``, ``item``, ``movieId``, ...).
  Each user's rows are ordered by timestamp (ties, and files without one, by row order).

``Histories`` keeps every item of every user with the line it came from (for error messages);
``latest`` keeps the last ``length`` items of each user as a padded index array, as training
builds the users of a ``SequenceNeuMF``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np

from .interactions import DataError
from .readers import _COLUMN_ALIASES, _column_key, as_ids

LIST_COLUMNS = ("items", "history", "item_ids", "item_list")
SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


@dataclasses.dataclass
class Histories:
    """Users' histories: ``users[n]``'s item ids are ``items[offsets[n]:offsets[n + 1]]``,
    oldest first; ``lines`` holds the source line (row, for Parquet) of each item."""

    users: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    lines: np.ndarray
    source: str = "histories"
    unit: str = ""  # "line" or "row" when read from a file: what ``lines`` count

    def where(self, j: int) -> str:
        """Where flat item ``j`` came from, for messages: the file and line, or the user."""
        user = self.users[np.searchsorted(self.offsets, j, side="right") - 1].item()
        if not self.unit and len(self) == 1:
            return "the history"
        return f"{self.source}, {self.unit} {self.lines[j]} (user {user!r})" if self.unit else f"the history of user {user!r}"

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def from_lists(cls, users, lists, source: str = "histories", lines=None, unit: str = "") -> "Histories":
        """From one sequence of item ids per user (``lines``: each user's source line)."""
        lists = [np.atleast_1d(np.asarray(items)) for items in lists]
        counts = np.array([len(items) for items in lists], np.int64)
        at = np.arange(1, len(lists) + 1) if lines is None else np.asarray(lines, np.int64)
        items = np.concatenate(lists) if lists else np.zeros(0, np.int64)
        return cls(as_ids(np.asarray(users)), np.concatenate([[0], np.cumsum(counts)]), as_ids(items),
                   np.repeat(at, counts), source, unit)

    @classmethod
    def of(cls, histories) -> "Histories":
        """``Histories``, a mapping ``{user: [item ids]}``, or a list of item-id lists (users
        ``0..N-1``)."""
        if isinstance(histories, Histories):
            return histories
        if isinstance(histories, dict):
            return cls.from_lists(list(histories), list(histories.values()))
        histories = list(histories)
        if histories and np.ndim(histories[0]) == 0:
            raise ValueError("histories: give a list of item-id lists (or {user: [item ids]}); for one history "
                             "use history=")
        return cls.from_lists(np.arange(len(histories)), histories)


def group_of_items(offsets: np.ndarray) -> np.ndarray:
    """The user position of each flat item: ``[0, 0, 1, 2, 2, ...]``."""
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def latest(group: np.ndarray, item: np.ndarray, num_groups: int, length: int, pad: int) -> np.ndarray:
    """``[num_groups, length]`` int64: each group's last ``length`` items, oldest first, padded
    on the left with ``pad``.  ``group`` is sorted (rows of a group together, oldest first)."""
    counts = np.bincount(group, minlength=num_groups)
    from_end = np.repeat(np.cumsum(counts), counts) - np.arange(len(group))  # 1 = latest
    keep = from_end <= length
    out = np.full((num_groups, length), pad, np.int64)
    out[group[keep], length - from_end[keep]] = item[keep]
    return out


# ---- files ---------------------------------------------------------------------------------------


def read_histories(path: str | os.PathLike) -> Histories:
    """A history file (module docstring); ``DataError`` naming the file (and line) otherwise."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown history file suffix {suffix!r}; use {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    frame, lines = _read_jsonl(path) if suffix == ".jsonl" else _read_table(path, suffix)
    if len(frame) == 0:
        raise DataError(f"{path}: holds no histories")
    names = {_column_key(str(c)): c for c in frame.columns}
    user = next((names[a] for a in _COLUMN_ALIASES["user"] if a in names), None)
    if user is None:
        raise DataError(f"{path}: no user column among {list(frame.columns)} (accepted: "
                        f"{', '.join(_COLUMN_ALIASES['user'])})")
    listed = next((names[a] for a in LIST_COLUMNS if a in names), None)
    if listed is not None:
        return _from_list_column(path, frame, lines, user, listed)
    item = next((names[a] for a in _COLUMN_ALIASES["item"] if a in names), None)
    if item is None:
        raise DataError(f"{path}: no items column ({', '.join(LIST_COLUMNS)}: a list per user) and no item column "
                        f"(one row per interaction) among {list(frame.columns)}")
    stamp = next((names[a] for a in _COLUMN_ALIASES["timestamp"] if a in names), None)
    return _from_rows(path, frame, lines, user, item, stamp)


def _read_jsonl(path: Path):
    import pandas as pd

    rows = []
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {number}: not JSON ({e.msg}): {text.strip()[:80]!r}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: expected an object like {{\"user\": ..., \"items\": [...]}}, "
                                f"got {text.strip()[:80]!r}")
            rows.append((number, row))
    frame = pd.DataFrame([row for _, row in rows])
    return frame, np.array([n for n, _ in rows], np.int64)


def _read_table(path: Path, suffix: str):
    import pandas as pd

    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
        return frame, np.arange(1, len(frame) + 1)  # rows, from 1
    try:
        frame = pd.read_csv(path, sep=None if suffix == ".csv" else "\t", engine="python", dtype=str,
                            keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: could not parse ({str(e).splitlines()[0]})") from None
    return frame, np.arange(2, len(frame) + 2)  # line 1 is the header


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip())


def _check_users(path: Path, users: np.ndarray, lines: np.ndarray) -> None:
    for u, n in zip(users, lines):
        if _missing(u):
            raise DataError(f"{path}, line {n}: no user")


def _from_list_column(path: Path, frame, lines: np.ndarray, user: str, listed: str) -> Histories:
    users = frame[user].to_numpy()
    _check_users(path, users, lines)
    lists = [_as_list(path, n, value) for n, value in zip(lines, frame[listed].to_numpy())]
    keys = as_ids(np.asarray(users))
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if (counts > 1).any():
        twice = keys[first[counts > 1][0]]
        where = lines[keys == twice]
        raise DataError(f"{path}, lines {where[0]} and {where[1]}: user {twice.item()!r} twice (one line per user "
                        "in the list layout)")
    return Histories.from_lists(keys, lists, str(path), lines, "row" if path.suffix == ".parquet" else "line")


_SEPARATORS = re.compile(r"[\s,;|]+")


def _as_list(path: Path, line: int, value) -> list:
    if isinstance(value, str):  # CSV: "1193 661", "[1193, 661]", "a;b"
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        return [v.strip("'\"") for v in _SEPARATORS.split(text) if v.strip("'\"")]
    if isinstance(value, (list, tuple, np.ndarray)):
        if any(_missing(v) for v in value):
            raise DataError(f"{path}, line {line}: an item id in the list is missing (null)")
        return list(value)
    if _missing(value):
        return []
    raise DataError(f"{path}, line {line}: items must be a list of item ids, got {value!r}")


def _from_rows(path: Path, frame, lines: np.ndarray, user: str, item: str, stamp: str | None) -> Histories:
    users, items = frame[user].to_numpy(), frame[item].to_numpy()
    _check_users(path, users, lines)
    for v, n in zip(items, lines):
        if _missing(v):
            raise DataError(f"{path}, line {n}: no item id")
    time = np.zeros(len(frame), np.int64)
    if stamp is not None:
        raw = frame[stamp].to_numpy()
        try:
            time = np.array([int(float(v)) for v in raw], np.int64)
        except (TypeError, ValueError):
            bad = next(n for v, n in zip(raw, lines) if not _is_number(v))
            raise DataError(f"{path}, line {bad}: timestamp {raw[list(lines).index(bad)]!r} is not a number") from None
    keys = as_ids(np.asarray(users))
    # users in the order they first appear; each user's rows by time, then by row
    uniq, first, group = np.unique(keys, return_index=True, return_inverse=True)
    appearance = np.argsort(np.argsort(first))
    group = appearance[group.reshape(-1)]
    order = np.lexsort((np.arange(len(keys)), time, group))
    counts = np.bincount(group, minlength=len(uniq))
    return Histories(uniq[np.argsort(appearance)], np.concatenate([[0], np.cumsum(counts)]),
                     as_ids(np.asarray(items)[order]),
                     lines[order], str(path), "row" if path.suffix == ".parquet" else "line")


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
