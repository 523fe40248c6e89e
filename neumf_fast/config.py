"""``TrainConfig``: everything that defines a training run, and what a resumed run may change."""

from __future__ import annotations

import dataclasses
import math

from . import models


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run.  Defaults are the paper's setup (He et al. 2017, §4)."""

    model: str = "neumf"  # gmf | mlp | neumf | seq
    dataset: str = "synthetic"
    epochs: int = 20
    batch_size: int = 256
    lr: float | None = None  # None: 0.001 at batch 256, scaled by sqrt(batch / 256)
    factors: int = 8
    layers: tuple[int, ...] = models.PAPER_LAYERS
    neg: int = 4
    optimizer: str | None = None  # adam | sgd; None: adam, or sgd with pretraining (as the paper)
    backend: str = "auto"
    device: str = "cpu"
    seed: int = 0
    split_seed: int = 0  # the evaluation candidates
    eval_negatives: int = 99
    k: int = 10
    history_len: int = 20  # seq: how many of the latest training items form the user
    new_users: float = 0.0  # seq: share of users held out of training, for the new-user evaluation
    pretrain: tuple[str, str] | None = None  # GMF and MLP checkpoints for NeuMF
    alpha: float = 0.5
    threshold: float | None = None  # keep ratings >= threshold as positives
    cuda_graphs: bool = False  # capture the whole training step in a CUDA graph (train_step.py); CUDA only
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler; CUDA only)
    table_optimizer: str = "dense"  # dense | adam | rowwise_adagrad | sgd (table_optimizer.py)
    table_lr: float | None = None  # None: table_optimizer.DEFAULT_LR of that optimizer

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        # Adam's effective step barely grows with batch size; square-root scaling keeps larger
        # batches stable while still converging in about the paper's number of epochs
        return 0.001 * math.sqrt(self.batch_size / 256)

    def optimizer_name(self) -> str:
        return self.optimizer or ("sgd" if self.pretrain else "adam")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["layers"] = tuple(d["layers"])
        if d.get("pretrain") is not None:
            d["pretrain"] = tuple(d["pretrain"])
        return cls(**d)


# What a resumed run may change: they do not define the run, only how long and where it trains.
RESUME_FREE = ("epochs", "backend", "device", "cuda_graphs")


def resumed_config(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    return dataclasses.replace(saved, **{name: getattr(given, name) for name in RESUME_FREE})


def config_differences(saved: TrainConfig, given: TrainConfig) -> list[str]:
    """Fields that define a run and differ (``RESUME_FREE`` may differ; with pretraining the
    shapes come from the pretrained models)."""
    free = set(RESUME_FREE) | ({"factors", "layers"} if saved.pretrain else set())
    return [f"{f.name}: {getattr(saved, f.name)!r} then, {getattr(given, f.name)!r} now"
            for f in dataclasses.fields(TrainConfig)
            if f.name not in free and getattr(saved, f.name) != getattr(given, f.name)]


