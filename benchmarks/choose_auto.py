"""Write what ``backend="auto"`` takes on a GPU, from a GPU benchmark run: for each shape class
and dtype, the kernel with the lowest median time, at forward+backward (forward alone for the
``serving`` class, which is inference).  The table goes into ``neumf_fast/ops/auto_table.json``
(or ``--out``), keyed by the GPU's name, keeping other GPUs' entries.

    python benchmarks/choose_auto.py RESULTS/gpu-<date>-kernels_cuda.json RESULTS/gpu-<date>-kernels_triton.json \
        [--out neumf_fast/ops/auto_table.json]

Several JSON files are read as one run (gpu_check.sh times each kernel in its own process); an
empty or unreadable one (a step that ran out of time) is named and left out.

Rows come from ``benchmarks/test_bench_gpu.py``: ``extra_info`` carries ``provider`` (``triton``,
``cuda``, ...), ``direction``, ``dtype``, ``batch`` and ``ids``.  Only the project's kernels compete;
the baselines are not backends.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from neumf_fast.ops.dispatch import class_of

KERNELS = ("triton", "cuda")


def choose(benchmarks: list[dict]) -> dict[str, str]:
    """``{"<class> <dtype>": fastest kernel}`` from pytest-benchmark rows."""
    best: dict[str, tuple[float, str]] = {}
    for b in benchmarks:
        e = b.get("extra_info", {})
        if e.get("provider") not in KERNELS or "batch" not in e:
            continue
        cls = class_of(int(e["batch"]), bool(e.get("ids")))
        if e.get("direction") != ("forward" if cls == "serving" else "forward+backward"):
            continue
        key = f"{cls} {e['dtype']}"
        median = b["stats"]["median"]
        if key not in best or median < best[key][0]:
            best[key] = (median, e["provider"])
    return {key: provider for key, (_, provider) in sorted(best.items())}


def _read_runs(paths: list[str]) -> dict[str, dict]:
    runs = {}
    for path in paths:
        try:
            runs[path] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            print(f"{path}: left out, not a readable benchmark JSON ({type(e).__name__}: {e})")
    return runs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON files from benchmarks/test_bench_gpu.py on one GPU")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "neumf_fast/ops/auto_table.json")
    args = parser.parse_args(argv)
    runs = _read_runs(args.json)
    gpus = {run.get("machine_info", {}).get("cuda_device") for run in runs.values()}
    if len(gpus) != 1 or None in gpus:
        raise SystemExit(f"{', '.join(args.json)}: need runs on one GPU, found {sorted(map(str, gpus)) or 'no runs'}")
    gpu = gpus.pop()
    choices = choose([b for run in runs.values() for b in run["benchmarks"]])
    if not choices:
        raise SystemExit(f"{', '.join(args.json)}: no rows with both a kernel provider and a batch size")
    table = json.loads(args.out.read_text()) if args.out.exists() else {"choices": {}}
    table["choices"][gpu] = choices
    source = "; ".join(f"{Path(p).name}, {run.get('datetime')}" for p, run in runs.items())
    table["source"] = {**(table.get("source") or {}), gpu: source}
    args.out.write_text(json.dumps(table, indent=2) + "\n")
    print(f"auto on {gpu}: " + ", ".join(f"{k} -> {v}" for k, v in choices.items()))


if __name__ == "__main__":
    main()
