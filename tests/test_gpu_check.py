"""The GPU check's pieces that run without a GPU: its one table (benchmarks/gpu_table.py, through
benchmarks/report.py --gpu-table) on synthetic pytest-benchmark rows with known times, the grid
it expects against the benchmark's shapes, and the NeuMF baseline against the op it is timed
against."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_table  # noqa: E402
from baselines import PlainNeuMFInput, neumf_input_twin  # noqa: E402
from neumf_fast.ops import _library  # noqa: E402

DESIGN = "design_B4096_L10_D128"


def _row(provider, median, shape=DESIGN, dtype="float32", direction="forward", **extra):
    return {"extra_info": dict(provider=provider, shape=shape, dtype=dtype, direction=direction, **extra),
            "stats": {"median": median}}


# copy: 4e9 bytes in 1 ms = 4000 GB/s; the op moves 1e8 bytes: eager 100 us (25% of copy),
# triton 50 us (2.00x, 50%), cuda 25 us (4.00x, 100%); torch.compile did not finish
ROWS = [_row("copy", 1e-3, shape="1 GiB", dtype="uint8", direction="copy", bytes=4_000_000_000),
        _row("eager", 100e-6, bytes=100_000_000), _row("triton", 50e-6, bytes=100_000_000),
        _row("cuda", 25e-6, bytes=100_000_000),
        _row("eager", 2e-3, dtype="bfloat16", direction="forward+backward", bytes=2_000_000_000),
        _row("compiled", 5e-3, dtype="bfloat16", direction="forward+backward", bytes=2_000_000_000,
             compile_mode="default"),
        # first calls, as first_call.py writes them
        _row("triton", 9.0, shape="first call: forward", direction="first call", first_s=4.25, steady_s=40e-6),
        _row("cuda", 0.5, shape="first call: forward", direction="first call", first_s=0.01, steady_s=30e-6),
        _row("triton", 9.0, shape="first call: training", direction="first call", error="RuntimeError: boom"),
        # training epochs, as test_bench_train.py and test_bench_scale.py write them
        _row("eager", 4.0, shape="ML-1M-sized, batch 4096", direction="train epoch", samples_per_s=1_000_000),
        _row("fused", 2.0, shape="ML-1M-sized, batch 4096", direction="train epoch", samples_per_s=2_000_000),
        _row("fused_graphs", 0.3, shape="ML-1M-sized, batch 4096", direction="train epoch",
             samples_per_s=15_000_000)]


def _cells(table: str, case: str, dtype: str, direction: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:3] == [case, dtype, direction]:
            return cells[3:]
    raise AssertionError(f"no row {case!r} {dtype} {direction} in:\n{table}")


def test_the_table_gives_ratios_and_bandwidth_share_and_never_invents_a_number():
    table = gpu_table.gpu_table(ROWS, auto_backend="cuda")
    design = gpu_table.GPU_SHAPES[DESIGN]
    eager, compiled, triton, cuda = _cells(table, design, "float32", "forward")
    assert eager == "100.0 µs, 25% of copy"
    assert compiled == "not measured"
    assert triton == "50.0 µs, 2.00x, 50% of copy"
    assert cuda == "25.0 µs, 4.00x, 100% of copy"
    eager, compiled, triton, cuda = _cells(table, design, "bfloat16", "forward+backward")
    assert (eager, compiled) == ("2.00 ms, 25% of copy", "5.00 ms, 0.40x, 10% of copy")
    assert triton == cuda == "not measured"
    assert "torch.compile mode: default" in table and "(4000 GB/s, measured in this run)" in table
    # every other case of the grid is there, and says "not measured" in every cell
    grid = [(label, dtype, direction) for label in gpu_table.GPU_SHAPES.values() for dtype in gpu_table.DTYPES
            for direction in gpu_table.DIRECTIONS]
    for case in grid:
        if case not in ((design, "float32", "forward"), (design, "bfloat16", "forward+backward")):
            assert _cells(table, *case) == ["not measured"] * 4, case
    assert _cells(table, "first call: design forward (compile included)", "float32", "first call") == \
        ["not measured", "not measured", "4.25 s (then 40.0 µs)", "0.01 s (then 30.0 µs)"]
    eager, compiled, triton, cuda = _cells(table, "first call: NeuMF training steps + evaluation forward", "float32",
                                           "first call")
    assert triton.startswith("not measured (RuntimeError: boom") and cuda == "not measured"
    train = _cells(table, "train epoch, ML-1M-sized, batch 4096, eager step (neumf_fast, backend auto = cuda)",
                   "float32", "train")
    assert train == ["1.00M samples/s", "not measured", "not measured", "2.00M samples/s, 2.00x"]
    graph = _cells(table, "train epoch, ML-1M-sized, batch 4096, step in a CUDA graph (neumf_fast, backend auto = cuda)",
                   "float32", "train")
    assert graph == ["not measured", "not measured", "not measured", "15.00M samples/s"]  # no plain-graph row
    assert table.splitlines()[-1].startswith("| train epoch")  # the table ends the text


def test_no_copy_measurement_means_no_share():
    table = gpu_table.gpu_table([r for r in ROWS if r["extra_info"]["provider"] != "copy"])
    assert _cells(table, gpu_table.GPU_SHAPES[DESIGN], "float32", "forward")[2] == "50.0 µs, 2.00x"
    assert "copy bandwidth not measured" in table and "%" not in table.split("\n\n", 1)[1]


def test_report_reads_json_and_jsonl_rows_and_skips_an_empty_file(tmp_path):
    (tmp_path / "kernels.json").write_text(json.dumps({"benchmarks": ROWS[:4]}))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[4:]))
    (tmp_path / "empty.json").write_text("")
    out = subprocess.run([sys.executable, str(BENCH / "report.py"), "--gpu-table", "--auto-backend", "cuda",
                          *(str(tmp_path / n) for n in ("kernels.json", "rows.jsonl", "empty.json"))],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == gpu_table.gpu_table(ROWS, auto_backend="cuda")


def test_the_table_s_grid_is_the_benchmark_s():
    import test_bench_gpu

    assert list(gpu_table.GPU_SHAPES) == list(test_bench_gpu.SHAPES)
    assert sorted(test_bench_gpu.RUN_ORDER) == sorted(test_bench_gpu.SHAPES)
    assert list(gpu_table.DTYPES) == list(test_bench_gpu.DTYPES)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_the_neumf_baseline_computes_what_the_op_does(backend):
    """The ML-20M row times the user's two nn.Embedding against neumf_input on the same tables:
    they must compute the same thing (fp32, summed in the same order: exact to 1e-6)."""
    if backend == "cpu" and _library.EXTENSION_ERROR is not None:
        pytest.skip(_library.EXTENSION_ERROR)
    torch.manual_seed(0)
    plain = PlainNeuMFInput(50, 30, 4, 6)
    user, item = torch.randint(0, 50, (37, 1)), torch.randint(0, 30, (37,))
    expected = plain(user, item)
    actual = neumf_input_twin(plain, backend)(user, item)
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert re.fullmatch(r"\d+", str(actual[1].shape[1])) and actual[1].shape[1] == 12
