"""Compiles every Triton kernel that ``backend="triton"`` ships for the benchmark shapes and for
ML-20M NeuMF training (and the table update's, for each optimizer), ahead of time for sm_80 and
sm_90, without a GPU, and checks the SASS.

The launches are the launchers' own: each shape's forward and backward run through the
registered ops on CPU tensors with the kernels replaced by recorders, so the block sizes,
warps, constexprs, argument types and alignments compiled here are exactly what the launcher
would pass on a GPU (the batch size is ``do_not_specialize``: a small B compiles the same
kernel as the benchmark's).  Each recorded launch goes through Triton's own binder and
``triton.compile`` for a ``GPUTarget`` (the JIT's path, minus the driver), and the cubin
through Triton's bundled ``cuobjdump -sass``.  Fails on:

- any local-memory store (``STL``: a register spill) in any kernel;
- any ``MEMBAR`` or fence in a kernel with the table scatter (relaxed atomics are a plain ``RED``).

Prints one row per kernel (arch, registers, STL, MEMBAR, RED, compile seconds) and the summed
sm_90 compile time of the kernels a NeuMF fp32 training run needs.  Exit status 1 on a failure.
Run by tests/test_gpu_offline.py in a subprocess (the test session sets TRITON_INTERPRET=1).

    python tests/triton_aot.py [--arch 90] [--only neumf]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("NEUMF_FAST_TRITON_AUTOTUNE", "0")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
# a fresh cache: every compile below is timed, none is read from an earlier run
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="neumf_fast_aot_")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from neumf_fast.ops import _triton_kernels as K  # noqa: E402
from neumf_fast.ops import triton_backend as TB  # noqa: E402

ML20M_USERS, ML20M_ITEMS = 138_493, 26_744  # MovieLens-20M; NeuMF's defaults: factors 8, layers (64, 32, 16, 8)
KERNELS = ("fused_forward_kernel", "fused_backward_rows_kernel", "segment_sum_kernel", "chunk_sum_kernel",
           "table_update_kernel")


class _Recorder:
    def __init__(self, name, launches):
        self.name, self.launches = name, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.name, args, kwargs))


@contextlib.contextmanager
def recorded_launches():
    """Replaces the kernels the launchers call by recorders; yields the list of launches."""
    launches = []
    original = TB.K
    TB.K = SimpleNamespace(**{n: _Recorder(n, launches) for n in KERNELS})
    try:
        yield launches
    finally:
        TB.K = original


def _call(args, save, deterministic=False):
    """One forward (and, with ``save``, one backward) of the Triton ops on ``args``; with
    ``save="update"``, one ``table_update_`` (its launcher: CPU tensors pass no device check)."""
    if save == "update":
        TB._triton_update.launch(TB.K.table_update_kernel, *args)
        return
    ops = torch.ops.neumf_fast
    gmf, mlp_in, *saved = ops.triton_fused_input(*args, save)
    if save:
        ops.triton_fused_input_backward(torch.ones_like(gmf), torch.ones_like(mlp_in), *args, *saved, [True] * 6,
                                        deterministic)


def _dense(B, L, D, dtype):
    """The benchmark's dense call: the design's four nn.Linear (H_mf = H_mlp = D, biases), a mask."""
    f = lambda *s: torch.zeros(*s, dtype=dtype)
    return (f(B, L, D), torch.ones(B, L, dtype=torch.bool), None, None, f(B, D), None,
            f(2 * D, D), f(2 * D), f(2 * D, D), f(2 * D), D, "sum")


def _ids(B, L, D, rows, dtype):
    """The benchmark's id call: user ids with padding 0, item ids, both tables of ``rows`` rows
    (D-wide), the same projections."""
    f = lambda *s: torch.zeros(*s, dtype=dtype)
    return (torch.ones(B, L, dtype=torch.int64), None, f(rows, D), 0, torch.ones(B, dtype=torch.int64), f(rows, D),
            f(2 * D, D), f(2 * D), f(2 * D, D), f(2 * D), D, "sum")


def _neumf(B, dtype):
    """NeuMF on ML-20M with its defaults: one table per side of factors + layers[0] // 2 = 40
    columns, no projection, h_mf = 8 (models.NeuMF.forward's call)."""
    f = lambda *s: torch.zeros(*s, dtype=dtype)
    return (torch.ones(B, 1, dtype=torch.int64), None, f(ML20M_USERS, 40), None, torch.ones(B, dtype=torch.int64),
            f(ML20M_ITEMS, 40), None, None, None, None, 8, "sum")


def _update(optimizer, rows, D, dtype):
    """A ``table_update_`` of a table of ``rows`` x ``D`` with its ``optimizer`` state: 16 ids
    with padding 0 (the size of the batch is not specialised)."""
    from neumf_fast.ops.table_update import new_state

    table = torch.zeros(rows, D, dtype=dtype)
    return (table, *new_state(optimizer, table), torch.ones(16, 1, dtype=torch.int64), torch.zeros(16, D, dtype=dtype),
            0, optimizer, 1e-3, 0.9, 0.999, 1e-8, 0.0)


def cases():
    """(name, op arguments, save, deterministic); ``save="update"``: a ``table_update_`` call.  B
    is small: it is not specialised."""
    out = []
    for dt, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        out += [(f"design B=4096 L=10 D=128 {dt} train", _dense(16, 10, 128, dtype), True, False),
                (f"serving B=16 L=10 D=128 {dt} infer", _dense(16, 10, 128, dtype), False, False),
                (f"B=65536 L=50 D=64 dense {dt} train", _dense(16, 50, 64, dtype), True, False),
                (f"B=65536 L=50 D=64 ids {dt} train", _ids(16, 50, 64, 1_000_000, dtype), True, False)]
    out += [("neumf ML-20M fp32 train", _neumf(16, torch.float32), True, False),
            ("neumf ML-20M fp32 eval", _neumf(16, torch.float32), False, False),
            ("neumf ML-20M fp32 train deterministic", _neumf(16, torch.float32), True, True)]
    for optimizer in ("sgd", "adam", "rowwise_adagrad"):
        out += [(f"table_update {optimizer} ML-20M D=40 fp32", _update(optimizer, ML20M_ITEMS, 40, torch.float32),
                 "update", False),
                (f"table_update {optimizer} D=128 bf16", _update(optimizer, 1000, 128, torch.bfloat16), "update", False)]
    return out


def launches_of(args, save, deterministic):
    with recorded_launches() as launches:
        _call(args, save, deterministic)
    return launches


def compile_launch(name, args, kwargs, arch):
    """(CompiledKernel, seconds): the launch's kernel compiled for sm_<arch> as the JIT would."""
    fn = getattr(K, name)
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                              options=options.__dict__)
    return compiled, time.perf_counter() - start, str(specialization) + str(options)


_CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def sass(compiled) -> str:
    if "sass" in compiled.asm:
        return compiled.asm["sass"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return subprocess.run([str(_CUOBJDUMP), "-sass", f.name], capture_output=True, text=True, check=True).stdout


def _registers(compiled) -> str:
    """Registers a thread, from the cubin's ELF notes via cuobjdump's resource usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([str(_CUOBJDUMP), "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)", out)
    return m.group(1) if m else "?"


def sass_counts(text: str) -> dict:
    ops = re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", text, flags=re.M)
    count = lambda pred: sum(1 for op in ops if pred(op))
    return dict(instructions=len(ops), STL=count(lambda o: o.startswith("STL")),
                MEMBAR=count(lambda o: o.startswith(("MEMBAR", "FENCE", "ERRBAR", "CCTL.IVALL"))),
                RED=count(lambda o: o.startswith(("RED.", "REDG"))),  # not REDUX (a warp reduction)
                ATOM=count(lambda o: o.startswith(("ATOM.", "ATOMG"))))


def jit_key(name, args, kwargs, arch=90) -> str:
    """The key under which Triton's JIT caches the kernel of this launch (its binder's
    specialization and options), for sm_<arch>: a new key is a new compile."""
    fn = getattr(K, name)
    binder = create_function_from_signature(fn.signature, fn.params, make_backend(GPUTarget("cuda", arch, 32)))
    _bound, specialization, options = binder(*args, **kwargs)
    return f"{name} {specialization} {options}"


def neumf_training_run_keys() -> tuple[set, set]:
    """The kernels a NeuMF fp32 training run on ML-20M-sized tables compiles: train.py's own
    epoch loop (batches sliced out of the shuffled samples, a ragged last batch of 37) with
    backward and Adam, then scoring under no_grad, through ``models.NeuMF(backend="triton")``;
    the kernels are recorders (CPU tensors, no GPU), keyed as the JIT keys its cache.  Also the
    keys ``neumf_fast.warmup`` compiled on an 8-row batch before the run."""
    from neumf_fast import models, train

    from neumf_fast.ops import dispatch

    # CPU tensors stand in for CUDA ones; nothing is launched
    dispatch.BACKENDS["triton"]._reasons = lambda dims: []
    model = models.NeuMF(ML20M_USERS, ML20M_ITEMS, backend="triton")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = 3 * 256 + 37
    g = torch.Generator().manual_seed(0)
    samples = (torch.randint(0, ML20M_USERS, (n,), generator=g), torch.randint(0, ML20M_ITEMS, (n,), generator=g),
               torch.randint(0, 2, (n,), generator=g).float())
    import neumf_fast

    with recorded_launches() as warm:
        neumf_fast.warmup(model, (samples[0][:8], samples[1][:8]))
    with recorded_launches() as launches:
        train.train_epoch(model, optimizer, samples, 256, desc="count")
        with torch.no_grad():
            model(torch.zeros(100, dtype=torch.int64), torch.arange(100))
    keys = lambda ls: {jit_key(name, args, kwargs) for name, args, kwargs in ls}
    return keys(launches), keys(warm)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count-neumf", action="store_true", help="print the NeuMF training run's kernel keys")
    parser.add_argument("--arch", type=int, action="append", help="default: 90 and 80")
    parser.add_argument("--only", default="", help="only the cases whose name contains this")
    opts = parser.parse_args()
    if opts.count_neumf:
        keys, warm = neumf_training_run_keys()
        for key in sorted(keys):
            print("KEY", key[:400])
        print(f"VARIANTS {len(keys)}")
        print(f"NOT_WARMED {len(keys - warm)}")  # kernels the run compiled that warmup() had not
        return 0
    failures, seen, neumf_seconds = 0, {}, 0.0
    for arch in opts.arch or (90, 80):
        for case, args, save, deterministic in cases():
            if opts.only not in case:
                continue
            for name, largs, kwargs in launches_of(args, save, deterministic):
                try:
                    compiled, seconds, key = compile_launch(name, largs, kwargs, arch)
                except Exception as e:  # report every failing kernel, not just the first
                    failures += 1
                    while e.__cause__ is not None:  # the innermost error names the line
                        e = e.__cause__
                    print(f"FAILED sm_{arch} {case} {name}: {type(e).__name__}: {str(e)[-3000:]}")
                    continue
                first = (arch, name, key) not in seen
                seen.setdefault((arch, name, key), seconds)
                if arch == 90 and case.startswith("neumf ML-20M fp32") and "deterministic" not in case and first:
                    neumf_seconds += seconds
                c = sass_counts(sass(compiled))
                regs = _registers(compiled)
                bad = c["STL"] > 0 or (name == "fused_backward_rows_kernel" and c["MEMBAR"] > 0)
                failures += bad
                print(f"{'FAILED' if bad else 'ok':6} sm_{arch} {case:40} {name:27} warps={kwargs.get('num_warps', '-')} "
                      f"BLOCK_B={kwargs.get('BLOCK_B', '-')} BLOCK_K={kwargs.get('BLOCK_K', '-')} STL={c['STL']} "
                      f"MEMBAR={c['MEMBAR']} RED={c['RED']} ATOM={c['ATOM']} regs={regs} "
                      f"{'compiled' if first else 'cached'} {seconds:.1f}s", flush=True)
    print(f"{len(seen)} distinct kernels; NeuMF fp32 training run kernels, summed sm_90 compile: "
          f"{neumf_seconds:.1f}s; {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
