"""Readers for the MovieLens formats and generic CSV/Parquet interaction files.

| format | file | layout |
|---|---|---|
| ``ml-100k`` | ``u.data`` | ``user \\t item \\t rating \\t timestamp``, no header |
| ``ml-1m``, ``ml-10m`` | ``ratings.dat`` | ``user::item::rating::timestamp``, no header |
| ``ml-csv`` | ``ratings.csv`` (ml-20m, ml-25m, ml-latest) | header ``userId,movieId,rating,timestamp`` |
| ``recbole`` | ``*.inter`` (RecBole atomic files) | tab-separated, header ``user_id:token	item_id:token	rating:float	timestamp:float`` |
| ``csv``, ``parquet`` | ``*.csv``, ``*.tsv``, ``*.txt``, ``*.parquet`` | a header row, comma- or tab-separated (whichever the header uses); columns for user and item, optional rating and timestamp, under the common names below; ids may be text |

Column names are matched case-insensitively, after dropping a RecBole type suffix
(``user_id:token`` is ``user_id``): user ``user``, ``user_id``, ``userId``, ``uid``,
``reviewerID``, ...; item ``item``, ``item_id``, ``movieId``, ``iid``, ``asin``, ...; rating
``rating``, ``score``, ``stars``; timestamp ``timestamp``, ``time``, ``ts``, ``unixReviewTime``
(``_COLUMN_ALIASES``).  A timestamp may be written as a float (RecBole's ``881250949.0``).

The fast path is pandas' C parser.  If it rejects the file, a second, line-by-line pass finds
the first bad line, so the error names the file and the line.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

from .interactions import DataError, Interactions, from_raw

FORMATS = ("ml-100k", "ml-1m", "ml-10m", "ml-csv", "recbole", "csv", "parquet")
_RATINGS_FILES = {"u.data": "ml-100k", "ratings.dat": "ml-1m", "ratings.csv": "ml-csv"}
# lower case; a header name matches after lower-casing and dropping a ":type" suffix
_COLUMN_ALIASES = {
    "user": ("user", "user_id", "userid", "uid", "user_name", "reviewerid", "customer_id", "visitorid"),
    "item": ("item", "item_id", "itemid", "iid", "movieid", "movie_id", "movie", "product_id", "asin", "business_id",
             "track_id", "book_id", "isbn"),
    "rating": ("rating", "ratings", "score", "stars", "overall"),
    "timestamp": ("timestamp", "time", "ts", "unixreviewtime", "unix_timestamp"),
}


def _column_key(name: str) -> str:
    return name.strip().split(":", 1)[0].lower()


def detect_format(path: Path) -> str:
    name = path.name
    if name in _RATINGS_FILES:
        return _RATINGS_FILES[name]
    if name.endswith(".dat"):
        return "ml-1m"
    if name.endswith(".inter"):
        return "recbole"
    if name.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    raise DataError(f"{path}: unknown data format; supported: {', '.join(FORMATS)} "
                    f"(files {', '.join(_RATINGS_FILES)}, *.dat, *.inter, *.csv, *.tsv, *.txt, *.parquet)")


def _timestamp(field: str) -> float:
    """A timestamp: an integer, or a float with no fraction (RecBole writes ``881250949.0``)."""
    value = float(field)
    if value != int(value):
        raise ValueError(field)
    return value


_timestamp.__name__ = "timestamp"


def _rating(field: str) -> float:
    """A rating: a finite number, or an empty field (a missing rating).  ``nan`` is text that
    pandas' C parser rejects under ``keep_default_na=False``; it is named here, not read as missing."""
    if not field.strip():
        return float("nan")
    value = float(field)
    if not math.isfinite(value):
        raise ValueError(field)
    return value


_rating.__name__ = "rating (a number, or empty when missing)"


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


def _id(field: str) -> str:
    """A generic file's id: any non-empty text (numeric ids are converted afterwards)."""
    if not field.strip():
        raise ValueError(field)
    return field


_id.__name__ = "id"


def as_ids(values: np.ndarray) -> np.ndarray:
    """int64 when every id is an integer, else fixed-width strings (never Python objects, so
    splits save without pickle)."""
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    text = np.asarray(values, dtype=str)
    if text.size and np.char.isdigit(np.char.lstrip(text, "-")).all():
        try:
            return text.astype(np.int64)
        except (ValueError, OverflowError):  # "--5", or past int64: keep the text
            pass
    return text


def _read_delimited(path: Path, sep: str | None, header: bool, string_ids: bool = False,
                    float_time: bool = False) -> dict[str, np.ndarray]:
    """Columns of a delimited file; ``sep=None`` (with a header) takes the header's separator."""
    import pandas as pd

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text ({e.reason})") from None
    if header:
        head = text.split("\n", 1)[0].strip()
        if sep is None:  # whichever separator the header uses
            sep = "\t" if "\t" in head else ","
        first = head.split(sep)
        columns = {}
        for want, aliases in _COLUMN_ALIASES.items():
            found = [c for c in first if _column_key(c) in aliases]
            if found:
                columns[want] = found[0]
        for need in ("user", "item"):
            if need not in columns:
                raise DataError(f"{path}, line 1: no {need} column in the header; its columns are {first} "
                                f"(accepted {need} names: {', '.join(_COLUMN_ALIASES[need])}, in any case, "
                                "with an optional :type suffix)")
        names = first
    else:
        names = ["user", "item", "rating", "timestamp"]
        columns = {n: n for n in names}
    types = {columns["user"]: _id if string_ids else int, columns["item"]: _id if string_ids else int}
    if "rating" in columns:
        types[columns["rating"]] = _rating
    if "timestamp" in columns:
        types[columns["timestamp"]] = _timestamp if float_time else int
    line_types = [types.get(n, str) for n in names]
    # pandas' C parser takes one-character separators only; "::" never occurs inside a field
    data = text.replace(sep, "\t") if len(sep) > 1 else text
    pandas_types = {int: "int64", _rating: "float64", _id: "str", _timestamp: "float64"}
    try:
        frame = pd.read_csv(io.StringIO(data), sep="\t" if len(sep) > 1 else sep, header=0 if header else None,
                            names=None if header else names, dtype={c: pandas_types[t] for c, t in types.items()},
                            engine="c", skip_blank_lines=False, keep_default_na=False, na_values=[""])
        if frame.shape[1] != len(names):
            raise ValueError("column count")
        if string_ids and frame[[columns["user"], columns["item"]]].isna().to_numpy().any():
            raise ValueError("missing id")
        if "rating" in columns and np.isinf(frame[columns["rating"]].to_numpy()).any():
            raise ValueError("infinite rating")  # the C parser reads "inf"; the line pass names it
    except (ValueError, pd.errors.ParserError) as e:
        bad = _first_bad_line(path, text, sep, line_types, header)
        raise (bad or DataError(f"{path}: could not parse: {e}")) from None
    out = {want: frame[col].to_numpy() for want, col in columns.items()}
    if float_time and "timestamp" in out:
        stamps = out["timestamp"]
        if not np.array_equal(stamps, np.floor(stamps)):
            bad = _first_bad_line(path, text, sep, line_types, header)
            raise bad or DataError(f"{path}: timestamps must be whole numbers")
        out["timestamp"] = stamps.astype(np.int64)
    out["user"], out["item"] = as_ids(out["user"]), as_ids(out["item"])
    return out


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    out, out_columns = {}, {}
    for want, aliases in _COLUMN_ALIASES.items():
        found = [c for c in frame.columns if _column_key(str(c)) in aliases]
        if found:
            out[want], out_columns[want] = frame[found[0]].to_numpy(), found[0]
    for need in ("user", "item"):
        if need not in out:
            raise DataError(f"{path}: no {need} column among {list(frame.columns)}")
    for name in ("user", "item"):
        if frame[out_columns[name]].isna().any():
            raise DataError(f"{path}: column {name} has missing values")
        out[name] = as_ids(out[name])
    if "timestamp" in out and not np.issubdtype(out["timestamp"].dtype, np.integer):
        raise DataError(f"{path}: column timestamp must be integer, got {out['timestamp'].dtype}")
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
    elif fmt == "ml-csv":
        cols = _read_delimited(path, ",", header=True)
    elif fmt == "recbole":
        cols = _read_delimited(path, "\t", header=True, string_ids=True, float_time=True)
    elif fmt == "csv":
        cols = _read_delimited(path, None, header=True, string_ids=True, float_time=True)
    else:
        cols = _read_parquet(path)
    if len(cols["user"]) == 0:
        raise DataError(f"{path}: the file holds no interactions")
    return from_raw(cols["user"], cols["item"], cols.get("timestamp"), cols.get("rating"),
                    threshold=threshold, name=path.parent.name if path.name in _RATINGS_FILES else path.stem)
