"""The build: the extension links the process's shared libstdc++ whatever the environment adds,
and setup.py finds the CUDA toolkit behind a wrapper nvcc.

Why it matters: with a static copy of libstdc++ inside ``_C.so``, every error raised from C++
(an out-of-range id, a bad argument) crashed the process with SIGSEGV on the GPU machine, or,
here, lost its message after the first number (neumf_fast/_build.py explains the mechanism).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from neumf_fast import _build
from neumf_fast.ops import _library

ROOT = Path(__file__).resolve().parents[1]
linux_gxx = pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("g++") is None
                               or shutil.which("readelf") is None, reason="needs Linux, g++ and readelf")


@linux_gxx
@pytest.mark.skipif(_library.EXTENSION_ERROR is not None, reason=str(_library.EXTENSION_ERROR))
def test_built_extension_links_the_shared_libstdcxx():
    import neumf_fast._C as ext

    assert _build.libstdcxx_problems(ext.__file__) == []


def _tiny_library(tmp_path: Path, *flags: str) -> str:
    """A shared library that formats a number into a stream, linked with ``flags``."""
    source = tmp_path / "tiny.cpp"
    source.write_text('#include <sstream>\n#include <string>\n'
                      'std::string describe(long id) { std::ostringstream s; s << "id " << id; return s.str(); }\n')
    out = tmp_path / f"tiny{len(list(tmp_path.glob('*.so')))}.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-O1", str(source), "-o", str(out), *flags], check=True)
    return str(out)


@linux_gxx
def test_link_check_tells_a_static_libstdcxx_from_the_shared_one(tmp_path):
    """The check itself can fail: a library linked with -static-libstdc++ is reported on both
    counts, the default link passes, and the project's link argument undoes the static flag."""
    static = _build.libstdcxx_problems(_tiny_library(tmp_path, "-static-libstdc++"))
    assert len(static) == 2 and "NEEDED" in static[0] and "std::locale" in static[1], static
    assert _build.libstdcxx_problems(_tiny_library(tmp_path)) == []
    assert _build.libstdcxx_problems(_tiny_library(tmp_path, "-static-libstdc++", _build.LINK_SHARED_LIBSTDCXX)) == []


def _static_archive_only_dir(tmp_path: Path) -> str:
    archive = subprocess.run(["g++", "-print-file-name=libstdc++.a"], capture_output=True, text=True).stdout.strip()
    if not os.path.isfile(archive):
        pytest.skip("g++ has no libstdc++.a")
    lib = tmp_path / "only-static"
    lib.mkdir()
    (lib / "libstdc++.a").symlink_to(archive)
    return str(lib)


@pytest.mark.slow
@linux_gxx
@pytest.mark.skipif(torch.version.cuda is not None,
                    reason="a CUDA torch would build the CUDA kernels too (minutes); the GPU check's own build "
                           "runs the same link check")
@pytest.mark.parametrize("variant", ["LDFLAGS=-static-libstdc++", "libstdc++.a first on the library path"])
def test_extension_built_in_a_static_libstdcxx_environment_still_raises_whole_messages(tmp_path, variant):
    """Build the extension from this checkout in an environment that asks for the static
    libstdc++ (as the GPU machine's image did), then raise an IndexError from C++ in a fresh
    process: the build passes its link check and the message arrives whole.  Before the fix the
    same build linked statically and the message stopped at 'user id '."""
    env = dict(os.environ, NEUMF_FAST_CPU_ARCH="generic", MAX_JOBS="2")
    if variant.startswith("LDFLAGS"):
        env["LDFLAGS"] = "-static-libstdc++"
    else:
        env["LDFLAGS"] = f"-L{_static_archive_only_dir(tmp_path)}"
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "csrc", src / "csrc")
    shutil.copytree(ROOT / "neumf_fast", src / "neumf_fast",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, env=env,
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (built,) = (src / "neumf_fast").glob("_C*.so")
    assert _build.libstdcxx_problems(str(built)) == []
    probe = textwrap.dedent("""
        import torch, neumf_fast
        assert neumf_fast.__file__.startswith(%r), neumf_fast.__file__
        table = torch.randn(10, 4)
        try:
            neumf_fast.neumf_input(torch.tensor([[0, 12]]), torch.randn(1, 4), user_table=table, h_mf=2, backend="cpu")
        except IndexError as exc:
            print("MESSAGE:", exc)
        print("after:", neumf_fast.neumf_input(torch.tensor([[0, 3]]), torch.ones(1, 4), user_table=torch.ones(10, 4),
                                               h_mf=2, backend="cpu")[0].tolist())
    """ % str(src))
    env.pop("LDFLAGS")
    run = subprocess.run([sys.executable, "-c", probe], cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "MESSAGE: neumf_fast: user id 12 is out of range for a table with 10 rows" in run.stdout, run.stdout
    assert "after: [[2.0, 2.0]]" in run.stdout, run.stdout  # the process goes on and computes


def test_the_license_is_mit_and_named_by_the_metadata():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"], project
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the neumf_fast authors" in text
    assert "MIT licence" in (ROOT / "README.md").read_text()


def test_the_wheel_and_the_sdist_carry_the_license(tmp_path):
    """Built as a user would (pip, the backend's sdist), without the extension: a few seconds."""
    import tarfile
    import zipfile

    env = dict(os.environ, NEUMF_FAST_SKIP_EXTENSION="1")
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                            str(ROOT), "-w", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert wheel.returncode == 0, wheel.stdout[-3000:] + wheel.stderr[-3000:]
    (built,) = tmp_path.glob("neumf_fast-*.whl")
    with zipfile.ZipFile(built) as z:
        dist_info = {n.split("/", 1)[1]: n for n in z.namelist() if ".dist-info/" in n}
        assert "licenses/LICENSE" in dist_info, sorted(dist_info)
        assert z.read(dist_info["licenses/LICENSE"]) == (ROOT / "LICENSE").read_bytes()
        metadata = z.read(dist_info["METADATA"]).decode()
    assert "License-Expression: MIT\n" in metadata and "License-File: LICENSE\n" in metadata, metadata[:800]
    sdist = subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; "
                            f"print(build_meta.build_sdist({str(tmp_path)!r}))"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert sdist.returncode == 0, sdist.stdout[-3000:] + sdist.stderr[-3000:]
    with tarfile.open(tmp_path / sdist.stdout.split()[-1]) as tar:
        names = tar.getnames()
    assert "neumf_fast-0.1.0/LICENSE" in names, names[:20]


# A finder that makes `import torch` fail as it does in pip's isolated build environment.
HIDE_TORCH = textwrap.dedent("""
    import runpy, sys

    class HideTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, HideTorch())
    sys.argv = ["setup.py", "--name"]
    runpy.run_path("setup.py", run_name="__main__")
""")


def test_setup_with_an_old_setuptools_says_to_upgrade_it():
    """``--no-build-isolation`` uses the environment's setuptools; below 77 it cannot read the
    SPDX licence, and setup.py says so in one line before setuptools fails on the schema."""
    script = "import setuptools; setuptools.__version__ = '65.5.0'\n" + HIDE_TORCH
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "neumf_fast: the build needs setuptools>=77 (this environment has 65.5.0); run: pip install -U setuptools")


def test_setup_without_torch_says_to_install_torch_then_build_without_isolation():
    """pip's default isolated build has no torch: setup.py ends with one line that says what to
    do, and that line's command is the README's install command."""
    env = {k: v for k, v in os.environ.items() if k != "NEUMF_FAST_SKIP_EXTENSION"}
    done = subprocess.run([sys.executable, "-c", HIDE_TORCH], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("neumf_fast: the build needs torch") and "install torch first" in last, done.stderr
    command = last.split("then run: ")[1]
    assert command == "pip install --no-build-isolation .", last
    assert command in (ROOT / "README.md").read_text(), "the README's install line is not the one that works"
    assert "Traceback" not in done.stderr, done.stderr


# --- finding the CUDA toolkit ----------------------------------------------------------------

def _fake_toolkit(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    nvcc = root / "bin" / "nvcc"
    # a real nvcc's dry run prints where it runs from; this stand-in does the same
    nvcc.write_text(f'#!/bin/sh\necho "#$ _HERE_={root}/bin" >&2\necho "#$ TOP={root}/bin/.." >&2\n')
    nvcc.chmod(0o755)
    return root


def test_cuda_home_from_a_wrapper_nvcc_on_path(tmp_path, monkeypatch):
    """nvcc on PATH is a wrapper script in another directory (as on the GPU machine, where
    torch guessed CUDA_HOME=/usr/local and the link missed -lcudart): the toolkit is the one the
    wrapper runs."""
    toolkit = _fake_toolkit(tmp_path / "cuda-13.0")
    wrappers = tmp_path / "local" / "bin"
    wrappers.mkdir(parents=True)
    (wrappers / "nvcc").write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    (wrappers / "nvcc").chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrappers}:/usr/bin:/bin")
    home, note = _build.find_cuda_home()
    assert home == str(toolkit), note
    assert "from the nvcc on PATH" in note


def test_cuda_home_prefers_the_environment_and_says_when_it_ignores_it(tmp_path, monkeypatch):
    toolkit = _fake_toolkit(tmp_path / "cuda")
    monkeypatch.setenv("PATH", f"{toolkit}/bin:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    assert _build.find_cuda_home()[0] == str(toolkit)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "nothing-here"))
    home, note = _build.find_cuda_home()
    assert home == str(toolkit) and "CUDA_HOME=" in note and "ignored" in note, note


def test_no_cuda_toolkit_is_one_line_saying_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_build, "_is_toolkit", lambda path: False)  # hide a real /usr/local/cuda
    home, note = _build.find_cuda_home()
    assert home is None
    assert "\n" not in note and "no nvcc on PATH" in note and "set CUDA_HOME" in note, note
