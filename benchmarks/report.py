"""Turn a pytest-benchmark JSON of the fused-op benchmarks into a markdown table with the
ratios of every provider to the eager reference (medians from the same run)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str, command: str = "bash dev.sh bench op") -> None:
    data = json.load(open(path))
    mi = data["machine_info"]
    rows = defaultdict(dict)
    for b in data["benchmarks"]:
        e = b["extra_info"]
        rows[(e["direction"], e["shape"], e.get("dtype", ""))][e["provider"]] = b["stats"]["median"]
    providers = sorted({p for r in rows.values() for p in r}, key=lambda p: (p != "eager", p))
    print(f"# Benchmark results: {path.rsplit('/', 1)[-1]}\n")
    print(f"- date: {data['datetime']}")
    print(f"- machine: {mi.get('cpu', {}).get('brand_raw', '?')}, {mi.get('cpu', {}).get('count', '?')} logical CPUs, "
          f"torch threads {mi.get('torch_threads')}, ATen CPU capability {mi.get('cpu_capability')}, "
          f"GPU {mi.get('cuda_device') or 'none'}")
    print(f"- versions: python {mi.get('python_version')}, torch {mi.get('torch')}, triton {mi.get('triton')}")
    print(f"- command: `{command}` (pytest benchmarks/... --benchmark-json=...; python benchmarks/report.py ...); "
          "times are medians of the timed rounds\n")
    print("| direction | shape | dtype | " + " | ".join(f"{p} (ms)" for p in providers)
          + " | " + " | ".join(f"eager/{p}" for p in providers if p != "eager") + " |")
    print("|" + "---|" * (3 + 2 * len(providers) - 1))
    for (direction, shape, dtype), r in sorted(rows.items()):
        times = " | ".join(f"{r[p] * 1e3:.3f}" if p in r else "-" for p in providers)
        ratios = " | ".join(f"{r['eager'] / r[p]:.2f}x" if p in r and "eager" in r else "-"
                            for p in providers if p != "eager")
        print(f"| {direction} | {shape} | {dtype} | {times} | {ratios} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
