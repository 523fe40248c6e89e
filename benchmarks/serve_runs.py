"""Synthetic runs for the serving benchmark: a checkpoint of a randomly initialised model and a
split of random interactions, of a real dataset's size, written as ``neumf-fast train`` writes
them (``best.pt`` + ``split.npz``), so ``neumf-fast recommend`` and ``Run.load`` take them as
they are.  Scoring speed and memory do not depend on the weights being trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from neumf_fast.checkpoints import CHECKPOINT_FORMAT, build_model
from neumf_fast.config import TrainConfig
from neumf_fast.data.split import Split

ML1M = dict(num_users=6040, num_items=3706, interactions=1_000_209)
ML20M = dict(num_users=138_493, num_items=26_744, interactions=20_000_263)


def make_run(out: Path, num_users: int, num_items: int, interactions: int, seed: int = 0) -> Path:
    """Writes ``out/best.pt`` and ``out/split.npz`` (the paper's NeuMF: factors 8, layers
    64-32-16-8) and returns ``out``; about ``interactions`` distinct training pairs."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, num_users * num_items, interactions, dtype=np.int64))
    user, item = (keys // num_items).astype(np.int64), (keys % num_items).astype(np.int64)
    none = np.full(num_users, -1, np.int64)
    fingerprint = f"synthetic-serve-{num_users}x{num_items}x{interactions}-{seed}"
    split = Split(train_user=user, train_item=item, train_time=np.arange(len(user), dtype=np.int64), valid=none,
                  test=none, valid_candidates=np.full((num_users, 1), -1, np.int64),
                  test_candidates=np.full((num_users, 1), -1, np.int64), user_ids=np.arange(num_users, dtype=np.int64),
                  item_ids=np.arange(num_items, dtype=np.int64), fingerprint=fingerprint, name="synthetic-serve")
    split.save(out / "split.npz")
    config = TrainConfig(seed=seed)
    model = build_model(config, num_users, num_items)
    torch.save({"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(config), "model": model.state_dict(),
                "epoch": 0, "history": [], "best": None, "data_fingerprint": fingerprint, "num_users": num_users,
                "num_items": num_items}, out / "best.pt")
    return out


def model_bytes(run_dir: Path) -> int:
    state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)["model"]
    return sum(t.numel() * t.element_size() for t in state.values())
