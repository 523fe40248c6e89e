"""Write what ``backend="auto"`` takes on a GPU, from a GPU benchmark run: for each shape class
and dtype, the kernel that is fastest over the class's shapes, at forward+backward (forward
alone for the ``serving`` class, which is inference).  The table goes into
``neumf_fast/ops/auto_table.json`` (or ``--out``), keyed by the GPU's name, keeping other GPUs'
entries.

    python benchmarks/choose_auto.py RESULTS/gpu-<date>-kernels.json [more JSON or JSONL files] \
        [--out neumf_fast/ops/auto_table.json]

Several files are read as one run (a pytest-benchmark JSON, or the JSONL rows that
``test_bench_gpu.py`` appends as each benchmark ends); an empty or unreadable one (a step that ran
out of time) is named and left out.

A class holds several benchmark shapes (``dense``: the design's B=4096 and B=65536), so kernels
are compared shape by shape, never one shape's time against another's: on the shapes where every
kernel of the class was timed, the kernel with the lowest geometric mean of its time over the
fastest kernel's takes the class.  A class where fewer than two kernels were timed on a common
shape gets no entry: ``auto`` then keeps its order without a measurement (the CUDA kernels for
eager calls), rather than crowning the only kernel that happened to finish.

Rows come from ``benchmarks/test_bench_gpu.py``: ``extra_info`` carries ``provider`` (``triton``,
``cuda``, ...), ``shape``, ``direction``, ``dtype``, ``batch`` and ``ids``.  Only the project's
kernels compete; the baselines are not backends.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from neumf_fast.ops.dispatch import class_of

KERNELS = ("cuda", "triton")  # in PREFERENCE's order: a tie goes to the first


def choose(benchmarks: list[dict], why: list[str] | None = None) -> dict[str, str]:
    """``{"<class> <dtype>": fastest kernel}`` from pytest-benchmark rows; ``why``, if given,
    gets one line per class saying what was compared."""
    times: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))  # key -> shape -> kernel
    for b in benchmarks:
        e = b.get("extra_info", {})
        if e.get("provider") not in KERNELS or "batch" not in e:
            continue
        cls = class_of(int(e["batch"]), bool(e.get("ids")))
        if e.get("direction") != ("forward" if cls == "serving" else "forward+backward"):
            continue
        times[f"{cls} {e['dtype']}"][e.get("shape", str(e["batch"]))][e["provider"]] = b["stats"]["median"]
    choices = {}
    for key, by_shape in sorted(times.items()):
        kernels = sorted({k for t in by_shape.values() for k in t}, key=KERNELS.index)
        common = sorted(shape for shape, t in by_shape.items() if len(t) == len(kernels))
        if len(kernels) < 2 or not common:
            if why is not None:
                why.append(f"{key}: no entry, {'only ' + ', '.join(kernels) if len(kernels) < 2 else 'no shape'} "
                           f"timed on a common shape")
            continue
        score = {k: math.exp(sum(math.log(by_shape[s][k] / min(by_shape[s].values())) for s in common) / len(common))
                 for k in kernels}
        choices[key] = min(kernels, key=lambda k: (score[k], KERNELS.index(k)))
        if why is not None:
            why.append(f"{key} -> {choices[key]} over {', '.join(common)} (time over the fastest, geometric mean: "
                       + ", ".join(f"{k} {score[k]:.2f}" for k in kernels) + ")")
    return choices


def _read_runs(paths: list[str]) -> dict[str, dict]:
    """``{path: {"machine_info", "datetime", "benchmarks"}}``: a pytest-benchmark JSON as it is,
    a JSONL file of rows (``test_bench_gpu.py``'s) as one run whose rows carry the GPU's name."""
    runs = {}
    for path in paths:
        try:
            text = Path(path).read_text()
            if path.endswith(".jsonl"):
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
                if not rows:
                    raise ValueError("no rows")
                runs[path] = {"machine_info": {"cuda_device": rows[0]["extra_info"].get("device")},
                              "datetime": rows[0].get("datetime"), "benchmarks": rows}
            else:
                runs[path] = json.loads(text)
        except (OSError, ValueError, KeyError) as e:
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
    why: list[str] = []
    choices = choose([b for run in runs.values() for b in run["benchmarks"]], why)
    for line in why:
        print(f"auto on {gpu}: {line}")
    if not choices:
        raise SystemExit(f"{', '.join(args.json)}: no class where two kernels were timed on the same shape")
    table = json.loads(args.out.read_text()) if args.out.exists() else {"choices": {}}
    table["choices"][gpu] = choices
    source = "; ".join(f"{Path(p).name}, {run.get('datetime')}" for p, run in runs.items())
    table["source"] = {**(table.get("source") or {}), gpu: source}
    args.out.write_text(json.dumps(table, indent=2) + "\n")
    print(f"auto on {gpu}, written to {args.out}: " + ", ".join(f"{k} -> {v}" for k, v in choices.items()))


if __name__ == "__main__":
    main()
