"""Data for implicit-feedback recommendation: readers, downloads, a synthetic ML-1M-like set,
splits and negative sampling."""

from __future__ import annotations

import os
from pathlib import Path

from .download import ARCHIVES, Archive, cache_dir, download
from .interactions import DataError, Interactions, from_raw
from .readers import FORMATS, read_interactions
from .sampling import NegativeSampler, distinct_negatives
from .split import Split, leave_one_out, random_split
from .synthetic import synthetic

DATASETS = ("synthetic", *ARCHIVES)


def load_dataset(spec: str, *, seed: int = 0, threshold: float | None = None, download_missing: bool = True,
                 root: str | os.PathLike | None = None) -> Interactions:
    """``"synthetic"``, a MovieLens name (downloaded into the cache if missing), or a path to a
    ratings file or unpacked directory.  ``seed`` only affects ``"synthetic"``."""
    if spec == "synthetic":
        return synthetic(seed)
    if spec in ARCHIVES:
        root = Path(root) if root is not None else cache_dir()
        if not download_missing and not (root / spec).is_dir():
            raise DataError(f"{spec} is not in {root}; run `neumf-fast data download {spec}`")
        return read_interactions(download(spec, root), threshold=threshold)
    if Path(spec).exists():
        return read_interactions(spec, threshold=threshold)
    raise DataError(f"unknown dataset {spec!r}: not a file or directory, and not one of {', '.join(DATASETS)}")


__all__ = [
    "ARCHIVES", "Archive", "DATASETS", "DataError", "FORMATS", "Interactions", "NegativeSampler", "Split",
    "cache_dir", "distinct_negatives", "download", "from_raw", "leave_one_out", "load_dataset", "random_split",
    "read_interactions", "synthetic",
]
