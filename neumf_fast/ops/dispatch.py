"""Backend selection for the fused NeuMF input op.

Each backend can say why it cannot run a given call (``not_supported_reasons``).  ``"auto"``
takes the backend that the GPU benchmark measured fastest for this GPU, shape class and dtype
(``auto_table.json``, see ``AutoTable``); without a measurement for them, the first backend
that can run in ``PREFERENCE`` (eager calls) or ``COMPILED_PREFERENCE`` (while
``torch.compile`` traces the call).  An explicitly requested backend that cannot run raises,
listing its reasons.  ``NEUMF_FAST_BACKEND`` in the environment forces a backend for the whole
process, overriding the ``backend=`` argument.

Why the two orders differ (docs/op.md says more): eager calls take the CUDA C++ kernels, built
ahead and launched from C++, where Triton compiles each new variant at its first call and
launches through Python; under torch.compile neither cost holds, and Inductor compiles and
launches a ``triton_op``'s kernels itself, where the CUDA op stays opaque.

Every backend's reasons depend only on the device type, the dtype and how the process was set
up, so a selection is cached per (request, device, dtype, shape class, compiling): a call pays
a dict lookup, not the reason checks.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from . import _library
from ._autograd import run_kernels
from ._checks import INDEX_DTYPES, FusedArgs, check_inputs
from .. import reference

ENV_VAR = "NEUMF_FAST_BACKEND"


class CallKind(NamedTuple):
    """What a selection depends on, read from a call's metadata (``kind_of``): ``FusedDims``
    has the same fields, so either describes a call here."""

    batch: int
    user_ids: bool
    item_ids: bool
    dtype: torch.dtype
    device: torch.device


def kind_of(args: FusedArgs) -> CallKind:
    """A call's kind, without validating it (the chosen backend does): a call too malformed to
    read gets ``check_inputs``' error instead."""
    user = args.user
    try:
        user_ids = user.dtype in INDEX_DTYPES
        source = args.user_table if user_ids else user
        # tuple.__new__, not CallKind(...): a NamedTuple's __new__ is a Python frame, a few µs of
        # a serving call when a model's tower has just evicted the caches
        return tuple.__new__(CallKind, (user.shape[0], user_ids, args.item.dtype in INDEX_DTYPES, source.dtype,
                                        user.device))
    except (AttributeError, IndexError):
        check_inputs(args)
        raise


class BackendUnavailable(RuntimeError):
    """A requested backend cannot run these inputs; the message lists why."""


class Backend:
    """One implementation of the op: a name, a reason check and ``run(args) -> (gmf, mlp_in)``.
    The reasons read only the device type, the dtype and how the process was set up; ``run``
    validates its call (the kernels' own checks, or ``check_inputs``) before it reads anything."""

    def __init__(self, name: str, reasons: Callable[[CallKind], list[str]], run: Callable,
                 auto: Callable[[CallKind], bool] = lambda kind: True):
        self.name, self._reasons, self.run, self.auto = name, reasons, run, auto

    def not_supported_reasons(self, kind: CallKind) -> list[str]:
        return self._reasons(kind)


def _cpu_reasons(kind: CallKind) -> list[str]:
    reasons = []
    if _library.EXTENSION_ERROR is not None:
        reasons.append(_library.EXTENSION_ERROR)
    if kind.device.type != "cpu":
        reasons.append(f"the C++ CPU kernel runs on CPU tensors, these are on {kind.device}")
    return reasons


def _cuda_reasons(kind: CallKind) -> list[str]:
    if _library.EXTENSION_ERROR is not None:
        return [_library.EXTENSION_ERROR]
    reasons = []
    if not _library.CUDA_KERNELS_BUILT:
        reasons.append("the CUDA kernels are not built into neumf_fast._C (they build when torch has CUDA and "
                       "nvcc is found; FORCE_CUDA=1 makes the build fail, saying why, when they cannot)")
    if kind.device.type != "cuda":
        reasons.append(f"the CUDA kernels run on CUDA tensors, these are on {kind.device}")
    return reasons


def _run_reference(args: FusedArgs):
    check_inputs(args)
    return reference.neumf_input(
        args.user, args.item, h_mf=args.h_mf, user_mask=args.user_mask, user_table=args.user_table,
        padding_idx=args.padding_idx, item_table=args.item_table, user_weight=args.user_weight,
        user_bias=args.user_bias, item_weight=args.item_weight, item_bias=args.item_bias, mode=args.mode)


def _run_kernels(args: FusedArgs):
    return run_kernels(_library.KERNELS, args)


def _triton_reasons(kind: CallKind) -> list[str]:
    if kind.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":  # no need to import Triton
        return [f"the Triton kernels run on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), "
                f"these are on {kind.device}"]
    from . import triton_backend

    return triton_backend.triton_reasons(kind)


def _run_triton(args: FusedArgs):
    from . import triton_backend

    return run_kernels(triton_backend.KERNELS, args)


BACKENDS: dict[str, Backend] = {
    "cuda": Backend("cuda", _cuda_reasons, _run_kernels),
    # "auto" takes Triton for CUDA tensors only: on the CPU it exists for the interpreter's tests
    "triton": Backend("triton", _triton_reasons, _run_triton, auto=lambda kind: kind.device.type == "cuda"),
    "cpu": Backend("cpu", _cpu_reasons, _run_kernels),
    "torch": Backend("torch", lambda kind: [], _run_reference),  # the reference runs anything
}
# What "auto" takes where AUTO_TABLE has no measurement: the first of these that can run (see
# the module's docstring for why the orders differ).  Eager calls: the CUDA kernels first, the
# backend with no compile at its first call; under torch.compile, Triton first.
PREFERENCE = ["cuda", "triton", "cpu", "torch"]
COMPILED_PREFERENCE = ["triton", "cuda", "cpu", "torch"]


_warned_fallback = False


def _warn_fallback_once(kind: CallKind) -> None:
    global _warned_fallback
    if not _warned_fallback and _library.EXTENSION_ERROR is not None and kind.device.type == "cpu":
        _warned_fallback = True
        warnings.warn(f"neumf_fast: {_library.EXTENSION_ERROR}; falling back to the PyTorch reference (reinstall "
                      "with `pip install --no-build-isolation -e .` to build it)", RuntimeWarning, stacklevel=4)


def shape_class(kind: CallKind) -> str:
    """The benchmark's classes of calls (``class_of``)."""
    return class_of(kind.batch, kind.user_ids or kind.item_ids)


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

    def choice(self, kind: CallKind) -> str | None:
        if kind.device.type != "cuda" or not self.table:
            return None
        index = kind.device.index if kind.device.index is not None else torch.cuda.current_device()
        if index not in self._names:
            self._names[index] = torch.cuda.get_device_name(index)
        by_class = self.table.get(self._names[index], {})
        return by_class.get(f"{shape_class(kind)} {str(kind.dtype).removeprefix('torch.')}")


AUTO_TABLE = AutoTable()
_selected: dict[tuple, Backend] = {}


_ENVIRON = getattr(os.environ, "_data", None)  # os.environ's own dict of encoded names and values
_ENV_KEY = os.environ.encodekey(ENV_VAR) if _ENVIRON is not None else None


def requested_backend(backend: str) -> str:
    """``NEUMF_FAST_BACKEND`` if set, else ``backend``.  Fast path: one lookup in os.environ's
    own dict, which its setters (and ``monkeypatch.setenv``) keep current, where
    ``os.environ.get`` raises and catches a KeyError whenever the variable is unset (about 10 µs
    of a serving call when a model's tower has just evicted the caches)."""
    if _ENVIRON is None:
        return os.environ.get(ENV_VAR) or backend
    value = _ENVIRON.get(_ENV_KEY)
    return os.environ.decodevalue(value) if value else backend


def select_backend(kind: CallKind, backend: str = "auto") -> Backend:
    """The backend that will run a call of this kind (a ``CallKind`` or ``FusedDims``),
    honouring ``NEUMF_FAST_BACKEND``.  Every backend's reasons depend only on the device type,
    the dtype and the process, ``AutoTable`` on the shape class, and the order without a
    measurement on whether torch.compile is tracing: a selection is cached on those."""
    requested = requested_backend(backend)
    compiling = torch.compiler.is_compiling()
    key = (requested, kind.device.type, kind.dtype, shape_class(kind), _library.EXTENSION_ERROR, compiling)
    chosen = _selected.get(key)
    if chosen is None:
        chosen = _selected[key] = _select(kind, requested, backend, compiling)
    if chosen.name == "torch" and requested == "auto":
        _warn_fallback_once(kind)
    return chosen


def _select(kind: CallKind, requested: str, backend: str, compiling: bool = False) -> Backend:
    if requested == "auto":
        measured = AUTO_TABLE.choice(kind)
        if measured in BACKENDS and not BACKENDS[measured].not_supported_reasons(kind):
            return BACKENDS[measured]
        for name in COMPILED_PREFERENCE if compiling else PREFERENCE:
            chosen = BACKENDS[name]
            if chosen.auto(kind) and not chosen.not_supported_reasons(kind):
                return chosen
        raise BackendUnavailable("neumf_fast: no backend can run these inputs")  # torch always can
    if requested not in BACKENDS:
        source = f"{ENV_VAR}={requested!r}" if requested != backend else f"backend={backend!r}"
        raise ValueError(f"neumf_fast: unknown {source}; choose 'auto' or one of {sorted(BACKENDS)}")
    chosen = BACKENDS[requested]
    reasons = chosen.not_supported_reasons(kind)
    if reasons:
        raise BackendUnavailable(f"neumf_fast: backend {requested!r} cannot run these inputs: " + "; ".join(reasons))
    return chosen


def probe_kind(device="cpu", dtype: torch.dtype = torch.float32) -> CallKind:
    """A small dense call on ``device`` in ``dtype``: what the backend checks need to say
    whether a backend can run there at all."""
    return CallKind(batch=1, user_ids=False, item_ids=False, dtype=dtype, device=torch.device(device))


def available_backends(device: str | torch.device | CallKind = "cpu", dtype: torch.dtype = torch.float32,
                       compiled: bool = False) -> list[str]:
    """Names of the backends that can run on ``device`` in ``dtype`` (or run the call that a
    ``CallKind`` or ``FusedDims`` describes), in the order ``"auto"`` tries them where ``auto_table.json`` has
    no measurement for this GPU: eager calls (``compiled=False``) take the CUDA kernels before
    Triton, calls traced by ``torch.compile`` (``compiled=True``) Triton before the CUDA kernels.
    ``"auto"`` takes the first of them, except that it never takes Triton for CPU tensors.

        >>> neumf_fast.available_backends("cpu")
        ['cpu', 'torch']
        >>> neumf_fast.available_backends("cuda")                    # doctest: +SKIP
        ['cuda', 'triton', 'torch']
        >>> neumf_fast.available_backends("cuda", compiled=True)     # doctest: +SKIP
        ['triton', 'cuda', 'torch']"""
    kind = probe_kind(device, dtype) if isinstance(device, (str, torch.device)) else device
    return [n for n in (COMPILED_PREFERENCE if compiled else PREFERENCE) if not BACKENDS[n].not_supported_reasons(kind)]


def unavailable_reasons(backend: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Why ``backend`` cannot run on ``device`` in ``dtype`` (empty when it can; ``"auto"`` always can)."""
    if backend == "auto":
        return []
    if backend not in BACKENDS:
        return [f"unknown backend {backend!r}; choose 'auto' or one of {sorted(BACKENDS)}"]
    return BACKENDS[backend].not_supported_reasons(probe_kind(device, dtype))
