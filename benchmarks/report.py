"""Turn a pytest-benchmark JSON of the fused-op benchmarks into a markdown table with the
ratios of every provider to the eager reference (medians from the same run).

``--gpu-table`` prints instead the GPU check's one table (``gpu_table``): every shape, dtype and
direction of ``test_bench_gpu.py`` with the user's eager code, ``torch.compile`` of it, Triton
and CUDA, their ratios to eager and their share of the copy bandwidth; then the first calls
and the training epochs.  Its inputs may be pytest-benchmark JSON files or the JSONL rows that
``test_bench_gpu.py`` appends as it goes (``NEUMF_FAST_BENCH_ROWS``).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from gpu_table import gpu_table

# The paired ratios (eager / cpu_kernel) the CPU kernel is held to (issue 29), by (direction, shape).
PAIRED_TARGETS = {
    ("fwd_bwd", "B4096_L10_D128"): 1.10,
    ("fwd", "B4096_L10_D128"): 1.20,
    ("fwd", "demo_B16_L10_D128"): 2.0,
    ("fwd_bwd", "demo_B16_L10_D128"): 1.5,
    ("fwd_bwd", "ids_B4096_L50_D64_N100k"): 3.0,
    ("fwd", "model_B16_L10_D128"): 1.0,
}


def main(paths: list[str], command: str = "bash dev.sh bench op") -> None:
    runs = [json.load(open(p)) for p in paths]
    data = {**runs[0], "benchmarks": [b for r in runs for b in r["benchmarks"]]}  # one machine, one session
    path = paths[0]
    mi = data["machine_info"]
    rows = defaultdict(dict)
    moved = {}  # (direction, shape, dtype) -> bytes the op must move (GPU benchmarks)
    copy_rate = None
    paired = []
    for b in data["benchmarks"]:
        e = b["extra_info"]
        if "paired" in e:  # providers interleaved in one timed run: their own section
            paired.append(e)
            continue
        if e.get("provider") == "copy":
            copy_rate = e["bytes"] / b["stats"]["median"]
            continue
        key = (e["direction"], e["shape"], e.get("dtype", ""))
        rows[key][e["provider"]] = b["stats"]["median"]
        if "bytes" in e:
            moved[key] = e["bytes"]
    providers = sorted({p for r in rows.values() for p in r}, key=lambda p: (p != "eager", p))
    print(f"# Benchmark results: {path.rsplit('/', 1)[-1]}\n")
    print(f"- date: {data['datetime']}")
    print(f"- machine: {mi.get('cpu', {}).get('brand_raw', '?')}, {mi.get('cpu', {}).get('count', '?')} logical CPUs, "
          f"torch threads {mi.get('torch_threads')}, ATen CPU capability {mi.get('cpu_capability')}, "
          f"GPU {mi.get('cuda_device') or 'none'}")
    print(f"- versions: python {mi.get('python_version')}, torch {mi.get('torch')}, triton {mi.get('triton')}")
    if "malloc" in mi:
        print(f"- malloc: {mi['malloc']}")
    print(f"- command: `{command}` (pytest benchmarks/... --benchmark-json=...; python benchmarks/report.py ...); "
          "times are medians of the timed rounds\n")
    ratio_columns = [p for p in providers if p != "eager"]
    if rows:  # (a run of the paired benchmarks alone has none)
        print("| direction | shape | dtype | " + " | ".join(f"{p} (ms)" for p in providers)
              + "".join(f" | eager/{p}" for p in ratio_columns) + " |")
        print("|" + "---|" * (3 + len(providers) + len(ratio_columns)))
    for (direction, shape, dtype), r in sorted(rows.items()):
        times = " | ".join(f"{r[p] * 1e3:.3f}" if p in r else "-" for p in providers)
        ratios = " | ".join(f"{r['eager'] / r[p]:.2f}x" if p in r and "eager" in r else "-"
                            for p in providers if p != "eager")
        print(f"| {direction} | {shape} | {dtype} | {times} | {ratios} |")
    extras = [(b["extra_info"]) for b in data["benchmarks"]
              if "samples_per_s" in b["extra_info"] or "trace" in b["extra_info"]]
    if extras:
        print("\n## Throughput and time to quality\n")
        for e in extras:
            if "samples_per_s" in e:
                hr = f", validation HR@10 {e['valid_hr10']:.4f} after it" if "valid_hr10" in e else ""
                print(f"- {e['direction']}, {e['shape']}, {e['dtype']}, {e['provider']}: {e['samples_per_s']:,.0f} samples/s "
                      f"({e['samples']:,} samples{hr})")
            else:
                print(f"- {e['direction']}, {e['shape']}, {e['provider']}: {e['train_seconds']:.1f} s of training to "
                      f"validation HR@10 >= {e['target_hr10']} (popularity: {e['popularity_hr10']}); "
                      f"(epoch, seconds, HR@10): {e['trace']}")
    if paired:
        print("\n## Paired runs (the baseline and the kernel interleaved in one run: the ratios to read)\n")
        # torch.compile of the user's code is a third interleaved side where the run has it
        compiled = any("compiled" in e["paired"] for e in paired)
        sides = ["eager", "compiled", "cpu_kernel"] if compiled else ["eager", "cpu_kernel"]
        print("| direction | shape | dtype | interleaved | " + " | ".join(sides)
              + (" | eager/compiled" if compiled else "") + " | eager/cpu_kernel | target |")
        print("|" + "---|" * (4 + len(sides) + len(sides)))
        for e in sorted(paired, key=lambda e: (e["direction"], e["shape"])):
            for timing in e["paired"].values():  # results written before the field was renamed
                timing.setdefault("seconds", timing.get("epoch_s"))
            timings = e["paired"]
            if "blocks" in e:  # a training epoch: seconds, with the shared sampling in both
                how = f"{e['blocks']} blocks (+ sampling {e['sampling_s']:.2f} s in each)"
                cell = lambda t: f"{t['seconds']:.2f} s"
            else:  # an op: median of the rounds
                how = f"{e['rounds']} rounds of {e['calls_per_round']} calls"
                cell = lambda t: f"{t['seconds'] * 1e3:.3f} ms"
            cells = " | ".join(cell(timings[p]) if p in timings else "-" for p in sides)
            ratio = lambda p: f"**{timings['eager']['seconds'] / timings[p]['seconds']:.2f}x**" if p in timings else "-"
            target = PAIRED_TARGETS.get((e["direction"], e["shape"]))
            met = "" if target is None else (
                f">= {target:.2f}x: " + ("met" if timings["eager"]["seconds"] / timings["cpu_kernel"]["seconds"] >= target
                                         else "**not met**"))
            print(f"| {e['direction']} | {e['shape']} | {e['dtype']} | {how} | {cells} | "
                  + (f"{ratio('compiled')} | " if compiled else "") + f"{ratio('cpu_kernel')} | {met} |")
        hr = [e for e in paired if "valid_hr10" in e["paired"]["eager"]]
        for e in hr:
            print(f"\n{e['shape']}: validation HR@10 after the epoch {e['paired']['eager']['valid_hr10']:.4f} "
                  f"(eager) and {e['paired']['cpu_kernel']['valid_hr10']:.4f} (cpu_kernel).")
    if moved and copy_rate:
        print("\n## Achieved bandwidth (minimum bytes moved / median time)\n")
        print(f"Device-to-device copy, measured in the same run: {copy_rate / 1e9:.0f} GB/s.\n")
        print("| direction | shape | dtype | " + " | ".join(f"{p} GB/s (% of copy)" for p in providers) + " |")
        print("|" + "---|" * (3 + len(providers)))
        for key, r in sorted(rows.items()):
            if key not in moved:
                continue
            cells = " | ".join(f"{moved[key] / r[p] / 1e9:.0f} ({100 * moved[key] / r[p] / copy_rate:.0f}%)"
                               if p in r else "-" for p in providers)
            print(f"| {key[0]} | {key[1]} | {key[2]} | {cells} |")


def read_rows(paths: list[str]) -> list[dict]:
    """Every benchmark row in ``paths`` (pytest-benchmark JSON, or JSONL rows); a file that is
    empty or unreadable (a step stopped before it wrote) is left out."""
    rows = []
    for path in paths:
        try:
            text = Path(path).read_text()
            if path.endswith(".jsonl"):
                rows += [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                rows += json.loads(text)["benchmarks"]
        except (OSError, ValueError, KeyError):
            continue
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON files of one session, merged")
    parser.add_argument("--command", default="bash dev.sh bench op", help="the command that produced them")
    parser.add_argument("--gpu-table", action="store_true", help="the GPU check's one table (JSON or JSONL inputs)")
    parser.add_argument("--auto-backend", default=None,
                        help="with --gpu-table: the backend neumf_fast's training runs took (backend='auto')")
    args = parser.parse_args()
    if args.gpu_table:
        print(gpu_table(read_rows(args.json), auto_backend=args.auto_backend))
    else:
        main(args.json, args.command)
