"""Build of neumf_fast: what gets compiled is decided here.

- The C++ CPU extension (csrc/ops.cpp, csrc/cpu/) is always built, unless
  NEUMF_FAST_SKIP_EXTENSION=1: the package then runs on the reference (and Triton) backends.
- CUDA sources (csrc/cuda/*.cu) are added when torch has CUDA and nvcc is found, whether or not
  a GPU is present.  FORCE_CUDA=1 makes them required: the build fails, saying why, instead of
  quietly building the CPU kernels only.  They are compiled for sm_80 and sm_90 unless TORCH_CUDA_ARCH_LIST says
  otherwise (e.g. TORCH_CUDA_ARCH_LIST="9.0" for an H100 only, "8.0;9.0;10.0" to add Blackwell).
- NEUMF_FAST_CPU_ARCH=generic builds portable CPU code; by default the CPU kernels use AVX2/FMA
  when the building machine has them (the package is built where it runs).
- The CUDA toolkit is CUDA_HOME (or CUDA_PATH), else the toolkit of the nvcc on PATH (followed
  through symlinks and wrapper scripts), else /usr/local/cuda (neumf_fast/_build.py).
- On Linux the extension always links the process's shared libstdc++.so.6, whatever the
  environment adds (-static-libstdc++ in LDFLAGS, a directory holding only libstdc++.a), and
  the build fails, saying why, if the linked file still carries its own copy: with two copies
  in one process every C++ error message crashes or is cut off (neumf_fast/_build.py).

Install with `pip install --no-build-isolation -e .` so the build uses the torch already
installed instead of downloading another into an isolated environment.
"""

import glob
import importlib.util
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_build_helpers():
    """neumf_fast/_build.py by path: importing the package would need the extension built."""
    spec = importlib.util.spec_from_file_location("_neumf_fast_build", os.path.join(ROOT, "neumf_fast", "_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_build = _load_build_helpers()


# pip builds in an isolated environment by default, without the torch the user installed: the
# extension compiles against torch's headers, so it must see that torch.
NO_TORCH = ("neumf_fast: the build needs torch and this build environment has none; install torch first, "
            "then run: pip install --no-build-isolation .")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _host_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def _extensions():
    if _env_flag("NEUMF_FAST_SKIP_EXTENSION"):
        print("neumf_fast: NEUMF_FAST_SKIP_EXTENSION=1, building no C++/CUDA extension")
        return [], {}
    try:
        import torch
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        raise SystemExit(NO_TORCH) from None

    cuda_home, cuda_home_note = _build.find_cuda_home()
    if cuda_home is not None:
        # torch.utils.cpp_extension reads CUDA_HOME once, at import; its own guess from a wrapper
        # nvcc at /usr/local/bin/nvcc would be /usr/local, and the link would miss -lcudart.
        os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    if cuda_home is not None:
        cpp_extension.CUDA_HOME = cuda_home  # in case it was imported before us

    sources = [os.path.relpath(p, ROOT) for p in ["csrc/ops.cpp", *sorted(glob.glob(f"{ROOT}/csrc/cpu/*.cpp"))]]
    cxx = ["-O3", "-fopenmp", "-fdiagnostics-color=always"]
    if os.environ.get("NEUMF_FAST_CPU_ARCH", "native") != "generic" and _host_has_avx2():
        # at::vec picks its AVX2 Vectorized<T> from this macro, as ATen's own kernels do.
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    cuda_sources = sorted(glob.glob(f"{ROOT}/csrc/cuda/*.cu"))
    want_cuda = _env_flag("FORCE_CUDA") or (torch.cuda.is_available() or torch.version.cuda is not None)
    build_cuda = bool(cuda_sources) and want_cuda and cuda_home is not None
    if want_cuda:
        print(f"neumf_fast: {cuda_home_note}")
    if _env_flag("FORCE_CUDA") and (torch.version.cuda is None or not build_cuda):
        why = (f"a CUDA build of torch (this one is {torch.__version__})" if torch.version.cuda is None
               else f"the CUDA toolkit, and {cuda_home_note}")
        raise SystemExit(f"neumf_fast: FORCE_CUDA=1 requires the CUDA kernels, which need {why}; "
                         "unset FORCE_CUDA to build the CPU kernels only")
    kwargs = dict(
        name="neumf_fast._C",
        sources=sources + ([os.path.relpath(p, ROOT) for p in cuda_sources] if build_cuda else []),
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo", "--threads", "2"]},
        extra_link_args=["-fopenmp"] + ([_build.LINK_SHARED_LIBSTDCXX] if sys.platform.startswith("linux") else []),
    )
    if build_cuda:
        # torch's default would be this machine's GPU only (or every arch when it has none)
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        print(f"neumf_fast: building the CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    elif cuda_sources and want_cuda:
        print("neumf_fast: torch has CUDA but no CUDA toolkit was found; building the CPU kernels only")
    ext = CUDAExtension(**kwargs) if build_cuda else CppExtension(**kwargs)

    class BuildAndCheckLink(BuildExtension):
        """torch's build, then a look at the linked file: it must use the shared libstdc++."""

        def build_extension(self, ext):
            super().build_extension(ext)
            path = self.get_ext_fullpath(ext.name)
            if sys.platform.startswith("linux") and os.path.exists(path):
                problems = _build.libstdcxx_problems(path)
                if problems:
                    raise SystemExit(_build.explain_libstdcxx_problems(path, problems))

    return [ext], {"build_ext": BuildAndCheckLink}


def _check_setuptools() -> None:
    """pyproject.toml's SPDX `license` needs setuptools 77; an older one (an isolated build never
    has one, but `--no-build-isolation` uses the environment's) fails with a schema error instead."""
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        raise SystemExit(f"neumf_fast: the build needs setuptools>=77 (this environment has {setuptools.__version__}); "
                         "run: pip install -U setuptools")


_check_setuptools()
ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["neumf_fast", "neumf_fast.*"]),
    package_data={"neumf_fast.ops": ["auto_table.json"]},  # "auto"'s measured choices
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
