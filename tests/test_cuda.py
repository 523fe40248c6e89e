"""What only ``backend="cuda"`` (csrc/cuda/) has: its parity with the reference runs in
tests/test_parity.py, on the ``cuda`` target on a GPU and the ``cuda-emu`` target without one.

``cuda-emu`` is the same CUDA sources compiled for the CPU emulator (tests/cuda_emu: every CUDA
thread an OS thread, warp shuffles and ``__syncthreads`` as barriers, WMMA tiles computed in
full) and called on CPU tensors.  It runs the host code, the index arithmetic, the tiling, the
masks and the shared-memory layout (unwritten shared memory reads as NaN; WMMA alignment is
checked), but not the hardware.  Here: the emulator's counters (float4 atomics, what the host
waits for), a compute capability below sm_80, the id record's check modes on both targets, the
parity cases rerun under AddressSanitizer, and on a GPU opcheck, torch.compile and CUDA graphs.

Without a GPU, ``test_cuda_sources_compile_for_sm80_and_sm90`` also compiles each ``.cu`` file
with nvcc for sm_80 and sm_90 against torch's headers, as setup.py would on a CUDA machine, and
reads the SASS of the table scatter and of ``table_update_``'s row update.

Tolerances as tests/test_parity.py states them: float32 atol = rtol = 2e-5 normwise; float16 /
bfloat16 by flash-attention's rule (error against the float64 truth at most 2x PyTorch's own
error in that dtype, plus one eps of the largest magnitude).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import neumf_fast
from conftest import assert_flash_attention_rule, make_case, popular_id_case, run
from neumf_fast import reference
from neumf_fast.ops import BackendUnavailable, _library, check_inputs
from neumf_fast.ops.table_update import new_state

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
ON_GPU = torch.cuda.is_available()
GPU_READY = ON_GPU and _library.CUDA_KERNELS_BUILT
TOL = 2e-5


_EMU = pytest.param("cuda-emu", marks=pytest.mark.slow)  # the emulator builds first: the full loop only
EMULATED = pytest.mark.parametrize("backend", [_EMU], indirect=True)
CUDA_TARGETS = pytest.mark.parametrize("backend", [_EMU, "cuda"], indirect=True)


@EMULATED
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "sorted"])
def test_the_atomic_scatter_takes_float4_atomics(backend, deterministic):
    """fp32 with D % 4 == 0 (test_parity's popular id, whose sums are checked there): the atomic
    scatter takes float4 atomics, counted by the emulator (on 1847267 there were none), two per
    position that is not padding (user) and per item position; the sorted sum takes none."""
    case = popular_id_case(backend.device)
    counters = torch.ops.neumf_fast_emu._emu_counters
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        before = counters()[5]
        run(case, backend.op)
        vector_atomics = counters()[5] - before
    finally:
        torch.use_deterministic_algorithms(previous)
    kept = int((case.user != case.kwargs["padding_idx"]).sum())
    assert vector_atomics == (0 if deterministic else (kept + 300) * 2), vector_atomics


@EMULATED
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_reduced_precision_without_tensor_cores(backend, dtype, monkeypatch):
    """Before sm_80 the projection runs on FFMA in fp32 (emulated device only: a real GPU is
    what it is)."""
    monkeypatch.setenv("NEUMF_EMU_SM", "75")
    monkeypatch.setenv("NEUMF_EMU_DEVICE", "1")  # device 0's attributes are cached by its first call
    low = make_case(batch=37, seq_len=5, user_dim=37, h_mf=3, h_mlp=37, h_mlp_item=3, dtype=dtype).on(backend.device)
    assert_flash_attention_rule(low, backend.op)


@pytest.fixture(autouse=True)
def _clean_id_record():
    """A bad id a test leaves recorded (deferred mode) must not raise in the next test."""
    yield
    neumf_fast.ops._id_check.reset()
    if torch._C._dispatch_has_kernel("neumf_fast_emu::_reset_id_check"):
        torch.ops.neumf_fast_emu._reset_id_check()


def _bad_id_case(device, side):
    case = make_case(batch=3, seq_len=2, user_dim=4, h_mf=2, h_mlp=2, user_ids=True, item_ids=True,
                     num_user_rows=10, num_item_rows=7).on(device)
    if side == "user":
        case.user[1, 0] = 10
        return case, "user id 10 is out of range for a table with 10 rows"
    case.item[2] = -3
    return case, "item id -3 is out of range for a table with 7 rows"


@CUDA_TARGETS
@pytest.mark.parametrize("side", ["user", "item"])
def test_ids_out_of_range_sync_mode_raises_at_the_call(backend, side, monkeypatch):
    device, op = backend.device, backend.op
    monkeypatch.setenv("NEUMF_FAST_CHECK_IDS", "sync")
    case, match = _bad_id_case(device, side)
    with pytest.raises(IndexError, match=match):
        op(case.user, case.item, **case.kwargs)
    good = make_case(batch=3, seq_len=2, user_dim=4, h_mf=2, h_mlp=2, user_ids=True, item_ids=True,
                     num_user_rows=10, num_item_rows=7).on(device)
    op(good.user, good.item, **good.kwargs)  # reported and cleared: the next call runs


@CUDA_TARGETS
@pytest.mark.parametrize("side", ["user", "item"])
def test_ids_out_of_range_deferred_mode_raises_at_the_next_call(backend, side, monkeypatch):
    """The default mode: the call with the bad id returns (its row pooled as zeros, never read),
    the next call raises, naming the id and the table, and the one after runs again."""
    device, op = backend.device, backend.op
    monkeypatch.delenv("NEUMF_FAST_CHECK_IDS", raising=False)
    case, match = _bad_id_case(device, side)
    with torch.no_grad():
        gmf, _ = op(case.user, case.item, **case.kwargs)
    assert torch.isfinite(gmf).all()
    good = make_case(batch=3, seq_len=2, user_dim=4, h_mf=2, h_mlp=2, user_ids=True, item_ids=True,
                     num_user_rows=10, num_item_rows=7).on(device)
    with pytest.raises(IndexError, match=match):
        op(good.user, good.item, **good.kwargs)
    op(good.user, good.item, **good.kwargs)


@CUDA_TARGETS
@pytest.mark.parametrize("landed", [True, False], ids=["read-back-landed", "read-back-pending"])
def test_ids_out_of_range_deferred_mode_raises_in_the_backward(backend, landed, monkeypatch):
    """Training: the step's backward raises when the forward's read-back has landed; while it
    has not (the GPU still busy), the backward does not wait and the next forward raises."""
    device, op = backend.device, backend.op
    if device == "cuda" and not landed:
        pytest.skip("only the emulator can hold an event back")
    monkeypatch.delenv("NEUMF_FAST_CHECK_IDS", raising=False)
    if not landed:
        monkeypatch.setenv("NEUMF_EMU_EVENTS_PENDING", "1")
    case, match = _bad_id_case(device, "user")
    gmf, mlp_in = op(case.user, case.item, **case.kwargs)
    loss = gmf.sum() + mlp_in.sum()
    if landed:
        with pytest.raises(IndexError, match=match):
            loss.backward()
        return
    loss.backward()
    with pytest.raises(IndexError, match=match):
        op(case.user, case.item, **case.kwargs)


@CUDA_TARGETS
def test_an_unknown_check_mode_is_a_value_error(backend, monkeypatch):
    device, op = backend.device, backend.op
    monkeypatch.setenv("NEUMF_FAST_CHECK_IDS", "always")
    case, _ = _bad_id_case(device, "user")
    with pytest.raises(ValueError, match=r"NEUMF_FAST_CHECK_IDS must be one of \('deferred', 'sync'\), got 'always'"):
        op(case.user, case.item, **case.kwargs)


_HYPER = (0.05, 0.9, 0.99, 1e-8, 0.01)  # lr, beta1, beta2, eps, weight_decay


def _bad_update_case(optimizer="adam"):
    """A float64 ``table_update_`` call whose ids name row 10 of a 10-row table, and the table,
    state and ids the reference updates (the bad position as padding: skipped, as the kernel must)."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(10, 4, generator=g, dtype=torch.float64)
    ids = torch.tensor([[1, 10], [3, 1], [0, 2]])
    grad = torch.randn(3, 4, generator=g, dtype=torch.float64)
    state = new_state(optimizer, table)
    expected, expected_state, skipped = table.clone(), [s.clone() for s in state], ids.clone()
    skipped[0, 1] = -1
    reference.table_update_(expected, *expected_state, skipped, grad, -1, optimizer, *_HYPER)
    return (table, state, ids, grad), (expected, expected_state), "user id 10 is out of range for a table with 10 rows"


@CUDA_TARGETS
@pytest.mark.parametrize("mode", ["sync", "deferred"])
def test_table_update_ids_out_of_range(backend, mode, monkeypatch):
    """``table_update_`` checks its ids as the fused op's kernels do (id_check.cuh, the user
    slot): the bad position is skipped like padding (its row never read or written, the other
    rows updated), and the ``IndexError`` names the id and the table at the call (``sync``) or at
    the next call (``deferred``), after which calls run again."""
    device, update = backend.device, backend.update
    monkeypatch.setenv("NEUMF_FAST_CHECK_IDS", mode)
    (table, state, ids, grad), (expected, expected_state), match = _bad_update_case()
    table, state, ids, grad = table.to(device), [s.to(device) for s in state], ids.to(device), grad.to(device)
    if mode == "sync":
        with pytest.raises(IndexError, match=match):
            update(table, *state, ids, grad, None, "adam", *_HYPER)
    else:
        update(table, *state, ids, grad, None, "adam", *_HYPER)
        if device == "cuda":
            torch.cuda.synchronize()  # the read-back has landed: the next call raises, without a wait
    torch.testing.assert_close(table.cpu(), expected, atol=1e-12, rtol=0)
    for actual, wanted in zip(state, expected_state):
        torch.testing.assert_close(actual.cpu(), wanted, atol=1e-12, rtol=0)
    good = ids.clamp_max(9)
    if mode == "deferred":
        with pytest.raises(IndexError, match=match):
            update(table, *state, good, grad, None, "adam", *_HYPER)
        assert int(state[2]) == 1  # raised before touching anything
    update(table, *state, good, grad, None, "adam", *_HYPER)  # reported and cleared: the next call runs
    assert int(state[2]) == 2


@EMULATED
def test_host_never_waits_for_the_calls_own_kernels(backend, monkeypatch):
    """What the CUDA host code asks of the runtime (emulator counters), with ids on both sides:
    in deferred mode a training step never waits (no stream sync, no event wait: the backward
    only queries the forward's event) and queries no device attribute after the first call;
    forward-only calls wait on the previous call's read-back, normally long done, never on their
    own kernels; sync mode waits once per call.  On 1847267 every call with ids blocked on
    ``err.cpu()`` and queried the compute capability."""
    op = backend.op
    case = make_case(batch=5, seq_len=3, user_dim=8, h_mf=2, h_mlp=4, user_ids=True, item_ids=True,
                     project=True)
    counters = torch.ops.neumf_fast_emu._emu_counters
    monkeypatch.delenv("NEUMF_FAST_CHECK_IDS", raising=False)
    op(case.user, case.item, **case.kwargs)[0].sum().backward()  # the device's state is set up here
    # [stream syncs, event waits, event queries, attribute queries, device-to-host copies]
    before = counters()
    for _ in range(3):
        gmf, mlp_in = op(case.user, case.item, **case.kwargs)
        (gmf.sum() + mlp_in.sum()).backward()
    train = [a - b for a, b in zip(counters(), before)]
    assert train[0] == 0 and train[1] == 0 and train[3] == 0, train
    assert train[2] == 3 and train[4] == 3, train  # one query per backward, one 32-byte copy per forward
    before = counters()
    with torch.no_grad():
        for _ in range(3):
            op(case.user, case.item, **case.kwargs)
    infer = [a - b for a, b in zip(counters(), before)]
    assert infer[0] == 0 and infer[1] == 2 and infer[3] == 0, infer  # the 2nd and 3rd wait on the 1st and 2nd
    monkeypatch.setenv("NEUMF_FAST_CHECK_IDS", "sync")
    neumf_fast.ops._id_check.reset()
    torch.ops.neumf_fast_emu._reset_id_check()
    before = counters()
    with torch.no_grad():
        for _ in range(3):
            op(case.user, case.item, **case.kwargs)
    sync = [a - b for a, b in zip(counters(), before)]
    assert sync[0] == 3 and sync[1] == 0, sync


def test_cuda_host_code_has_no_hidden_sync():
    """The CUDA sources' host code reads nothing back from the device except through
    id_check.cuh (whose only wait is sync mode's cudaStreamSynchronize): no ``.cpu()``,
    ``.item()``, ``.tolist()`` or synchronising copy, and no per-call allocation of the id
    record.  On 1847267 the forward called ``err.cpu()`` after every launch with ids."""
    syncing = re.compile(r"\.cpu\(\)|\.item(<\w+>)?\(\)|\.tolist\(\)|cudaMemcpy\(|cudaDeviceSynchronize|"
                         r"cudaStreamSynchronize|cudaEventSynchronize|at::zeros\(\{4\}")
    found = {}
    for path in sorted((ROOT / "csrc" / "cuda").glob("*.cu*")):
        text = re.sub(r"//[^\n]*", "", path.read_text())  # comments may name them
        hits = [m.group(0) for m in syncing.finditer(text)]
        if path.name == "id_check.cuh":
            # the record, made once per device; the forward's wait on the previous call's event and
            # reset's; sync mode's wait
            assert sorted(hits) == ["at::zeros({4}", "cudaEventSynchronize", "cudaEventSynchronize",
                                    "cudaStreamSynchronize"], hits
        elif hits:
            found[path.name] = hits
    assert not found, found


# --- on a GPU only -------------------------------------------------------------------------

gpu_only = pytest.mark.skipif(not GPU_READY, reason="needs a GPU and the CUDA kernels built")


@gpu_only
@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
def test_opcheck(user_ids):
    case = make_case(batch=4, seq_len=3, user_dim=5, h_mf=2, h_mlp=3, user_ids=user_ids, item_ids=user_ids).on("cuda")
    torch.library.opcheck(torch.ops.neumf_fast.fused_input.default, (*case.args(h_mf=2, mode="mean"), True))


@gpu_only
@pytest.mark.parametrize("user_ids", [False, True], ids=["dense", "ids"])
def test_compile_fullgraph(user_ids):
    case = make_case(batch=33, seq_len=5, user_dim=37, h_mf=3, h_mlp=5, user_ids=user_ids, item_ids=user_ids).on("cuda")
    fn = lambda u, i, kw: neumf_fast.neumf_input(u, i, backend="cuda", **kw)
    eager = run(case, "cuda")
    gmf, mlp_in = torch.compile(fn, fullgraph=True)(case.user, case.item, case.kwargs)
    torch.testing.assert_close(gmf, eager["gmf"], atol=TOL, rtol=TOL)
    torch.testing.assert_close(mlp_in, eager["mlp_in"], atol=TOL, rtol=TOL)


@gpu_only
def test_cuda_graph_capture_with_ids():
    """Id input reads its bad-id record back after the call, which a CUDA graph capture forbids;
    the op must see the capture and check on the device instead, and replay the same result."""
    case = make_case(batch=33, seq_len=5, user_dim=16, h_mf=4, h_mlp=4, user_ids=True, item_ids=True,
                     requires_grad=False).on("cuda")
    args = (*case.args(h_mf=4), False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture, as torch.cuda.graphs asks
        eager = torch.ops.neumf_fast.fused_input(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = torch.ops.neumf_fast.fused_input(*args)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured[0], eager[0], atol=0, rtol=0)
    torch.testing.assert_close(captured[1], eager[1], atol=0, rtol=0)


@gpu_only
def test_table_update_captures_in_a_cuda_graph():
    """``table_update_`` advances its step and reads it on the device, with grids that depend on
    shapes only: a captured step replays as eager steps run, bit for bit (Adam's bias
    corrections follow the count)."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(50, 40, generator=g).cuda()
    ids, grad = torch.randint(0, 50, (64, 3), generator=g).cuda(), torch.randn(64, 40, generator=g).cuda()
    state = new_state("adam", table)
    eager, eager_state = table.clone(), [s.clone() for s in state]
    for _ in range(3):
        torch.ops.neumf_fast.table_update_(eager, *eager_state, ids, grad, 0, "adam", *_HYPER)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture, on copies, as torch.cuda.graphs asks
        torch.ops.neumf_fast.table_update_(table.clone(), *[s.clone() for s in state], ids, grad, 0, "adam", *_HYPER)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.ops.neumf_fast.table_update_(table, *state, ids, grad, 0, "adam", *_HYPER)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert int(state[2]) == 3
    torch.testing.assert_close(table, eager, atol=0, rtol=0)
    for actual, wanted in zip(state, eager_state):
        torch.testing.assert_close(actual, wanted, atol=0, rtol=0)


@gpu_only
def test_models_train_on_the_cuda_backend():
    """A NeuMF step on backend="cuda" matches the same step on the reference, and the two
    state_dicts have the same keys."""
    torch.manual_seed(0)
    fast = neumf_fast.NeuMF(50, 40, factors=8, layers=[16, 8], backend="cuda").cuda()
    ref = neumf_fast.NeuMF(50, 40, factors=8, layers=[16, 8], backend="torch").cuda()
    ref.load_state_dict(fast.state_dict())
    users, items = torch.randint(0, 50, (64,), device="cuda"), torch.randint(0, 40, (64,), device="cuda")
    for model in (fast, ref):
        model(users, items).sum().backward()
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5, msg=name)


# --- without a GPU ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(ON_GPU, reason="on a GPU the kernels themselves run")
@pytest.mark.skipif(os.environ.get("NEUMF_EMU_ASAN") == "1", reason="this is the run under the sanitizer")
def test_emulated_kernels_under_address_sanitizer(tmp_path):
    """The emulated parity cases (tests/test_parity.py's ``cuda-emu`` target) with odd sizes,
    masks, the unfused path, both table-gradient modes and fp16/bf16 with and without tensor
    cores, rerun with the emulator built under AddressSanitizer in a subprocess: an access past
    the end of any tensor (a ragged tile read too far, an id past its table) aborts with a
    report.  The other tests cannot see such reads: they land on other heap memory.  (Cases that
    raise are left out: a preloaded ASan cannot intercept C++ throws here.)"""
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not Path(libasan).is_file():
        pytest.skip("gcc's libasan is not installed")
    # the report goes to a file: the child's stderr is pytest's capture file, lost when ASan exits
    env = dict(os.environ, NEUMF_EMU_ASAN="1", LD_PRELOAD=libasan,
               ASAN_OPTIONS=f"detect_leaks=0:log_path={tmp_path / 'asan'}")
    selection = ("cuda-emu and (sizes_and_projection or masks_and_modes or too_wide or table_gradient or "
                 "index_dtypes or reduced_precision or boundary)")
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_parity.py"), str(Path(__file__)),
                           "-q", "-x", "-p", "no:cacheprovider", "-k", selection],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    reports = "".join(p.read_text()[:6000] for p in tmp_path.glob("asan*"))
    assert done.returncode == 0 and not reports, reports + done.stdout[-4000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_cuda_backend_says_why_it_cannot_run_on_cpu_tensors():
    case = make_case(batch=2, seq_len=2, user_dim=4, h_mf=2, h_mlp=2)
    # where the extension did not build (a failed build on a GPU machine), that is the reason given
    why = "the C++ extension neumf_fast._C is not built" if _library.EXTENSION_ERROR else \
        "the CUDA kernels run on CUDA tensors, these are on cpu"
    with pytest.raises(BackendUnavailable, match=why):
        neumf_fast.neumf_input(case.user, case.item, backend="cuda", **case.kwargs)
    dims = check_inputs(case.args())
    assert "cuda" not in neumf_fast.ops.available_backends(dims)


def _nvcc_command(source: Path, output: Path) -> list[str]:
    from torch.utils import cpp_extension

    torch_include = Path(torch.__file__).parent / "include"
    # C++17, the older of the standards torch's extension builds use (2.11: C++17, 2.13: C++20),
    # so that the GPU machine's torch 2.11 build compiles what this test compiles.
    cmd = [shutil.which("nvcc"), "-c", str(source), "-o", str(output), "-std=c++17", "-O3", "-Xcompiler", "-fPIC",
           "--threads", "2", f"-I{torch_include}", f"-I{torch_include / 'torch/csrc/api/include'}",
           f"-I{sysconfig.get_paths()['include']}", *cpp_extension.COMMON_NVCC_FLAGS,
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    if not (torch_include / "c10/cuda/impl/cuda_cmake_macros.h").exists():
        # A CPU wheel ships c10's CUDA headers but not this generated one (it only sets export
        # macros); c10 has a switch for building without it.
        cmd.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    return cmd


# Spills ptxas reports and that are accepted: the unfused fallback's pooling (rows too wide for
# shared memory) keeps a few bytes of its accumulator on the stack on sm_80, at most this many
# bytes of spill stores.  Any other kernel that spills fails the test.
_KNOWN_SPILLS = {("sm_80", "pool_rows_kernel"): 16}


def _spills(ptxas_log: str) -> list[str]:
    """The kernels ``ptxas -v`` reports with spill stores or loads past _KNOWN_SPILLS."""
    found, kernel = [], None
    for line in ptxas_log.splitlines():
        entry = re.search(r"Compiling entry function '(\w+)' for '(sm_\d+)'", line)
        if entry:
            kernel = entry.groups()
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if spill and kernel and (int(spill.group(1)) or int(spill.group(2))):
            allowed = max((n for (arch, name), n in _KNOWN_SPILLS.items() if arch == kernel[1] and name in kernel[0]),
                          default=0)
            if int(spill.group(1)) > allowed:
                found.append(f"{kernel[1]} {kernel[0]}: {line.strip()}")
    return found


def _sass(obj: Path, kernel: str) -> dict[str, str]:
    """{arch: SASS of the kernels whose name contains ``kernel``} of a compiled object, by
    Triton's cuobjdump."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip(f"no cuobjdump at {cuobjdump} to read the SASS with")
    sass = subprocess.run([str(cuobjdump), "-sass", str(obj)], capture_output=True, text=True, check=True).stdout
    out: dict[str, str] = {}
    for part in re.split(r"(?=code for sm_\d+)", sass):
        arch = re.match(r"code for (sm_\d+)", part)
        if arch:
            functions = re.split(r"\n\s*Function : ", part)[1:]
            out[arch.group(1)] = "\n".join(f for f in functions if kernel in f.split("\n", 1)[0])
    return out


_FENCED = r"\b(?:ATOMG?|MEMBAR|FENCE)\.[\w.]+"


def _check_scatter_sass(obj: Path) -> None:
    """fused_input_backward.cu: the table scatter has only fence-free reductions (``RED``: no
    ``ATOM``, no ``MEMBAR``), 4-wide for fp32 on sm_90."""
    scatter = _sass(obj, "scatter_atomic_kernel")
    assert set(scatter) == {"sm_80", "sm_90"} and all(scatter.values()), "no scatter kernel in the SASS"
    for arch, text in scatter.items():
        assert re.search(r"\bREDG?\.E\.ADD\.F32", text), f"{arch}: no fp32 RED in the table scatter"
        fenced = re.findall(_FENCED, text)
        assert not fenced, f"{arch}: fenced or value-returning atomics in the table scatter: {sorted(set(fenced))}"
    assert "F32x4" in scatter["sm_90"], "sm_90: the fp32 scatter does not use the 4-wide vector reduction"


def _check_table_update_sass(obj: Path) -> None:
    """table_update.cu: the row update (one owner warp per row) has no atomic, reduction or
    fence at all, and no kernel of the file has a fence (the key kernel's bad-id flag is a
    relaxed exchange)."""
    update = _sass(obj, "update_rows_kernel")
    assert set(update) == {"sm_80", "sm_90"} and all(update.values()), "no update kernel in the SASS"
    for arch, text in update.items():
        found = re.findall(r"\b(?:ATOMG?|REDG?|MEMBAR|FENCE)\.[\w.]+", text)
        assert not found, f"{arch}: atomics or fences in the row update: {sorted(set(found))}"
    for arch, text in _sass(obj, "").items():
        fences = re.findall(r"\b(?:MEMBAR|FENCE)\.[\w.]+", text)
        assert not fences, f"{arch}: fences in table_update.cu: {sorted(set(fences))}"


_SASS_CHECKS = {"fused_input_backward.cu": _check_scatter_sass, "table_update.cu": _check_table_update_sass}


@pytest.mark.slow
@pytest.mark.skipif(ON_GPU, reason="on a GPU machine the extension build compiles these for real")
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed, so the CUDA sources cannot be compiled")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda src: src.name)
def test_cuda_sources_compile_for_sm80_and_sm90(tmp_path, source):
    """Each .cu file under csrc/cuda/ compiles with nvcc -c for sm_80 and sm_90 against torch's
    headers, with the flags torch's extension build uses, and without a warning from our code;
    ptxas reports no spill past _KNOWN_SPILLS; and the SASS checks of _SASS_CHECKS hold (the
    table scatter's fence-free reductions, table_update's atomic-free row update)."""
    assert CUDA_SOURCES, "no CUDA sources found"
    obj = tmp_path / (source.stem + ".o")
    done = subprocess.run([*_nvcc_command(source, obj), "-Xptxas", "-v"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, cwd=ROOT, timeout=600)
    ours = [line for line in done.stdout.splitlines() if "csrc/cuda" in line and ("warning" in line or "error" in line)]
    assert done.returncode == 0 and not ours, f"{source.name}: exit {done.returncode}\n" + "\n".join(
        ours or done.stdout.splitlines()[-30:])
    assert obj.stat().st_size > 0
    spills = _spills(done.stdout)
    assert not spills, f"{source.name}: spills:\n" + "\n".join(spills)
    if source.name in _SASS_CHECKS:
        _SASS_CHECKS[source.name](obj)
