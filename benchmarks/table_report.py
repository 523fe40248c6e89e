"""The markdown of a ``benchmarks/test_bench_table_optim.py`` run (pytest-benchmark JSON files of
one machine): each interleaved comparison with its ratios, against issue 32's targets.

    python benchmarks/table_report.py benchmarks/results/table-optim-cpu-<time>.json [more.json]
"""

from __future__ import annotations

import argparse
import json

# (what is compared, faster side, slower side) -> the ratio issue 32 asks for
TARGETS = {
    ("ML-1M-sized, batch 256", "trainer_adam", "trainer_dense"): 1.5,
    ("ML-1M-sized, batch 256", "trainer_adam", "plain_dense"): 4.0,
    ("ML-1M-sized, batch 256", "trainer_adam", "plain_sparse_adam"): 1.0,
    ("ML-1M-sized, batch 8192", "trainer_adam", "trainer_dense"): 1.15,
    ("ML-20M", "trainer_adam", "trainer_dense"): 1.3,
    ("step", "fused_rowwise_adagrad", "fbgemm_rowwise_adagrad"): 1.0,
}


def _ratio_rows(shape: str, times: dict, unit: str) -> list[str]:
    rows = []
    for (where, fast, slow), target in TARGETS.items():
        if (where in shape or where == "step" and unit == "ms") and fast in times and slow in times:
            ratio = times[slow] / times[fast]
            rows.append(f"| {shape} | {slow} / {fast} | **{ratio:.2f}x** | >= {target:g}x: "
                        f"{'met' if ratio >= target else '**not met**'} |")
    return rows


def main(paths: list[str], command: str) -> None:
    runs = [json.load(open(p)) for p in paths]
    mi = runs[0]["machine_info"]
    flags = mi.get("cpu", {}).get("flags", [])
    print(f"# Table optimizers against dense ones: {paths[0].rsplit('/', 1)[-1]}\n")
    print(f"- date: {runs[0]['datetime']}")
    print(f"- machine: {mi.get('cpu', {}).get('brand_raw', '?')}, {mi.get('cpu', {}).get('count', '?')} logical CPUs, "
          f"AVX2: {'avx2' in flags}, AVX-512: {'avx512f' in flags}")
    print(f"- command: `{command}`")
    ratios = []
    for run in runs:
        for b in run["benchmarks"]:
            e = b["extra_info"]
            if "paired" in e:
                times = {n: t["seconds"] for n, t in e["paired"].items()}
                print(f"\n## {e['shape']}: one epoch, interleaved in 40 blocks ({e['threads']} thread(s))\n")
                print(f"| provider | seconds (with sampling {e['sampling_s']:.2f} s) | validation HR@10 | written-out step |")
                print("|---|---|---|---|")
                for n, t in e["paired"].items():
                    print(f"| {n} | {t['seconds']:.2f} | {t['valid_hr10']:.4f} | {t['written_out_step']} |")
                ratios += _ratio_rows(e["shape"], times, "s")
            elif "ms_per_step" in e:
                times = e["ms_per_step"]
                print(f"\n## {e['shape']}: one training step, medians of {e['rounds']} interleaved rounds "
                      f"({e['threads']} thread(s){', fbgemm_gpu ' + e['fbgemm_gpu'] if 'fbgemm_gpu' in e else ''})\n")
                print("| provider | ms per step |")
                print("|---|---|")
                for n, ms in times.items():
                    print(f"| {n} | {ms:.2f} |")
                ratios += _ratio_rows(e["shape"], times, "ms")
    if ratios:
        print("\n## Against issue 32's targets\n")
        print("| run | slower / faster | ratio | target |")
        print("|---|---|---|---|")
        print("\n".join(ratios))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+")
    p.add_argument("--command", default="bash dev.sh bench table")
    a = p.parse_args()
    main(a.paths, a.command)
