"""Test HR@10/NDCG@10 of NeuMF with each table optimizer against dense Adam, on the ML-1M-sized
synthetic set, the paper's defaults (factors 8, layers 64-32-16-8, batch 256, 4 negatives),
over several seeds and the same epochs; the rest of the model trains with Adam (lr 0.001) in
every run.  Writes ``<out>.json`` (every run's test metrics) and ``<out>.md`` (means and spreads).

    python benchmarks/table_quality.py --epochs 10 --seeds 0 1 2 \\
        --out benchmarks/results/table-optim-quality-cpu-2026-12-06
    python benchmarks/table_quality.py --epochs 2 --seeds 0 --only rowwise_adagrad --table-lr 0.01 0.05 0.2 \\
        --out /tmp/lr-sweep      # an lr sweep for one optimizer
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from neumf_fast.config import TrainConfig
from neumf_fast.parallel import configure_threads
from neumf_fast.table_optimizer import CHOICES, DEFAULT_LR
from neumf_fast.train import fit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", choices=CHOICES, nargs="+", default=list(CHOICES))
    p.add_argument("--table-lr", type=float, nargs="+", default=None, help="lrs to sweep (default: DEFAULT_LR)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    configure_threads(None, 256)
    runs = []
    for name in args.only:
        for lr in args.table_lr or [None]:
            for seed in args.seeds:
                config = TrainConfig(epochs=args.epochs, seed=seed, table_optimizer=name, table_lr=lr)
                start = time.perf_counter()
                with tempfile.TemporaryDirectory() as out:
                    result = fit(config, out, progress=False, log=False)
                test = result["test"]["candidates"]
                runs.append({"table_optimizer": name, "table_lr": lr if lr is not None else DEFAULT_LR.get(name),
                             "seed": seed, "hr@10": test["hr@10"], "ndcg@10": test["ndcg@10"],
                             "best_epoch": result["best_valid"]["epoch"], "seconds": round(time.perf_counter() - start, 1)})
                print(json.dumps(runs[-1]), flush=True)
    meta = {"command": "python benchmarks/table_quality.py " + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items() if v is not None),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
            "epochs": args.epochs, "dataset": "synthetic (ML-1M-sized)", "runs": runs}
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = [f"# Table optimizers: test quality ({meta['date']})", "", f"`{meta['command']}`", "",
             f"torch {meta['torch']}, {meta['threads']} thread(s); {args.epochs} epochs, seeds {args.seeds}; "
             "test HR@10/NDCG@10 over 100 candidates of the best validation epoch.", "",
             "| table optimizer | table lr | HR@10 mean | HR@10 per seed | NDCG@10 mean | s per run |", "|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["table_optimizer"], r["table_lr"]) for r in runs):
        rows = [r for r in runs if (r["table_optimizer"], r["table_lr"]) == key]
        lines.append(f"| {key[0]} | {key[1] if key[0] != 'dense' else '(Adam 0.001)'} | "
                     f"{statistics.mean(r['hr@10'] for r in rows):.4f} | "
                     f"{', '.join(format(r['hr@10'], '.4f') for r in rows)} | {statistics.mean(r['ndcg@10'] for r in rows):.4f} | "
                     f"{statistics.mean(r['seconds'] for r in rows):.0f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
