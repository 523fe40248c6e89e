"""Downloads of the MovieLens archives from GroupLens into a cache directory.

The archive is fetched to a temporary file in the cache, its digest is checked, and it is
unpacked into a temporary directory that is renamed into place only when complete, so an
interrupted download or unpack never leaves a half-written dataset behind.  Offline, the error
says where to put the archive by hand; an archive placed there is verified and used.

The cache is ``$NEUMF_FAST_DATA`` or ``~/.cache/neumf_fast``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .interactions import DataError

GROUPLENS = "https://files.grouplens.org/datasets/movielens"


@dataclasses.dataclass(frozen=True)
class Archive:
    """One downloadable dataset.  ``sha256`` is checked when pinned; GroupLens publishes MD5
    digests (``<name>.zip.md5`` beside each archive), and ``md5`` pins those."""

    name: str
    url: str
    ratings: str  # the ratings file's name inside the archive
    sha256: str | None = None
    md5: str | None = None


# MD5s as published by GroupLens next to each archive.  No SHA-256 could be obtained for them
# while writing this (no route to GroupLens from the build machines); the first successful
# download prints the archive's SHA-256 so it can be pinned here.
ARCHIVES = {
    "ml-100k": Archive("ml-100k", f"{GROUPLENS}/ml-100k.zip", "u.data", md5="0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": Archive("ml-1m", f"{GROUPLENS}/ml-1m.zip", "ratings.dat", md5="c4d9eecfca2ab87c1945afe126590906"),
    "ml-10m": Archive("ml-10m", f"{GROUPLENS}/ml-10m.zip", "ratings.dat", md5="ce571fd55effeba0271552578f2648bd"),
    "ml-20m": Archive("ml-20m", f"{GROUPLENS}/ml-20m.zip", "ratings.csv", md5="cd245b17a1ae2cc31bb14903e1204af3"),
    "ml-25m": Archive("ml-25m", f"{GROUPLENS}/ml-25m.zip", "ratings.csv", md5="6b51fb2759a8657d3bfcbfc42b592ada"),
    "ml-latest-small": Archive("ml-latest-small", f"{GROUPLENS}/ml-latest-small.zip", "ratings.csv"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("NEUMF_FAST_DATA", Path.home() / ".cache" / "neumf_fast"))


def _digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _verify(path: Path, archive: Archive) -> str:
    sha, md5 = _digests(path)
    if archive.sha256 and sha != archive.sha256:
        raise DataError(f"{path}: SHA-256 {sha} does not match the expected {archive.sha256}; "
                        "the file is damaged or not the GroupLens archive. Delete it and download again.")
    if archive.md5 and md5 != archive.md5:
        raise DataError(f"{path}: MD5 {md5} does not match GroupLens' published {archive.md5}; "
                        "the file is damaged or not the GroupLens archive. Delete it and download again.")
    return sha


def _fetch(archive: Archive, dest: Path, progress: bool) -> None:
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(archive.url, timeout=60) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            from tqdm.auto import tqdm
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {archive.name}", disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"could not download {archive.name} from {archive.url} ({getattr(e, 'reason', e)}). "
            f"If this machine is offline, download that file elsewhere and put it at {dest} ; "
            f"it is verified and unpacked from there."
        ) from None


def download(name: str, root: str | os.PathLike | None = None, *, archive: Archive | None = None,
             progress: bool = True) -> Path:
    """Makes ``<root>/<name>/`` hold the unpacked dataset and returns its ratings file.

    Already unpacked: returns at once.  ``<root>/<name>.zip`` already present (placed by hand,
    or from an earlier try): verified and unpacked without a download.
    """
    if archive is None:
        if name not in ARCHIVES:
            raise DataError(f"unknown dataset {name!r}; downloadable: {', '.join(ARCHIVES)}")
        archive = ARCHIVES[name]
    root = Path(root) if root is not None else cache_dir()
    target = root / archive.name
    found = sorted(target.rglob(archive.ratings)) if target.is_dir() else []
    if found:
        return found[0]
    root.mkdir(parents=True, exist_ok=True)
    zip_path = root / f"{archive.name}.zip"
    if not zip_path.exists():
        _fetch(archive, zip_path, progress)
    sha = _verify(zip_path, archive)
    if archive.sha256 is None and progress:
        print(f"{zip_path}: SHA-256 {sha}")
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}-", dir=root))
    try:
        try:
            with zipfile.ZipFile(zip_path) as z:
                for member in z.namelist():  # refuse paths that would escape the staging dir
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise DataError(f"{zip_path}: unsafe path {member!r} in archive")
                z.extractall(staging)
        except zipfile.BadZipFile as e:
            raise DataError(f"{zip_path}: not a valid zip archive ({e}); delete it and download again") from None
        if not sorted(staging.rglob(archive.ratings)):
            raise DataError(f"{zip_path}: archive holds no {archive.ratings}")
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(target.rglob(archive.ratings))[0]
