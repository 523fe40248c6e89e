"""Writers for ``neumf-fast recommend --out``: CSV, JSON Lines or Parquet, chosen by the suffix,
each appending one block of rows at a time (so the output never has to fit in memory)."""

from __future__ import annotations

import json
from pathlib import Path

from .checks import UsageError

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


def output_format(path: Path) -> str:
    """The format ``path``'s suffix names, or a ``UsageError`` listing the suffixes."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"--out {path}: unknown suffix {path.suffix!r}; use {', '.join(FORMATS)}")
    return fmt


class BlockWriter:
    """``write(frame)`` appends a DataFrame block to ``path`` in its format; ``close()`` ends it.
    Writes ``path`` under a temporary name and renames it at the end, so a failed run leaves no
    half file under the real name."""

    def __init__(self, path: Path):
        self.path, self.format = path, output_format(path)
        self.tmp = path.with_name(path.name + ".tmp")
        self.rows, self._parquet, self._file = 0, None, None

    def write(self, frame) -> None:
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.tmp, table.schema)
            self._parquet.write_table(table)
        else:
            if self._file is None:
                self._file = open(self.tmp, "w", newline="")
            if self.format == "csv":
                frame.to_csv(self._file, header=self.rows == 0, index=False)
            else:
                for row in frame.itertuples(index=False):
                    self._file.write(json.dumps({"user": row.user.item() if hasattr(row.user, "item") else row.user,
                                                 "rank": int(row.rank),
                                                 "item": row.item.item() if hasattr(row.item, "item") else row.item,
                                                 "score": float(row.score)}) + "\n")
        self.rows += len(frame)

    def close(self, columns=("user", "rank", "item", "score")) -> None:
        if self.rows == 0:  # no rows at all: still a well-formed, empty file
            import pandas as pd

            self.write(pd.DataFrame({c: [] for c in columns}))
        if self._parquet is not None:
            self._parquet.close()
        if self._file is not None:
            self._file.close()
        self.tmp.replace(self.path)
