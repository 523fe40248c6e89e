"""What the GPU path costs, checked without a GPU (issue 22): no host sync in a call, no spill or
fence in any shipped Triton kernel, and no more compiles than a training run needs.

- Host syncs: one forward and one backward of ``backend="triton"`` (CPU tensors under the
  interpreter, the kernels running) and of the shared Python path (the autocast gather of
  ``ops.run_fused``) under a ``TorchDispatchMode`` that records every op that reads a tensor on
  the host (``_local_scalar_dense``, which ``.item()``, ``bool()`` and ``int()`` of a tensor
  dispatch) or copies across devices without ``non_blocking``.  On CPU tensors ``.cpu()``,
  ``.tolist()`` and ``.numpy()`` dispatch nothing, so those are left to code review; the id
  check's own read of its pinned host copy (``_id_check``) is one of them, by design.  The
  CUDA C++ backend's host code is counted by tests/test_cuda.py on the emulator
  (``test_host_never_waits_for_the_calls_own_kernels``: stream syncs, event waits and attribute
  queries) and read by ``test_cuda_host_code_has_no_hidden_sync``.
- Spills and fences: tests/triton_aot.py compiles every kernel the launchers ship for the
  benchmark shapes and ML-20M NeuMF training, for sm_90 and sm_80, and reads the SASS.
- Compiles: tests/triton_aot.py --count-neumf runs train.py's epoch loop on a NeuMF with the
  kernels recorded and counts the JIT cache keys its launches make.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import neumf_fast
from conftest import make_case
from neumf_fast.ops import dispatch

AOT = Path(__file__).with_name("triton_aot.py")
TRITON_REASONS = dispatch.unavailable_reasons("triton", "cpu")
needs_triton_cpu = pytest.mark.skipif(bool(TRITON_REASONS), reason="; ".join(TRITON_REASONS))


class HostReads(TorchDispatchMode):
    """Records the ops that make the host wait for the device: a scalar read, or a copy between
    devices that is not ``non_blocking``."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ("_local_scalar_dense", "item"):
            self.found.append(name)
        elif name in ("copy_", "_to_copy", "to"):
            src = args[1] if name == "copy_" else args[0]
            dst = args[0].device if name == "copy_" else kwargs.get("device", src.device)
            if isinstance(src, torch.Tensor) and torch.device(dst) != src.device and not kwargs.get("non_blocking"):
                self.found.append(f"{name} {src.device} -> {dst}")
        return func(*args, **kwargs)


def _forward_backward(case, backend="triton"):
    gmf, mlp_in = neumf_fast.neumf_input(case.user, case.item, backend=backend, **case.kwargs)
    (gmf.sum() + mlp_in.sum()).backward()


def test_the_counter_sees_a_host_read():
    """The control: the synchronous id check the op ran before (``check_id_range``, a
    ``bool()`` of a tensor) is counted."""
    from neumf_fast.ops._checks import check_id_range

    with HostReads() as reads:
        check_id_range(torch.tensor([1, 2]), None, 10, "item")
    assert reads.found == ["_local_scalar_dense"], reads.found


@needs_triton_cpu
@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
def test_triton_call_reads_nothing_on_the_host(user_ids, monkeypatch):
    """The default mode (``deferred``) makes no host read in a forward and its backward."""
    monkeypatch.delenv("NEUMF_FAST_CHECK_IDS", raising=False)
    make = lambda: make_case(batch=5, seq_len=3, user_dim=6, h_mf=2, h_mlp=3, user_ids=user_ids, item_ids=user_ids,
                             padding_idx=0 if user_ids else None, mode="mean")
    _forward_backward(make())  # the first call of a kind selects the backend; count the second
    case = make()
    with HostReads() as reads:
        _forward_backward(case)
    assert reads.found == [], reads.found


@needs_triton_cpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_autocast_gather_reads_nothing_on_the_host(backend):
    """The shared Python path under autocast (``_gathered_rows`` casts the rows a call reads, not
    the tables) checks the ids with device ops only.  float16: the interpreter's low precision;
    the reference backend shows the gather itself adds no read."""
    case = make_case(batch=5, seq_len=3, user_dim=6, h_mf=2, h_mlp=3, user_ids=True, item_ids=True, padding_idx=0,
                     num_user_rows=50, num_item_rows=40)
    with torch.autocast("cpu", dtype=torch.float16):
        _forward_backward(case, backend)
        with HostReads() as reads:
            gmf, mlp_in = neumf_fast.neumf_input(case.user, case.item, backend=backend, **case.kwargs)
    if backend == "triton":  # the reference's own forward reads its ids (it is the spec, not a GPU path)
        assert reads.found == [], reads.found
    with HostReads() as reads:
        (gmf.float().sum() + mlp_in.float().sum()).backward()
    if backend == "triton":
        assert reads.found == [], reads.found


def _aot(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.Popen([sys.executable, str(AOT), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels are compiled and run by the other tests")
def test_shipped_kernels_compile_for_sm80_and_sm90_without_spills_or_fences():
    """Every kernel the launchers ship for the benchmark shapes and ML-20M NeuMF, compiled for
    sm_90 and sm_80 (one process each, in parallel): no ``STL`` anywhere, no ``MEMBAR``/fence in
    the backward (whose table scatter must be relaxed ``RED``s), and the scatter is there."""
    runs = {arch: _aot("--arch", arch) for arch in ("90", "80")}
    outs = {arch: run.communicate(timeout=900)[0] for arch, run in runs.items()}
    for arch, out in outs.items():
        assert runs[arch].returncode == 0 and " 0 failures" in out, out[-8000:]
        scatter = [line for line in out.splitlines() if "ids" in line and "fused_backward_rows_kernel" in line]
        assert scatter and all(int(re.search(r"RED=(\d+)", line).group(1)) > 0 for line in scatter), scatter
    print(outs["90"].splitlines()[-1])


@pytest.mark.slow
def test_a_neumf_training_run_compiles_three_kernels():
    """train.py's epoch loop (ragged last batch included) and scoring compile: the forward that
    saves for backward, the backward with the atomic table scatter, and the inference forward
    (``save=False``).  Batch size, padding id and the ids' alignment are not specialised, so
    nothing else may appear."""
    run = _aot("--count-neumf")
    out = run.communicate(timeout=600)[0]
    assert run.returncode == 0, out[-6000:]
    variants = int(re.search(r"VARIANTS (\d+)", out).group(1))
    assert variants <= 3, out[-6000:]
    assert re.search(r"NOT_WARMED 0\b", out), "neumf_fast.warmup missed a kernel of the run:\n" + out[-6000:]


def test_warmup_leaves_gradients_and_mode_as_they_were():
    model = neumf_fast.NeuMF(30, 20, backend="torch")
    model.eval()
    neumf_fast.warmup(model, (torch.tensor([1, 2, 3]), torch.tensor([0, 4, 5])))
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
