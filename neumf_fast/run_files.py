"""What a run directory holds and how it is written: a file is replaced only by a complete one
(``save_atomic``), and a directory holding a run is never reused silently."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

RUN_FILES = ("best.pt", "last.pt", "metrics.json", "split.npz")


class RunExistsError(FileExistsError):
    """The run directory holds a run, and neither resuming nor overwriting was asked for."""


def holds_run(out_dir) -> bool:
    """Whether ``out_dir`` holds (part of) a training run."""
    return any((Path(out_dir) / name).exists() for name in RUN_FILES)


def fresh_run_dir(out_dir) -> Path:
    """``out_dir`` if it holds no run, else the first of ``out_dir-2``, ``out_dir-3``, ... that doesn't."""
    out_dir = Path(out_dir)
    candidate, n = out_dir, 1
    while holds_run(candidate):
        n += 1
        candidate = out_dir.with_name(f"{out_dir.name}-{n}")
    return candidate



def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename: a crash or a
    full disk mid-write never replaces a good file with a partial one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)



def plot_curves(history: list[dict], path: Path, k: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_hr) = plt.subplots(1, 2, figsize=(9, 3.5))
    trained = [h for h in history if h["loss"] is not None]
    ax_loss.plot([h["epoch"] for h in trained], [h["loss"] for h in trained], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training log loss", title="loss")
    ax_hr.plot(epochs, [h[f"hr@{k}"] for h in history], marker="o", label=f"HR@{k}")
    ax_hr.plot(epochs, [h[f"ndcg@{k}"] for h in history], marker="s", label=f"NDCG@{k}")
    ax_hr.set(xlabel="epoch", title="validation")
    ax_hr.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


