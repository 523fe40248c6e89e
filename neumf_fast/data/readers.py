"""Readers for the MovieLens formats and generic CSV/Parquet interaction files.

| format | file | layout |
|---|---|---|
| ``ml-100k`` | ``u.data`` | ``user \\t item \\t rating \\t timestamp``, no header |
| ``ml-1m``, ``ml-10m`` | ``ratings.dat`` | ``user::item::rating::timestamp``, no header |
| ``ml-csv`` | ``ratings.csv`` (ml-20m, ml-25m, ml-latest) | header ``userId,movieId,rating,timestamp`` |
| ``csv``, ``parquet`` | any | columns ``user``, ``item``, optional ``rating`` and ``timestamp`` |

The fast path is pandas' C parser.  If it rejects the file, a second, line-by-line pass finds
the first bad line, so the error names the file and the line.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .interactions import DataError, Interactions, from_raw

FORMATS = ("ml-100k", "ml-1m", "ml-10m", "ml-csv", "csv", "parquet")
_RATINGS_FILES = {"u.data": "ml-100k", "ratings.dat": "ml-1m", "ratings.csv": "ml-csv"}
_COLUMN_ALIASES = {
    "user": ("user", "userId", "user_id", "userid"),
    "item": ("item", "movieId", "item_id", "itemId", "movie_id", "itemid"),
    "rating": ("rating",),
    "timestamp": ("timestamp", "time", "ts"),
}


def detect_format(path: Path) -> str:
    name = path.name
    if name in _RATINGS_FILES:
        return _RATINGS_FILES[name]
    if name.endswith(".dat"):
        return "ml-1m"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    raise DataError(f"{path}: unknown data format; supported: {', '.join(FORMATS)} "
                    f"(files {', '.join(_RATINGS_FILES)}, *.dat, *.csv, *.parquet)")


def find_ratings_file(path: Path) -> Path:
    """A ratings file itself, or the one inside an unpacked MovieLens directory."""
    if path.is_file():
        return path
    if path.is_dir():
        for name in _RATINGS_FILES:
            hits = sorted(path.rglob(name))
            if hits:
                return hits[0]
        raise DataError(f"{path}: directory holds none of {', '.join(_RATINGS_FILES)}")
    raise DataError(f"{path}: no such file or directory")


def _first_bad_line(path: Path, text: str, sep: str, types: list, skip_header: bool) -> DataError | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if skip_header and number == 1:
            continue
        if not line.strip():
            return DataError(f"{path}, line {number}: empty line")
        fields = line.split(sep)
        if len(fields) != len(types):
            return DataError(f"{path}, line {number}: expected {len(types)} fields separated by {sep!r}, "
                             f"got {len(fields)}: {line[:80]!r}")
        for field, kind in zip(fields, types):
            try:
                kind(field)
            except ValueError:
                return DataError(f"{path}, line {number}: {field!r} is not a valid {kind.__name__}: {line[:80]!r}")
    return None


def _read_delimited(path: Path, sep: str, header: bool) -> dict[str, np.ndarray]:
    import pandas as pd

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text ({e.reason})") from None
    if header:
        first = text.split("\n", 1)[0].strip().split(sep)
        columns = {}
        for want, aliases in _COLUMN_ALIASES.items():
            found = [c for c in first if c in aliases]
            if found:
                columns[want] = found[0]
        for need in ("user", "item"):
            if need not in columns:
                raise DataError(f"{path}, line 1: no {need} column in header {first} "
                                f"(accepted names: {', '.join(_COLUMN_ALIASES[need])})")
        names = first
    else:
        names = ["user", "item", "rating", "timestamp"]
        columns = {n: n for n in names}
    types = {columns["user"]: int, columns["item"]: int}
    if "rating" in columns:
        types[columns["rating"]] = float
    if "timestamp" in columns:
        types[columns["timestamp"]] = int
    line_types = [types.get(n, str) for n in names]
    # pandas' C parser takes one-character separators only; "::" never occurs inside a field
    data = text.replace(sep, "\t") if len(sep) > 1 else text
    try:
        frame = pd.read_csv(io.StringIO(data), sep="\t" if len(sep) > 1 else sep, header=0 if header else None,
                            names=None if header else names, dtype={c: ("float64" if t is float else "int64") for c, t in types.items()},
                            engine="c", skip_blank_lines=False)
        if frame.shape[1] != len(names):
            raise ValueError("column count")
    except (ValueError, pd.errors.ParserError) as e:
        bad = _first_bad_line(path, text, sep, line_types, header)
        raise (bad or DataError(f"{path}: could not parse: {e}")) from None
    return {want: frame[col].to_numpy() for want, col in columns.items()}


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    out = {}
    for want, aliases in _COLUMN_ALIASES.items():
        found = [c for c in frame.columns if c in aliases]
        if found:
            out[want] = frame[found[0]].to_numpy()
    for need in ("user", "item"):
        if need not in out:
            raise DataError(f"{path}: no {need} column among {list(frame.columns)}")
    for name in ("user", "item", "timestamp"):
        if name in out and not np.issubdtype(out[name].dtype, np.integer):
            raise DataError(f"{path}: column {name} must be integer, got {out[name].dtype}")
    return out


def read_interactions(path: str | os.PathLike, fmt: str | None = None, *, threshold: float | None = None) -> Interactions:
    """Reads a ratings file (or an unpacked MovieLens directory) into ``Interactions``.

    Args:
        path: the file, or a directory containing ``u.data``, ``ratings.dat`` or ``ratings.csv``.
        fmt: one of ``FORMATS``; detected from the file name when omitted.
        threshold: keep only ratings ``>= threshold`` as positives (default: every rating).

    Raises:
        DataError: unknown format, a corrupt or truncated file (naming file and line), or no data.
    """
    path = find_ratings_file(Path(path))
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown data format {fmt!r}; supported: {', '.join(FORMATS)}")
    if fmt == "ml-100k":
        cols = _read_delimited(path, "\t", header=False)
    elif fmt in ("ml-1m", "ml-10m"):
        cols = _read_delimited(path, "::", header=False)
    elif fmt in ("ml-csv", "csv"):
        cols = _read_delimited(path, ",", header=True)
    else:
        cols = _read_parquet(path)
    if len(cols["user"]) == 0:
        raise DataError(f"{path}: the file holds no interactions")
    return from_raw(cols["user"], cols["item"], cols.get("timestamp"), cols.get("rating"),
                    threshold=threshold, name=path.parent.name if path.name in _RATINGS_FILES else path.stem)
