"""The GPU check's one table, from the rows of one run (``gpu_table``).

Rows are pytest-benchmark's (``extra_info`` + ``stats``) from ``test_bench_gpu.py`` (the op and
the copy bandwidth), ``first_call.py`` (the first calls), ``test_bench_train.py`` (epochs at batch 4096, eager and in a
CUDA graph) and ``test_bench_scale.py`` (epochs at ML-20M scale, batch 2^20).

Every cell the grid expects and the run did not produce reads "not measured": a provider that
ran out of time, could not run, or a step that was not run.  A cell is a number only where a row
gave one.  Ratios are eager's median over the provider's (above 1: faster than the user's
code); the share of copy bandwidth is the bytes the op must move (``extra_info["bytes"]``)
over its median, against the device-to-device copy measured in the same run.
"""

from __future__ import annotations

NOT_MEASURED = "not measured"

# test_bench_gpu.SHAPES, in its order, with what the table calls them
GPU_SHAPES = {
    "design_B4096_L10_D128": "design B=4096 L=10 D=128",
    "serving_B16_L10_D128": "serving B=16 L=10 D=128",
    "B65536_L50_D64": "B=65536 L=50 D=64 dense",
    "ids_B65536_L50_D64_N1M": "B=65536 L=50 D=64 ids (1M rows)",
    "neumf_ml20m_B1048576": "ML-20M NeuMF B=2^20 ids, no projection",
}
DTYPES = ("float32", "bfloat16")
DIRECTIONS = ("forward", "forward+backward")
COLUMNS = ("eager", "compiled", "triton", "cuda")
HEADER = ("| case | dtype | direction | eager (user's code) | torch.compile of it | triton | cuda |\n"
          "|---|---|---|---|---|---|---|")


def _time(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def _op_cell(provider: str, rows: dict, moved: int | None, copy_rate: float | None) -> str:
    if provider not in rows:
        return NOT_MEASURED
    median = rows[provider]
    parts = [_time(median)]
    if provider != "eager" and "eager" in rows:
        parts.append(f"{rows['eager'] / median:.2f}x")
    if moved and copy_rate:
        parts.append(f"{100 * moved / median / copy_rate:.0f}% of copy")
    return ", ".join(parts)


def _rate_cell(rate: float | None, base: float | None) -> str:
    if rate is None:
        return NOT_MEASURED
    return f"{rate / 1e6:.2f}M samples/s" + (f", {rate / base:.2f}x" if base else "")


def gpu_table(benchmarks: list[dict], auto_backend: str | None = None) -> str:
    """The table as markdown: notes, then one table whose last line ends the text.
    ``auto_backend`` is the kernel neumf_fast's training runs took (``backend="auto"``); their
    rows go in that column (and say so), or in neither kernel's column when it is not known."""
    op: dict[tuple, dict[str, float]] = {}
    moved: dict[tuple, int] = {}
    first: dict[tuple[str, str], dict] = {}
    epochs: dict[tuple[str, str], dict[str, float]] = {}
    copy_rate, modes = None, set()
    for b in benchmarks:
        e, median = b.get("extra_info", {}), b.get("stats", {}).get("median")
        provider, direction = e.get("provider"), e.get("direction")
        if provider == "copy" and median:
            copy_rate = e["bytes"] / median
        elif direction == "first call":  # first_call.py's rows
            first[(e.get("shape", ""), provider)] = e
        elif str(direction).startswith("train epoch") and "samples_per_s" in e:
            epochs.setdefault((e["shape"], e["dtype"]), {})[provider] = e["samples_per_s"]
        elif e.get("shape") in GPU_SHAPES and provider in COLUMNS and median:
            key = (e["shape"], e["dtype"], direction)
            op.setdefault(key, {})[provider] = median
            moved[key] = e.get("bytes")
            if provider == "compiled":
                modes.add(e.get("compile_mode", "?"))
        elif e.get("shape") == "serving_B16_L10_D128" and str(provider).endswith("_graph") and median:
            op.setdefault(("serving_B16_L10_D128", "float32", "forward in a CUDA graph"), {})[
                provider.removesuffix("_graph")] = median
            moved[("serving_B16_L10_D128", "float32", "forward in a CUDA graph")] = e.get("bytes")
    lines = ["Cells: median time, x = eager's time over it (above 1 is faster than the user's code), % of the "
             "device-to-device copy bandwidth "
             + (f"({copy_rate / 1e9:.0f} GB/s, measured in this run)" if copy_rate else "(copy bandwidth not measured)")
             + f". torch.compile mode: {', '.join(sorted(modes)) or NOT_MEASURED}. First calls: fresh process, empty "
               "Triton and Inductor caches; first pass / steady pass. Training: samples/s, x = over the plain loop.",
             "", HEADER]
    for shape, label in GPU_SHAPES.items():
        for dtype in DTYPES:
            directions = DIRECTIONS + (("forward in a CUDA graph",) if shape == "serving_B16_L10_D128"
                                       and dtype == "float32" else ())
            for direction in directions:
                key = (shape, dtype, direction)
                rows = op.get(key, {})
                cells = " | ".join(_op_cell(p, rows, moved.get(key), copy_rate) if direction != "forward in a CUDA graph"
                                   or p != "compiled" else "n/a" for p in COLUMNS)
                lines.append(f"| {label} | {dtype} | {direction} | {cells} |")
    for what, label in (("first call: forward", "first call: design forward (compile included)"),
                        ("first call: training", "first call: NeuMF training steps + evaluation forward")):
        cells = []
        for p in COLUMNS:
            row = first.get((what, p))
            if p == "compiled":
                cells.append(NOT_MEASURED)
            elif row is None or "first_s" not in row:
                cells.append(NOT_MEASURED if row is None else f"{NOT_MEASURED} ({row.get('error', '?')[:60]})")
            else:
                cells.append(f"{row['first_s']:.2f} s (then {_time(row['steady_s'])})")
        lines.append(f"| {label} | float32 | first call | {' | '.join(cells)} |")
    kernel_column = auto_backend if auto_backend in ("triton", "cuda") else None
    for (shape, dtype), providers in sorted(epochs.items()):
        for plain, fused, how in (("eager", "fused", "eager step"), ("eager_graphs", "fused_graphs", "step in a CUDA graph"),
                                  ("no_fused_op", "fused_op", "eager step")):
            if plain not in providers and fused not in providers:
                continue
            base = providers.get(plain)
            ours = _rate_cell(providers.get(fused), base)
            cells = {"eager": _rate_cell(base, None), "compiled": NOT_MEASURED, "triton": NOT_MEASURED,
                     "cuda": NOT_MEASURED}
            if kernel_column:
                cells[kernel_column] = ours
            where = f"neumf_fast, backend auto = {kernel_column}" if kernel_column else f"neumf_fast (auto): {ours}"
            lines.append(f"| train epoch, {shape}, {how} ({where}) | {dtype} | train | "
                         + " | ".join(cells[p] for p in COLUMNS) + " |")
    return "\n".join(lines)
