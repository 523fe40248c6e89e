"""Downloads against a local HTTP server serving a small zip the test builds."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile

import pytest

pytest.importorskip("pandas", reason="the data pipeline needs pandas")
pytest.importorskip("tqdm", reason="the data pipeline needs tqdm")

from neumf_fast.cli import main as cli_main
from neumf_fast.data import ARCHIVES, Archive, DataError, download, read_interactions


@pytest.fixture
def served(tmp_path):
    """A directory served over HTTP on localhost, holding ml-tiny.zip; yields (base url, sha256)."""
    www = tmp_path / "www"
    www.mkdir()
    with zipfile.ZipFile(www / "ml-tiny.zip", "w") as z:
        z.writestr("ml-tiny/ratings.dat", "1::10::5::100\n1::20::4::101\n2::10::3::102\n")
        z.writestr("ml-tiny/README", "tiny")
    sha = hashlib.sha256((www / "ml-tiny.zip").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", sha
    server.shutdown()
    server.server_close()


def test_download_verifies_and_unpacks(tmp_path, served):
    base, sha = served
    root = tmp_path / "cache"
    archive = Archive("ml-tiny", f"{base}/ml-tiny.zip", "ratings.dat", sha256=sha)
    path = download("ml-tiny", root, archive=archive, progress=False)
    assert path == root / "ml-tiny" / "ml-tiny" / "ratings.dat"
    assert len(read_interactions(path)) == 3
    assert not list(root.glob(".ml-tiny-*")) and not list(root.glob("*.part"))
    assert download("ml-tiny", root, archive=Archive("ml-tiny", "http://127.0.0.1:9/none", "ratings.dat")) == path


def test_wrong_digest_is_rejected_and_nothing_is_unpacked(tmp_path, served):
    base, _ = served
    root = tmp_path / "cache"
    archive = Archive("ml-tiny", f"{base}/ml-tiny.zip", "ratings.dat", sha256="0" * 64)
    with pytest.raises(DataError, match="SHA-256 .* does not match the expected 0000"):
        download("ml-tiny", root, archive=archive, progress=False)
    assert not (root / "ml-tiny").exists()
    archive = Archive("ml-tiny", f"{base}/ml-tiny.zip", "ratings.dat", md5="0" * 32)
    with pytest.raises(DataError, match="MD5 .* does not match GroupLens' published"):
        download("ml-tiny", root, archive=archive, progress=False)


def test_offline_error_says_where_to_put_the_file(tmp_path):
    root = tmp_path / "cache"
    archive = Archive("ml-tiny", "http://127.0.0.1:9/ml-tiny.zip", "ratings.dat")  # port 9: refused
    with pytest.raises(DataError) as e:
        download("ml-tiny", root, archive=archive, progress=False)
    assert f"put it at {root / 'ml-tiny.zip'}" in str(e.value)
    assert not list(root.glob("*.part"))


def test_a_zip_placed_by_hand_is_used(tmp_path, served):
    base, sha = served
    root = tmp_path / "cache"
    root.mkdir()
    (root / "ml-tiny.zip").write_bytes((tmp_path / "www" / "ml-tiny.zip").read_bytes())
    archive = Archive("ml-tiny", "http://127.0.0.1:9/unreachable.zip", "ratings.dat", sha256=sha)
    assert download("ml-tiny", root, archive=archive, progress=False).name == "ratings.dat"


def test_a_damaged_zip_is_a_clear_error(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    (root / "ml-tiny.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="not a valid zip archive"):
        download("ml-tiny", root, archive=Archive("ml-tiny", "http://127.0.0.1:9/x", "ratings.dat"), progress=False)
    assert not (root / "ml-tiny").exists() and not list(root.glob(".ml-tiny-*"))


def test_cli_download_uses_the_registry(tmp_path, served, monkeypatch, capsys):
    base, sha = served
    monkeypatch.setitem(ARCHIVES, "ml-tiny",
                        Archive("ml-tiny", f"{base}/ml-tiny.zip", "ratings.dat", sha256=sha))
    cli_main(["data", "download", "ml-tiny", "--root", str(tmp_path / "c")])
    assert "ratings.dat" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown dataset 'ml-nope'"):
        cli_main(["data", "download", "ml-nope", "--root", str(tmp_path / "c")])
