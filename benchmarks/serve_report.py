"""Markdown of a serving benchmark JSON (``benchmarks/test_bench_serve.py``): medians per case
with the ratio of each case's baseline to every provider, the paired (interleaved) cases, and the
memory rows."""

from __future__ import annotations

import argparse
import json


def main(path: str, command: str) -> None:
    data = json.load(open(path))
    mi = data["machine_info"]
    print(f"# Serving benchmark: {path.rsplit('/', 1)[-1]}\n")
    print(f"- date: {data['datetime']}")
    print(f"- machine: {mi.get('cpu', {}).get('brand_raw', '?')}, {mi.get('cpu', {}).get('count', '?')} logical CPUs "
          f"(a shared VM: other jobs may have been running), ATen CPU capability {mi.get('cpu_capability')}")
    print(f"- versions: python {mi.get('python_version')}, torch {mi.get('torch')}")
    print(f"- command: `{command}`; times are medians of the timed rounds\n")
    cases: dict[str, list] = {}
    for b in data["benchmarks"]:
        cases.setdefault(b["extra_info"]["case"], []).append(b)
    for case, rows in cases.items():
        if case == "peak-rss":
            print("## peak RSS of `neumf-fast recommend` (subprocess)\n")
            print("| users x items | interactions | users scored | peak RSS (MiB) | python+torch+neumf_fast import (MiB) "
                  "| model (MiB) | above import and model (MiB) | wall (s) |")
            print("|---|---|---|---|---|---|---|---|")
            for b in rows:
                e = b["extra_info"]
                mib = lambda v: f"{v / 2**20:,.0f}"
                print(f"| {e['shape']} | {e['interactions']:,} | {e['users']} | {mib(e['peak_rss'])} | {mib(e['import_rss'])} "
                      f"| {mib(e['model_bytes'])} | {mib(e['above_model'])} | {b['stats']['median']:.1f} |")
            print()
            continue
        if "paired" in rows[0]["extra_info"]:
            _paired_table(case, rows[0]["extra_info"])
            continue
        base = next((b for b in rows if b["extra_info"].get("baseline")), rows[0])
        scale = lambda b: b["extra_info"].get("scale", 1.0)
        base_t = base["stats"]["median"] * scale(base)
        print(f"## {case} ({rows[0]['extra_info']['shape']}, threads {rows[0]['extra_info']['threads']})\n")
        print(f"| provider | time (ms) | {base['extra_info']['provider']} / provider | notes |")
        print("|---|---|---|---|")
        for b in rows:
            e, t = b["extra_info"], b["stats"]["median"] * scale(b)
            notes = []
            if "scaled_from" in e:
                notes.append(f"timed on {e['scaled_from']}, scaled x{e['scale']:.2f}")
            if "top10_overlap_with_fp32" in e:
                notes.append(f"top-10 overlap with fp32 {e['top10_overlap_with_fp32']:.4f}, same item at each rank "
                             f"{e['same_item_at_rank']:.4f}")
            if "max_abs_error_vs_score" in e:
                notes.append(f"max abs error vs score {e['max_abs_error_vs_score']:.2e}")
            print(f"| {e['provider']} | {t * 1e3:,.3f} | {base_t / t:.2f}x | {'; '.join(notes)} |")
        print()


def _paired_table(case: str, e: dict) -> None:
    """Providers timed in alternating rounds of one run: the median per call and the ratios."""
    paired, base = e["paired"], e["baseline_provider"]
    first = next(iter(paired.values()))
    print(f"## {case} ({e['shape']}, threads {e['threads']}; {first['rounds']} rounds of {first['calls_per_round']} "
          f"call(s) each, alternating: the ratios to read)\n")
    print(f"| provider | median time (ms) | {base} / provider |")
    print("|---|---|---|")
    for provider, t in paired.items():
        print(f"| {provider} | {t['seconds'] * 1e3:,.3f} | {paired[base]['seconds'] / t['seconds']:.2f}x |")
    print()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("json")
    p.add_argument("--command", default="bash dev.sh bench serve")
    a = p.parse_args()
    main(a.json, a.command)
