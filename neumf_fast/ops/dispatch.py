"""Backend selection for the fused NeuMF input op.

Each backend can say why it cannot run a given call (``not_supported_reasons``).  ``"auto"``
takes the backend that the GPU benchmark measured fastest for this GPU, shape class and dtype
(``auto_table.json``, see ``AutoTable``); without a measurement for them, the first backend
that can run in ``PREFERENCE`` (eager calls) or ``COMPILED_PREFERENCE`` (while
``torch.compile`` traces the call).  An explicitly requested backend that cannot run raises,
listing its reasons.  ``NEUMF_FAST_BACKEND`` in the environment forces a backend for the whole
process, overriding the ``backend=`` argument.

Why the two orders differ where nothing is measured, on CUDA tensors:

- *Eager calls take the CUDA C++ kernels.*  They are compiled when the package is built, so the
  first call of a new shape runs at once and every call launches from C++.  Triton compiles
  each new kernel variant on its first call (seconds each, in the caller's thread) and launches
  through Python.  No GPU measurement shows Triton's kernels faster: the last one (1addeb7) had
  its forward slower than eager PyTorch.
- *Under torch.compile, Triton first.*  Neither of those costs holds there: the compile is
  already being paid, and Inductor compiles a ``triton_op``'s kernels with its own (in its
  parallel workers, kept in its caches across processes) and launches them from its generated
  wrapper, with none of the op's Python launcher; the CUDA op stays an opaque call that
  Inductor cannot look into.  What is left between them is kernel time, which only a
  measurement settles, and a measured entry outranks both orders.

Every backend's reasons depend only on the device type, the dtype and how the process was set
up, so a selection is cached per (request, device, dtype, shape class, compiling): a call pays
a dict lookup, not the reason checks.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable

import torch

from . import _library
from ._checks import INDEX_DTYPES, FusedDims
from .. import reference

ENV_VAR = "NEUMF_FAST_BACKEND"


class BackendUnavailable(RuntimeError):
    """A requested backend cannot run these inputs; the message lists why."""


class Backend:
    """One implementation of the op: a name, a reason check and a call.  ``checks_inputs``:
    ``run`` validates a call before it reads anything, raising what ``check_inputs`` raises, so
    a caller need not check first.  The C++ ops do (csrc/ops.cpp), and so does Triton's launcher
    (triton_backend); the reference does not."""

    def __init__(self, name: str, reasons: Callable[[FusedDims], list[str]], run: Callable,
                 auto: Callable[[FusedDims], bool] = lambda dims: True, checks_inputs: bool = False):
        self.name, self._reasons, self.run, self.auto = name, reasons, run, auto
        self.checks_inputs = checks_inputs

    def not_supported_reasons(self, dims: FusedDims) -> list[str]:
        return self._reasons(dims)


def _torch_reasons(dims: FusedDims) -> list[str]:
    return []


def _cpu_reasons(dims: FusedDims) -> list[str]:
    reasons = []
    if _library.EXTENSION_ERROR is not None:
        reasons.append(_library.EXTENSION_ERROR)
    if dims.device.type != "cpu":
        reasons.append(f"the C++ CPU kernel runs on CPU tensors, these are on {dims.device}")
    return reasons


def _cuda_reasons(dims: FusedDims) -> list[str]:
    if _library.EXTENSION_ERROR is not None:
        return [_library.EXTENSION_ERROR]
    reasons = []
    if not _library.CUDA_KERNELS_BUILT:
        reasons.append("the CUDA kernels are not built into neumf_fast._C (they build when torch has CUDA and "
                       "nvcc is found; FORCE_CUDA=1 makes the build fail, saying why, when they cannot)")
    if dims.device.type != "cuda":
        reasons.append(f"the CUDA kernels run on CUDA tensors, these are on {dims.device}")
    return reasons


def _run_reference(user, user_mask, user_table, padding_idx, item, item_table,
                   user_weight, user_bias, item_weight, item_bias, h_mf, mode):
    return reference.neumf_input(
        user, item, h_mf=h_mf, user_mask=user_mask, user_table=user_table, padding_idx=padding_idx,
        item_table=item_table, user_weight=user_weight, user_bias=user_bias,
        item_weight=item_weight, item_bias=item_bias, mode=mode)


def _triton_reasons(dims: FusedDims) -> list[str]:
    if dims.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":  # no need to import Triton
        return [f"the Triton kernels run on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), "
                f"these are on {dims.device}"]
    from . import triton_backend

    return triton_backend.triton_reasons(dims)


def _run_triton(*args):
    from . import triton_backend

    return triton_backend.run_triton(*args)


BACKENDS: dict[str, Backend] = {
    "cuda": Backend("cuda", _cuda_reasons, _library.fused_input, checks_inputs=True),
    # "auto" takes Triton for CUDA tensors only: on the CPU it exists for the interpreter's tests
    "triton": Backend("triton", _triton_reasons, _run_triton, auto=lambda dims: dims.device.type == "cuda",
                      checks_inputs=True),
    "cpu": Backend("cpu", _cpu_reasons, _library.fused_input, checks_inputs=True),
    "torch": Backend("torch", _torch_reasons, _run_reference),
}
# What "auto" takes where AUTO_TABLE has no measurement: the first of these that can run (see
# the module's docstring for why the orders differ).  Eager calls: the CUDA kernels first, the
# backend with no compile at its first call; under torch.compile, Triton first.
PREFERENCE = ["cuda", "triton", "cpu", "torch"]
COMPILED_PREFERENCE = ["triton", "cuda", "cpu", "torch"]


def preference(compiling: bool) -> list[str]:
    """The order ``"auto"`` tries where nothing is measured: ``COMPILED_PREFERENCE`` while
    ``torch.compile`` traces the call, else ``PREFERENCE``."""
    return COMPILED_PREFERENCE if compiling else PREFERENCE


_warned_fallback = False


def _warn_fallback_once(dims: FusedDims) -> None:
    global _warned_fallback
    if not _warned_fallback and _library.EXTENSION_ERROR is not None and dims.device.type == "cpu":
        _warned_fallback = True
        warnings.warn(
            f"neumf_fast: {_library.EXTENSION_ERROR}; falling back to the PyTorch reference "
            "(reinstall with `pip install --no-build-isolation -e .` to build it)",
            RuntimeWarning,
            stacklevel=4,
        )


def shape_class(dims: FusedDims) -> str:
    """The benchmark's classes of calls (``class_of``)."""
    return class_of(dims.batch, dims.user_ids or dims.item_ids)


def class_of(batch: int, ids: bool) -> str:
    """``serving`` (batch <= 256: host cost and launch latency), else ``ids`` (table gathers and
    scatters) or ``dense``."""
    return "serving" if batch <= 256 else ("ids" if ids else "dense")


class AutoTable:
    """What ``"auto"`` takes on a GPU, by measurement: ``{gpu name: {"<shape class> <dtype>":
    backend}}``, written by ``benchmarks/choose_auto.py`` from a ``gpu_check.sh`` run (the fastest
    of the kernels at forward+backward, and at forward for ``serving``).  A GPU, class or dtype
    it does not list falls back to ``PREFERENCE`` (``COMPILED_PREFERENCE`` under torch.compile).
    A measured entry applies in both modes: at batches above the serving class the kernels'
    time dominates the launch, and the serving class is measured on the eager forward."""

    PATH = Path(__file__).with_name("auto_table.json")

    def __init__(self, path: Path | None = None):
        path = path or self.PATH
        self.table: dict[str, dict[str, str]] = json.loads(path.read_text()).get("choices", {}) if path.exists() else {}
        self._names: dict[int, str] = {}

    def choice(self, dims: FusedDims) -> str | None:
        if dims.device.type != "cuda" or not self.table:
            return None
        index = dims.device.index if dims.device.index is not None else torch.cuda.current_device()
        if index not in self._names:
            self._names[index] = torch.cuda.get_device_name(index)
        by_class = self.table.get(self._names[index], {})
        return by_class.get(f"{shape_class(dims)} {str(dims.dtype).removeprefix('torch.')}")


AUTO_TABLE = AutoTable()
_selected: dict[tuple, Backend] = {}


def select_backend(dims: FusedDims, backend: str = "auto") -> Backend:
    """The backend that will run these inputs, honouring ``NEUMF_FAST_BACKEND``."""
    requested = os.environ.get(ENV_VAR) or backend
    compiling = torch.compiler.is_compiling()
    key = _selection_key(requested, dims.device.type, dims.dtype, dims.batch, dims.user_ids or dims.item_ids,
                         compiling)
    chosen = _selected.get(key)
    if chosen is None:
        chosen = _selected[key] = _select(dims, requested, backend, compiling)
    if chosen.name == "torch" and requested == "auto":
        _warn_fallback_once(dims)
    return chosen


def selected_before(user, user_table, item, backend: str = "auto", device_type: str | None = None) -> Backend | None:
    """The backend ``select_backend`` chose for an earlier eager call of the same kind (request,
    device type, dtype, shape class), read from this call's metadata alone, without validating
    it; ``None`` if there was none.  (Only eager calls take this path: a traced call selects
    afresh.)  A call whose metadata is wrong finds none, or finds a
    backend whose op reports what is wrong (``Backend.checks_inputs``).  ``device_type``, if the
    caller has it, is ``user.device.type``."""
    if not (isinstance(user, torch.Tensor) and isinstance(item, torch.Tensor)) or user.dim() == 0:
        return None
    user_ids = user.dtype in INDEX_DTYPES
    source = user_table if user_ids else user
    if not isinstance(source, torch.Tensor):
        return None
    return _selected.get(_selection_key(os.environ.get(ENV_VAR) or backend,
                                        user.device.type if device_type is None else device_type, source.dtype,
                                        user.shape[0], user_ids or item.dtype in INDEX_DTYPES, False))


def _selection_key(requested: str, device_type: str, dtype: torch.dtype, batch: int, ids: bool,
                   compiling: bool) -> tuple:
    """What a selection depends on: every backend's reasons read only the device type, the
    dtype and how the process was set up (the extension), ``AutoTable`` the shape class, and
    the order without a measurement whether torch.compile is tracing."""
    return requested, device_type, dtype, class_of(batch, ids), _library.EXTENSION_ERROR, compiling


def _select(dims: FusedDims, requested: str, backend: str, compiling: bool = False) -> Backend:
    if requested == "auto":
        measured = AUTO_TABLE.choice(dims)
        if measured in BACKENDS and not BACKENDS[measured].not_supported_reasons(dims):
            return BACKENDS[measured]
        for name in preference(compiling):
            chosen = BACKENDS[name]
            if chosen.auto(dims) and not chosen.not_supported_reasons(dims):
                return chosen
        raise BackendUnavailable("neumf_fast: no backend can run these inputs")  # torch always can
    if requested not in BACKENDS:
        source = f"{ENV_VAR}={requested!r}" if os.environ.get(ENV_VAR) else f"backend={backend!r}"
        raise ValueError(f"neumf_fast: unknown {source}; choose 'auto' or one of {sorted(BACKENDS)}")
    chosen = BACKENDS[requested]
    reasons = chosen.not_supported_reasons(dims)
    if reasons:
        raise BackendUnavailable(f"neumf_fast: backend {requested!r} cannot run these inputs: " + "; ".join(reasons))
    return chosen


def probe_dims(device="cpu", dtype: torch.dtype = torch.float32) -> FusedDims:
    """A small call's dimensions on ``device`` in ``dtype``: what the backend checks need to
    say whether a backend can run there at all."""
    return FusedDims(batch=1, seq_len=1, user_dim=8, item_dim=8, user_proj=8, item_proj=8, h_mf=4, user_ids=False,
                     item_ids=False, dtype=dtype, device=torch.device(device))


def available_backends(device: str | torch.device | FusedDims = "cpu", dtype: torch.dtype = torch.float32,
                       compiled: bool = False) -> list[str]:
    """Names of the backends that can run on ``device`` in ``dtype`` (or run the call that
    ``FusedDims`` describes), in the order ``"auto"`` tries them where ``auto_table.json`` has
    no measurement for this GPU: eager calls (``compiled=False``) take the CUDA kernels before
    Triton, calls traced by ``torch.compile`` (``compiled=True``) Triton before the CUDA kernels.
    ``"auto"`` takes the first of them, except that it never takes Triton for CPU tensors.

        >>> neumf_fast.available_backends("cpu")
        ['cpu', 'torch']
        >>> neumf_fast.available_backends("cuda")                    # doctest: +SKIP
        ['cuda', 'triton', 'torch']
        >>> neumf_fast.available_backends("cuda", compiled=True)     # doctest: +SKIP
        ['triton', 'cuda', 'torch']"""
    dims = device if isinstance(device, FusedDims) else probe_dims(device, dtype)
    return [n for n in preference(compiled) if not BACKENDS[n].not_supported_reasons(dims)]


def unavailable_reasons(backend: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Why ``backend`` cannot run on ``device`` in ``dtype`` (empty when it can; ``"auto"`` always can)."""
    if backend == "auto":
        return []
    if backend not in BACKENDS:
        return [f"unknown backend {backend!r}; choose 'auto' or one of {sorted(BACKENDS)}"]
    return BACKENDS[backend].not_supported_reasons(probe_dims(device, dtype))
