"""The package's shape: no import cycle and the layers of pyproject.toml's import contracts
(import-linter, which reads every import, those inside functions included), and modules small
enough to read whole."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "neumf_fast"
MAX_LINES = 350  # STYLE.md: about 350 lines is the sign to split a module by concern

LINT = ("from importlinter.cli import lint_imports; "
        "raise SystemExit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def _lint(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH=root: the copy under root is the neumf_fast that import-linter finds
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_import_contracts_are_kept():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout, done.stdout


@pytest.mark.parametrize("importer, line", [
    # the cycle this package had until the module split: the torchrun entry point in train.py
    ("train.py", "    from .cli import main as cli_main\n"),
    # a lower layer reaching up, lazily, inside a function
    ("models.py", "def _late():\n    from . import evaluate\n"),
])
def test_the_contracts_catch_a_cycle_or_an_upward_import(tmp_path, importer, line):
    """The check itself can fail: a copy of the package with one such import added breaks it."""
    shutil.copytree(PACKAGE, tmp_path / "neumf_fast", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "neumf_fast" / importer, "a") as f:
        f.write("\n\n" + line)
    done = _lint(tmp_path)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout, done.stdout


def test_no_module_is_over_the_size_limit():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    over = {name: n for name, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by concern): {over}"
