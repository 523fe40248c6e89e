"""Checkpoints: the model a ``TrainConfig`` describes, and loading it back from ``best.pt`` or
``last.pt`` (writing is ``run_files.save_atomic``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from . import models
from .config import TrainConfig

CHECKPOINT_FORMAT = 1


def build_model(config: TrainConfig, num_users: int, num_items: int) -> torch.nn.Module:
    """The model ``config`` describes, initialised from ``config.seed`` (the caller's global
    RNG state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _build_model(config, num_users, num_items)


def _build_model(config: TrainConfig, num_users: int, num_items: int) -> torch.nn.Module:
    if config.model == "gmf":
        return models.GMF(num_users, num_items, config.factors, backend=config.backend)
    if config.model == "mlp":
        return models.MLP(num_users, num_items, config.layers, backend=config.backend)
    if config.model == "neumf":
        if config.pretrain:
            gmf, mlp = (load_model(p, backend=config.backend)[0] for p in config.pretrain)
            if not isinstance(gmf, models.GMF) or not isinstance(mlp, models.MLP):
                raise ValueError(f"--pretrain takes a GMF checkpoint then an MLP checkpoint, got "
                                 f"{type(gmf).__name__} and {type(mlp).__name__}")
            return models.NeuMF.from_pretrained(gmf, mlp, config.alpha, backend=config.backend)
        return models.NeuMF(num_users, num_items, config.factors, config.layers, backend=config.backend)
    if config.model == "seq":
        return models.SequenceNeuMF(num_items, config.factors, history_items=num_items, backend=config.backend)
    raise ValueError(f"unknown model {config.model!r}; choose one of {', '.join(models.MODELS)}")


def model_config(config: TrainConfig, model) -> TrainConfig:
    """The config that rebuilds this model's shapes (pretraining fixes factors and layers)."""
    if isinstance(model, models.NeuMF):
        return dataclasses.replace(config, factors=model.factors, layers=tuple(model.layers_spec))
    return config


def load_checkpoint(path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory; pass the checkpoint inside it, e.g. {Path(path) / 'best.pt'}") from None
    except Exception:  # torch raises several types for a truncated or foreign file, with advice that does not apply
        raise ValueError(f"{path}: not a readable neumf_fast checkpoint (truncated, damaged, or another kind of file; "
                         "checkpoints are the best.pt and last.pt that `neumf-fast train` writes)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a neumf_fast checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def load_model(path, *, backend: str | None = None, device="cpu"):
    """(model, config, checkpoint) from a checkpoint; the backend can be changed freely."""
    ckpt = load_checkpoint(path)
    config = TrainConfig.from_dict(ckpt["config"])
    config = dataclasses.replace(config, pretrain=None, backend=backend or config.backend)
    model = build_model(config, ckpt["num_users"], ckpt["num_items"])
    model.load_state_dict(ckpt["model"])
    return model.to(device), config, ckpt
