"""The front page's picture: NeuMF training throughput, neumf_fast against the same model in plain
PyTorch, from the committed benchmark results (no timing here).

- CPU: ``test_epoch_paired`` of the latest ``throughput-cpu-*.json`` (the two loops interleaved over
  one epoch, the ratio to read on a VM whose speed drifts), batch 256 and 8192, float32.
- GPU: ``test_epoch`` of the latest ``gpu-*-train.json`` (batch 4096, fp32 and bf16 autocast), the
  plain model eager and in a CUDA graph against neumf_fast in a CUDA graph.

Samples/s = the epoch's samples / its seconds.  The title of each panel names the machine and
the date read from the result file, and the figure names the files it was drawn from.

    python benchmarks/plot_front_page.py            # writes docs/images/throughput.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def latest(pattern: str) -> Path:
    """The newest result of a suite: names end in an ISO date and time, so they sort by time."""
    found = sorted(RESULTS.glob(pattern))
    if not found:
        raise SystemExit(f"plot_front_page.py: no {pattern} in {RESULTS}")
    return found[-1]


def machine(run: dict) -> str:
    info = run["machine_info"]
    if info.get("cuda_device"):
        return f"one {info['cuda_device']}"
    return f"{info['cpu']['count']}-core {info['cpu']['brand_raw']} CPU"


def cpu_bars(run: dict) -> list[tuple[str, float, float]]:
    """(label, plain PyTorch samples/s, neumf_fast samples/s) per batch size, from the paired rows."""
    bars = []
    for b in run["benchmarks"]:
        e = b["extra_info"]
        if "paired" in e and e["direction"] == "train epoch, paired":
            batch = e["shape"].rsplit(" ", 1)[-1]
            bars.append((f"batch {batch}, fp32", e["samples"] / e["paired"]["eager"]["seconds"],
                         e["samples"] / e["paired"]["cpu_kernel"]["seconds"]))
    return sorted(bars, key=lambda t: int(t[0].split()[1].rstrip(",")))


def gpu_bars(run: dict) -> list[tuple[str, dict[str, float]]]:
    rows: dict[str, dict[str, float]] = {}
    for b in run["benchmarks"]:
        e = b["extra_info"]
        if e.get("direction") == "train epoch" and "samples_per_s" in e:
            dtype = "fp32" if e["dtype"] == "float32" else "bf16"
            rows.setdefault(f"batch {e['shape'].rsplit(' ', 1)[-1]}, {dtype}", {})[e["provider"]] = e["samples_per_s"]
    return sorted(rows.items(), key=lambda kv: kv[0].endswith("bf16"))


def main(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpu_file, gpu_file = latest("throughput-cpu-*.json"), latest("gpu-*-train.json")
    cpu, gpu = json.loads(cpu_file.read_text()), json.loads(gpu_file.read_text())
    fig, (ax_cpu, ax_gpu) = plt.subplots(1, 2, figsize=(11, 3.6))

    labels = [label for label, _, _ in cpu_bars(cpu)]
    plain = [p / 1e6 for _, p, _ in cpu_bars(cpu)]
    fast = [f / 1e6 for _, _, f in cpu_bars(cpu)]
    x = range(len(labels))
    ax_cpu.bar([i - 0.2 for i in x], plain, 0.4, label="plain PyTorch", color="#999999")
    ax_cpu.bar([i + 0.2 for i in x], fast, 0.4, label="neumf_fast", color="#d62728")
    for i, (p, f) in enumerate(zip(plain, fast)):
        ax_cpu.text(i + 0.2, f, f"{f / p:.2f}×", ha="center", va="bottom")
    ax_cpu.set_xticks(list(x), labels)
    ax_cpu.set_title(f"CPU: {machine(cpu)}, {cpu['datetime'][:10]}\n(interleaved in one run)", fontsize=10)

    rows = gpu_bars(gpu)
    series = [("eager", "plain PyTorch", "#999999"), ("eager_graphs", "plain PyTorch, CUDA graph", "#555555"),
              ("fused_graphs", "neumf_fast, CUDA graph", "#d62728")]
    width = 0.8 / len(series)
    for k, (provider, label, color) in enumerate(series):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(rows))]
        values = [r[provider] / 1e6 for _, r in rows]
        ax_gpu.bar(xs, values, width, label=label, color=color)
        if provider == "fused_graphs":
            for xi, (_, r) in zip(xs, rows):
                ax_gpu.text(xi, r[provider] / 1e6, f"{r[provider] / r['eager']:.1f}× eager", ha="center", va="bottom")
    ax_gpu.set_xticks(list(range(len(rows))), [name for name, _ in rows])
    ax_gpu.set_title(f"GPU: {machine(gpu)}, {gpu['datetime'][:10]}\n(one run each)", fontsize=10)

    for ax in (ax_cpu, ax_gpu):
        ax.set_ylabel("training samples/s (millions)")
        ax.legend(fontsize=8, loc="upper left")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.45)  # room for the legend above the bars
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle("NeuMF, one training epoch on ML-1M-sized data (5M samples, Adam, negative sampling included)",
                 fontsize=11)
    fig.text(0.5, 0.005, f"from benchmarks/results/{cpu_file.name} and {gpu_file.name}", ha="center", fontsize=8,
             color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out} from {cpu_file.name} and {gpu_file.name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "throughput.png")
    main(parser.parse_args().out)
