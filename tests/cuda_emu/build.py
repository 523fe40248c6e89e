"""Builds csrc/cuda/ for the CPU emulator (emu.h) as the op namespace ``neumf_fast_emu``.

The CUDA sources are compiled by the host C++ compiler, unchanged except for these rewrites,
made on copies in a build directory:

- ``kernel<<<grid, block, smem, stream>>>(args)`` becomes ``::emu::Launch(grid, block, smem,
  stream)(kernel, args)``;
- ``extern __shared__ ... smem[];`` becomes a pointer to the emulated block's shared memory;
- the kernels register for the CPU dispatch key instead of CUDA, and their ``is_cuda()`` device
  checks become ``is_cpu()``: emulated "device" memory is CPU memory;
- ``-Dneumf_fast=neumf_fast_emu`` renames the namespace, so that csrc/ops.cpp declares the same
  schemas as ``torch.ops.neumf_fast_emu`` beside the real extension.

counters.cpp adds the emulator's runtime counters as ``neumf_fast_emu::_emu_counters``.
Headers under include/ stand in for the CUDA runtime, fp16/bf16, WMMA and c10's CUDA helpers.
What this cannot check: the hardware itself (timing, memory model, the WMMA register layout,
occupancy).  tests/test_cuda.py runs the same parity cases on a GPU where there is one.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NAMESPACE = "neumf_fast_emu"

_LAUNCH = re.compile(r"([\w:]+(?:<[^<>;]*>)?)<<<(.*?)>>>\(", re.S)
_SHARED = re.compile(r"extern __shared__[^;]*\b(\w+)\[\];")


def rewrite(source: str) -> str:
    out = _LAUNCH.sub(lambda m: f"::emu::Launch({m.group(2)})({m.group(1)}, ", source)
    out = _SHARED.sub(lambda m: f"unsigned char* {m.group(1)} = ::emu::dynamic_smem();", out)
    out = out.replace("TORCH_LIBRARY_IMPL(neumf_fast, CUDA, m)", "TORCH_LIBRARY_IMPL(neumf_fast, CPU, m)")
    return out.replace(".is_cuda()", ".is_cpu()")


def build(build_dir: Path, verbose: bool = False, sanitize: bool = False) -> str:
    """Compiles and loads the emulated op library; returns its op namespace.  ``sanitize``
    instruments it with AddressSanitizer (the process must preload libasan), so that a kernel's
    out-of-bounds read or write of a tensor is reported instead of passing unseen."""
    from torch.utils import cpp_extension

    src = build_dir / "src"
    (src / "cuda").mkdir(parents=True, exist_ok=True)
    for name in ("ops.h", "ops.cpp"):
        _write_if_changed(src / name, (ROOT / "csrc" / name).read_text())
    for header in sorted((ROOT / "csrc" / "cuda").glob("*.cuh")):
        _write_if_changed(src / "cuda" / header.name, header.read_text())
    sources = [str(src / "ops.cpp"), str(HERE / "counters.cpp")]
    for cu in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        text = rewrite(cu.read_text())
        assert "<<<" not in text, f"{cu.name}: a kernel launch the emulator rewrite did not recognise"
        target = src / "cuda" / (cu.stem + ".cpp")
        _write_if_changed(target, text)
        sources.append(str(target))
    cpp_extension.load(
        name=NAMESPACE,
        sources=sources,
        extra_cflags=["-O1", f"-Dneumf_fast={NAMESPACE}", "-include", str(HERE / "emu.h"), "-pthread",
                      "-Wno-unused-variable", *(["-fsanitize=address", "-fno-omit-frame-pointer"] if sanitize else [])],
        extra_include_paths=[str(HERE / "include")],
        extra_ldflags=["-pthread", *(["-fsanitize=address"] if sanitize else [])],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=verbose,
    )
    return NAMESPACE


def _write_if_changed(path: Path, text: str) -> None:
    # unchanged files keep their mtime, so ninja rebuilds only what changed
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
