"""Id range checks without a host sync (``NEUMF_FAST_CHECK_IDS``), for the Triton kernels and
the Python code every GPU backend runs (the autocast gather in ``ops.run_fused``).

The CUDA C++ kernels follow the same modes, with the same record and messages, in their own
host code (csrc/cuda/id_check.cuh).

Modes, as fbgemm's ``BoundsCheckMode`` (FATAL, WARNING, IGNORE): a bad id is never read (its
row contributes zeros, its gradient is dropped) and never passes silently:

- ``deferred`` (default): the kernels record a bad id in a small persistent per-device int64
  error buffer, ``[user_flag, user_id, user_rows, item_flag, item_id, item_rows]``.  After the
  launch the buffer is copied ``non_blocking`` into pinned host memory and an event recorded;
  the next call of the op waits on that (previous) event and reads the host copy, and the
  backward reads it if the event has completed (``event.query()``, no wait).  So the
  ``IndexError`` comes no later than the next call, and the host never waits for the current
  call's kernels.  The buffer is sticky until reported and reset after raising, so the process
  and its CUDA context go on working.
- ``sync``: the same record, then a wait for the call's own kernels and the ``IndexError`` at
  the call itself (one host sync per call: for debugging and the tests).

While a CUDA graph is captured, or under ``torch.compile``, nothing can be read back at a
call: bad ids are still masked in the kernels and a device-side assert
(``torch._assert_async``) stops the run, as before.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

ENV_VAR = "NEUMF_FAST_CHECK_IDS"
MODES = ("deferred", "sync")
USER_SLOT, ITEM_SLOT = 0, 3


def mode() -> str:
    """The id-check mode, read from the environment at every call (one dict lookup)."""
    value = os.environ.get(ENV_VAR)
    if value is None or value == "deferred":
        return "deferred"
    if value == "sync":
        return "sync"
    raise ValueError(f"neumf_fast: {ENV_VAR} must be one of {MODES}, got {value!r}")


class _DeviceErrors:
    """One device's error buffer, its host copy and the event of the last copy."""

    __slots__ = ("device", "errors", "host", "host_view", "event")

    def __init__(self, device: torch.device):
        self.device = device
        self.errors = torch.zeros(6, dtype=torch.int64, device=device)
        cuda = device.type == "cuda"
        self.host = torch.zeros(6, dtype=torch.int64, pin_memory=cuda)
        self.host_view = self.host.numpy()  # reading it dispatches no aten op
        self.event = torch.cuda.Event() if cuda else None


_STATES: dict[torch.device, _DeviceErrors] = {}
_PENDING: dict[torch.device, _DeviceErrors] = {}  # copies scheduled and not yet read


def error_buffer(device: torch.device) -> Tensor:
    """The persistent int64[6] error buffer of ``device`` (kernels write it, see module doc)."""
    state = _STATES.get(device)
    if state is None:
        state = _STATES[device] = _DeviceErrors(device)
    return state.errors


def after_launch(device: torch.device, check_mode: str) -> None:
    """Schedules the read-back of ``device``'s error buffer (``deferred``) or reads it now and
    raises (``sync``).  Call after the kernels that may have recorded a bad id."""
    error_buffer(device)
    state = _STATES[device]
    if check_mode == "sync":
        state.host.copy_(state.errors)  # blocking: the call's own kernels finish first
        _PENDING.pop(device, None)
        _raise_if_recorded(state)
        return
    if state.event is not None:
        state.host.copy_(state.errors, non_blocking=True)
        state.event.record()
    else:  # CPU tensors (the interpreter): the kernels have already run
        state.host.copy_(state.errors)
    _PENDING[device] = state


def raise_pending(wait: bool = True) -> None:
    """Raises the ``IndexError`` a previous call recorded.  ``wait``: wait for the previous
    call's copy (the forward); otherwise only look if it has landed (the backward)."""
    if not _PENDING:
        return
    for device, state in list(_PENDING.items()):
        if state.event is not None:
            if wait:
                state.event.synchronize()
            elif not state.event.query():
                continue
        del _PENDING[device]
        _raise_if_recorded(state)


def _raise_if_recorded(state: _DeviceErrors) -> None:
    h = state.host_view
    for slot, name in ((USER_SLOT, "user"), (ITEM_SLOT, "item")):
        if h[slot]:
            bad, rows = int(h[slot + 1]), int(h[slot + 2])
            state.errors.zero_()  # reported: the next call starts clean
            h[:] = 0
            raise IndexError(f"neumf_fast: {name} id {bad} is out of range for a table with {rows} rows")


def record_bad_ids(ids: Tensor, keep: Tensor | None, rows: int, name: str) -> Tensor:
    """With aten ops only (no host read): records a bad id among the kept positions of ``ids``
    into the device's error buffer and returns the mask of positions that are bad."""
    bad = (ids < 0) | (ids >= rows)
    if keep is not None:
        bad &= keep
    errors = error_buffer(ids.device)
    slot = USER_SLOT if name == "user" else ITEM_SLOT
    flat = bad.reshape(-1)
    if flat.numel():
        first = flat.to(torch.uint8).argmax().reshape(1)  # some bad position (0 if none: unused)
        found = flat.any()
        record = torch.cat([found.reshape(1).to(torch.int64), ids.reshape(-1).index_select(0, first).to(torch.int64),
                            torch.full((1,), rows, dtype=torch.int64, device=ids.device)])
        view = errors[slot:slot + 3]
        view.copy_(torch.where(found, record, view))
    return bad


def reset() -> None:
    """Forgets every recorded bad id and pending read-back, here and in the CUDA kernels' own
    record (csrc/cuda/id_check.cuh), for the tests or a process that caught an ``IndexError``
    elsewhere and wants a clean start."""
    if torch._C._dispatch_has_kernel("neumf_fast::_reset_id_check"):  # built with the CUDA kernels
        torch.ops.neumf_fast._reset_id_check()
    _PENDING.clear()
    for state in _STATES.values():
        state.errors.zero_()
        state.host_view[:] = 0
