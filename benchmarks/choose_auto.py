"""Write what ``backend="auto"`` takes on a GPU, from a GPU benchmark run: for each shape class
and dtype, the kernel with the lowest median time, at forward+backward (forward alone for the
``serving`` class, which is inference).  The table goes into ``neumf_fast/ops/auto_table.json``
(or ``--out``), keyed by the GPU's name, keeping other GPUs' entries.

    python benchmarks/choose_auto.py RESULTS/gpu-<date>-kernels.json [--out neumf_fast/ops/auto_table.json]

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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="a pytest-benchmark JSON from benchmarks/test_bench_gpu.py on a GPU")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "neumf_fast/ops/auto_table.json")
    args = parser.parse_args(argv)
    run = json.loads(Path(args.json).read_text())
    gpu = run.get("machine_info", {}).get("cuda_device")
    if not gpu:
        raise SystemExit(f"{args.json}: not a GPU run (machine_info has no cuda_device)")
    choices = choose(run["benchmarks"])
    if not choices:
        raise SystemExit(f"{args.json}: no rows with both a kernel provider and a batch size")
    table = json.loads(args.out.read_text()) if args.out.exists() else {"choices": {}}
    table["choices"][gpu] = choices
    table["source"] = {**(table.get("source") or {}), gpu: f"{Path(args.json).name}, {run.get('datetime')}"}
    args.out.write_text(json.dumps(table, indent=2) + "\n")
    print(f"auto on {gpu}: " + ", ".join(f"{k} -> {v}" for k, v in choices.items()))


if __name__ == "__main__":
    main()
