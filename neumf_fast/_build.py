"""Build-time helpers shared by setup.py and the tests: finding the CUDA toolkit, and checking
that the built extension links the process's shared libstdc++.

setup.py loads this file by path (before torch's extension helpers are imported, and without
importing the package), so it uses the standard library only.

Why the link check: an extension that carries its own static copy of libstdc++ gives the
process two copies of libstdc++'s locale machinery.  ``std::ostream::_M_insert<long>`` then
binds to the extension's copy and ``num_put<char>::id`` to the process's ``libstdc++.so.6``,
so formatting a number in an error message (``c10::str``, ``TORCH_CHECK``) crashes the process
or cuts the message off at its first number (pytorch/pytorch#109923).  It happens when the
environment adds ``-static-libstdc++`` to the link (``LDFLAGS``, a Python built with it) or
puts a directory holding only ``libstdc++.a`` on the library path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

# Passed to the linker before the compiler driver's own ``-lstdc++``: the shared library then
# defines every libstdc++ symbol the objects use, and a static archive that the environment
# adds later contributes nothing.  ``-l:NAME`` (an exact file name) is GNU ld, gold and lld.
LINK_SHARED_LIBSTDCXX = "-l:libstdc++.so.6"

# Mangled prefixes of what must come from the process's libstdc++, never from the extension:
# std::locale and std::basic_ostream<char> (``_ZNSo``) / its template (``_ZNSt13basic_ostream``).
_FORBIDDEN_DEFINED = re.compile(r"^(_ZNSt6locale|_ZNSo|_ZNSt13basic_ostream|_ZNKSt7num_put)")


def libstdcxx_problems(so_path: str) -> list[str]:
    """What is wrong with how ``so_path`` links libstdc++ (an empty list when nothing is).

    Reads the dynamic section and the dynamic symbol table with ``readelf`` (binutils, present
    wherever the extension could be linked).  Only meaningful for ELF files (Linux)."""
    readelf = shutil.which("readelf")
    if readelf is None:
        return []  # no binutils: this cannot be an ELF build machine
    dynamic = subprocess.run([readelf, "-dW", so_path], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    problems = []
    if "libstdc++.so.6" not in needed:
        problems.append(f"it does not list libstdc++.so.6 among its NEEDED libraries ({', '.join(needed) or 'none'})")
    symbols = subprocess.run([readelf, "--dyn-syms", "-W", so_path], capture_output=True, text=True, check=True).stdout
    defined = []
    for line in symbols.splitlines():
        fields = line.split()
        # Num: Value Size Type Bind Vis Ndx Name; an undefined symbol has Ndx UND
        if len(fields) >= 8 and fields[6] != "UND" and _FORBIDDEN_DEFINED.match(fields[7]):
            defined.append(fields[7].split("@")[0])
    if defined:
        problems.append(f"it defines {len(defined)} std::locale/std::basic_ostream symbols itself "
                        f"(a static copy of libstdc++), e.g. {', '.join(sorted(defined)[:3])}")
    return problems


def explain_libstdcxx_problems(so_path: str, problems: list[str]) -> str:
    return (f"neumf_fast: the built extension {so_path} links libstdc++ statically: " + "; ".join(problems)
            + ". Errors raised from C++ would crash the process or lose their message. Remove "
            "-static-libstdc++ from LDFLAGS/LDSHARED, or any library directory that holds only libstdc++.a, "
            "and rebuild.")


def _is_toolkit(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def _toolkit_from_nvcc(nvcc: str) -> str | None:
    """The toolkit an ``nvcc`` on PATH belongs to, also when it is a symlink or a wrapper
    script: a dry run (``nvcc --dryrun -E -x cu /dev/null``, which compiles nothing) prints the
    directory the real driver runs from (``TOP=`` / ``_HERE_=``)."""
    real = os.path.realpath(nvcc)
    if _is_toolkit(os.path.dirname(os.path.dirname(real))):
        return os.path.dirname(os.path.dirname(real))
    try:
        out = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for key in ("TOP", "_HERE_"):
        m = re.search(rf"^#\$ {key}=(.+)$", out.stdout + out.stderr, re.M)
        if m:
            here = os.path.realpath(m.group(1).strip())
            for candidate in (here, os.path.dirname(here)):
                if _is_toolkit(candidate):
                    return candidate
    return None


def find_cuda_home() -> tuple[str | None, str]:
    """``(toolkit directory or None, one line saying where it came from or why none was found)``.

    Order: ``CUDA_HOME`` (or ``CUDA_PATH``) when it holds a toolkit, then the toolkit of the
    ``nvcc`` on ``PATH`` (followed through symlinks and wrapper scripts), then ``/usr/local/cuda``.
    A toolkit is a directory with ``bin/nvcc`` and ``include/cuda_runtime.h``."""
    bad_env = [f"{var}={os.environ[var]} has no bin/nvcc and include/cuda_runtime.h"
               for var in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(var)]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and _is_toolkit(os.environ[var]):
            return os.environ[var], f"CUDA toolkit {os.environ[var]} (from {var})"
    ignored = "".join(f"; {why}, ignored" for why in bad_env)
    tried = list(bad_env)
    nvcc = shutil.which("nvcc")
    if nvcc:
        found = _toolkit_from_nvcc(nvcc)
        if found:
            return found, f"CUDA toolkit {found} (from the nvcc on PATH, {nvcc}{ignored})"
        tried.append(f"the nvcc on PATH ({nvcc}) did not say where its toolkit is")
    else:
        tried.append("no nvcc on PATH")
    if _is_toolkit("/usr/local/cuda"):
        return "/usr/local/cuda", f"CUDA toolkit /usr/local/cuda{ignored}"
    tried.append("/usr/local/cuda holds none")
    return None, "no CUDA toolkit found: " + "; ".join(tried) + " (set CUDA_HOME to the toolkit's directory)"


if __name__ == "__main__":  # python neumf_fast/_build.py [path/to/_C.so]: the two checks by hand
    print(find_cuda_home()[1])
    for path in sys.argv[1:]:
        found = libstdcxx_problems(path)
        print(explain_libstdcxx_problems(path, found) if found else f"{path}: links the shared libstdc++.so.6")
