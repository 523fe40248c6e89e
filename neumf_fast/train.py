"""Training under the paper's protocol: pointwise log loss on each positive and ``neg`` sampled
negatives (redrawn every epoch), Adam, validation HR/NDCG@10 after every epoch, the best
checkpoint kept.

Reproducibility: the model is initialised from ``seed``, and each epoch's negatives and shuffle
come from a generator seeded with ``(seed, epoch)`` alone.  A run resumed from its last
checkpoint (written atomically at the end of every epoch) therefore repeats the interrupted
epoch exactly and ends with the same metrics as an uninterrupted run.

    python -m neumf_fast.train --model neumf --dataset synthetic      (same as `neumf-fast train`)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch

from . import models
from .data import NegativeSampler, Split, leave_one_out, load_dataset
from .evaluate import UserInput, evaluate_candidates, evaluate_full, popularity_scores
from .malloc import configure_malloc  # noqa: F401  (neumf-fast train calls it; re-exported)
from .train_step import PRECISIONS, TrainStep

CHECKPOINT_FORMAT = 1


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
    pretrain: tuple[str, str] | None = None  # GMF and MLP checkpoints for NeuMF
    alpha: float = 0.5
    threshold: float | None = None  # keep ratings >= threshold as positives
    cuda_graphs: bool = False  # capture the whole training step in a CUDA graph (train_step.py); CUDA only
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler; CUDA only)

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


# What a resumed run may change: they do not define the run, only how long and where it trains.
RESUME_FREE = ("epochs", "backend", "device", "cuda_graphs")


def _resumed_config(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    return dataclasses.replace(saved, **{name: getattr(given, name) for name in RESUME_FREE})


def _differences(saved: TrainConfig, given: TrainConfig) -> list[str]:
    """Fields that define a run and differ (``RESUME_FREE`` may differ; with pretraining the
    shapes come from the pretrained models)."""
    free = set(RESUME_FREE) | ({"factors", "layers"} if saved.pretrain else set())
    return [f"{f.name}: {getattr(saved, f.name)!r} then, {getattr(given, f.name)!r} now"
            for f in dataclasses.fields(TrainConfig)
            if f.name not in free and getattr(saved, f.name) != getattr(given, f.name)]


def _model_config(config: TrainConfig, model) -> TrainConfig:
    """The config that rebuilds this model's shapes (pretraining fixes factors and layers)."""
    if isinstance(model, models.NeuMF):
        return dataclasses.replace(config, factors=model.factors, layers=tuple(model.layers_spec))
    return config


# ---- run directories and threads ----------------------------------------------------------------

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


# The paper's model is small: at batch 256 its GEMMs are [256 x 64] by [64 x 32], so a second
# thread gains little (0.93 -> 0.83 ms per step on the 2-core machine) while two processes each
# running 2 threads on 2 cores fall to 3.4 ms per step (OpenMP threads spin on shared cores).
# Large batches do use more cores (batch 8192: 5.6 -> 3.7 ms per step with 2 threads).
SMALL_BATCH = 1024


def core_share() -> int:
    """The cores this process may use, shared among the local ranks of a multi-process run."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def configure_threads(threads: int | None, batch_size: int) -> int:
    """Sets torch's intra-op threads for training (and 1 inter-op thread: the model has no
    independent branches worth running concurrently); returns the number chosen.

    ``None`` (auto): 1 thread for batches up to ``SMALL_BATCH``; otherwise ``core_share()``."""
    if threads is None:
        threads = 1 if batch_size <= SMALL_BATCH else core_share()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already started in this process
        pass
    return threads


# ---- checkpoints -------------------------------------------------------------------------------


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


# ---- one epoch ---------------------------------------------------------------------------------


def epoch_samples(train_user: torch.Tensor, train_item: torch.Tensor, sampler: NegativeSampler, neg: int,
                  seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The epoch's shuffled (user, item, label) rows: every positive plus ``neg`` fresh negatives
    per positive.  Depends only on (seed, epoch)."""
    g = torch.Generator(device=sampler.device).manual_seed(seed * 1_000_003 + epoch)
    neg_user = train_user.repeat_interleave(neg)
    neg_item = sampler.sample(neg_user, g)
    perm = torch.randperm(len(train_user) + len(neg_user), generator=g, device=sampler.device)
    # index_select, not advanced indexing: a third faster for these 1-D gathers; the label needs
    # no gather at all (the positives come first)
    user = torch.cat([train_user, neg_user]).index_select(0, perm)
    item = torch.cat([train_item, neg_item]).index_select(0, perm)
    return user, item, (perm < len(train_user)).to(torch.float32)


def train_epoch(model, optimizer, samples, batch_size: int, user_input=None, *, desc: str = "train",
                progress: bool = False, on_step: Callable[[int], None] | None = None,
                rank: int = 0, world: int = 1, precision: str = "fp32", scaler=None,
                step: TrainStep | None = None) -> float:
    """One pass over ``samples = (user, item, label)`` in order, in batches; returns the mean
    log loss.  The loss is accumulated on the device: no host sync inside the loop.

    With ``world > 1`` (``model`` wrapped in DistributedDataParallel, every rank holding the same
    samples), ``batch_size`` is the global batch: rank r takes its r-th share of each batch.
    ``precision`` and ``scaler``: see ``TrainStep``.  ``step`` (a ``TrainStep``, which may hold
    a captured CUDA graph across epochs) replaces ``model``, ``optimizer``, ``user_input``,
    ``precision``, ``scaler`` and ``world``.
    """
    from tqdm.auto import tqdm

    if step is None:
        step = TrainStep(model, optimizer, batch_size, user_input=user_input, precision=precision, scaler=scaler,
                         world=world)
    user, item, label = samples
    step.model.train()
    step.begin_epoch(user.device)
    steps = math.ceil(len(user) / batch_size)
    for s in tqdm(range(steps), desc=desc, unit="batch", disable=not progress, leave=False, mininterval=0.5):
        start = s * batch_size
        n = min(batch_size, len(user) - start)
        sl = slice(start + n * rank // step.world, start + n * (rank + 1) // step.world)  # this rank's share
        step(user[sl], item[sl], label[sl], n)
        if on_step is not None:
            on_step(s)
    return step.mean_loss(len(user))


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _optimizer(config: TrainConfig, model, capturable: bool = False) -> torch.optim.Optimizer:
    lr = config.learning_rate()
    name = config.optimizer_name()
    if name == "adam":
        fused = torch.device(config.device).type in ("cpu", "cuda")
        return torch.optim.Adam(model.parameters(), lr=lr, fused=fused, capturable=capturable)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose adam or sgd")


def prepare_split(config: TrainConfig, out_dir: Path | None = None, log: bool = True, reuse: bool = False) -> Split:
    """The run's split, built from ``config`` and saved as ``out_dir/split.npz``; with ``reuse``
    (resuming), the saved one is loaded instead."""
    path = out_dir / "split.npz" if out_dir is not None else None
    if reuse and path is not None and path.exists():
        return Split.load(path)
    data = load_dataset(config.dataset, threshold=config.threshold)
    if log:
        print(data.describe())
    split = leave_one_out(data, num_negatives=config.eval_negatives, seed=config.split_seed)
    if path is not None:
        split.save(path)
    return split


def fit(config: TrainConfig, out_dir, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
        log: bool = True, on_step: Callable[[int, int], None] | None = None, split: Split | None = None) -> dict:
    """Trains, writes ``best.pt``, ``last.pt``, ``split.npz``, ``metrics.json`` and
    ``curves.png`` to ``out_dir``, and returns the metrics dict.

    A directory that already holds a run is never overwritten silently: ``resume`` continues
    it, ``overwrite`` replaces it, and otherwise ``RunExistsError`` is raised before any work.
    ``progress`` shows tqdm bars; ``log`` prints a line per epoch.
    ``on_step(epoch, step)`` is called after every optimizer step (tests use it to interrupt).
    """
    rank, size = world()
    lead = rank == 0  # evaluation, checkpoints, logs and files: rank 0 only
    log, progress = log and lead, progress and lead
    out_dir = Path(out_dir)
    # rank 0 only: the other ranks may start after rank 0 has written split.npz
    if lead and not resume and not overwrite and holds_run(out_dir):
        raise RunExistsError(f"{out_dir} already holds a run; pass --resume to continue it, --overwrite to replace "
                             f"it, or choose another --out (e.g. {fresh_run_dir(out_dir)})")
    if config.epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {config.epochs}")
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    state = None
    if resume:
        if not last_path.exists():
            raise FileNotFoundError(f"--resume: {last_path} does not exist")
        state = load_checkpoint(last_path)
        saved = TrainConfig.from_dict(state["config"])
        differs = _differences(saved, config)
        if differs:
            raise ValueError(f"--resume: the run in {out_dir} was started with a different configuration "
                             f"({'; '.join(differs)})")
        config = _resumed_config(saved, config)
    if split is None:
        if lead:
            split = prepare_split(config, out_dir, log, reuse=state is not None)
        if size > 1:  # the other ranks read the split rank 0 wrote, so every rank has the same one
            torch.distributed.barrier()
            if not lead:
                split = Split.load(out_dir / "split.npz")
    if state is not None and state["data_fingerprint"] != split.fingerprint:
        raise ValueError(f"--resume: {out_dir}'s checkpoint was trained on different data")

    device = torch.device(config.device)
    # resuming loads every weight from last.pt, so the pretrained checkpoints are not needed again
    model = build_model(config if state is None else dataclasses.replace(config, pretrain=None),
                        split.num_users, split.num_items).to(device)
    config = _model_config(config, model)
    if config.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {config.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if config.precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs a CUDA device (and its GradScaler); use --precision bf16 on the CPU")
    capture = config.cuda_graphs and device.type == "cuda"
    if config.cuda_graphs and not capture:
        import warnings

        warnings.warn(f"neumf_fast: cuda_graphs ignored: CUDA graphs need a CUDA device, training on {device}",
                      RuntimeWarning, stacklevel=2)
    if capture and (config.precision == "fp16" or size > 1):
        raise ValueError("--cuda-graphs captures single-process fp32 or bf16 training; "
                         + ("fp16's GradScaler reads its inf check on the host every step (use --precision bf16)"
                            if config.precision == "fp16" else "with --nproc > 1, DDP's gradient hooks are not captured"))
    optimizer = _optimizer(config, model, capturable=capture)
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    history, best, start_epoch = [], None, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])  # this restores the saved run's "capturable" too
        for group in optimizer.param_groups:
            if "capturable" in group:
                group["capturable"] = capture
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1

    train_model = model
    if size > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    user_input = UserInput(split, model, config.history_len, device)
    sampler = NegativeSampler(split.train_user, split.train_item, split.num_items, split.num_users, device=device)
    train_user = torch.from_numpy(split.train_user).to(device)
    train_item = torch.from_numpy(split.train_item).to(device)
    # built once: with --cuda-graphs it holds the captured step from one epoch to the next
    train_step = TrainStep(train_model, optimizer, config.batch_size,
                           user_input=user_input if user_input.history is not None else None,
                           precision=config.precision, scaler=scaler, world=size, capture=capture)

    def checkpoint(epoch: int) -> dict:
        return {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(config), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history, "best": best,
                "data_fingerprint": split.fingerprint, "num_users": split.num_users, "num_items": split.num_items}

    if start_epoch == 0 and lead:
        # the untrained model's validation metrics (and, with pretraining, the starting point)
        t0 = time.perf_counter()
        m = evaluate_candidates(model, split, "valid", k=config.k, user_input=user_input, device=device)
        history.append({"epoch": 0, "loss": None, "train_s": 0.0, "eval_s": time.perf_counter() - t0, **m})
        if log:
            print(f"epoch 0: HR@{config.k} {m[f'hr@{config.k}']:.4f}  NDCG@{config.k} {m[f'ndcg@{config.k}']:.4f}")
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        samples = epoch_samples(train_user, train_item, sampler, config.neg, config.seed, epoch)
        loss = train_epoch(train_model, optimizer, samples, config.batch_size, desc=f"epoch {epoch + 1}/{config.epochs}",
                           progress=progress, rank=rank, step=train_step,
                           on_step=None if on_step is None else (lambda step, e=epoch: on_step(e, step)))
        train_s = time.perf_counter() - t0
        if not lead:
            continue
        t1 = time.perf_counter()
        m = evaluate_candidates(model, split, "valid", k=config.k, user_input=user_input, device=device)
        row = {"epoch": epoch + 1, "loss": loss, "train_s": train_s,
               "eval_s": time.perf_counter() - t1, **m}
        history.append(row)
        hr = m[f"hr@{config.k}"]
        if best is None or hr > best[f"hr@{config.k}"]:
            best = dict(row)
            save_atomic(checkpoint(epoch), best_path)
        save_atomic(checkpoint(epoch), last_path)
        if log:
            print(f"epoch {epoch + 1}: loss {row['loss']:.4f}  HR@{config.k} {hr:.4f}  "
                  f"NDCG@{config.k} {m[f'ndcg@{config.k}']:.4f}  [{train_s:.1f} s train, {row['eval_s']:.1f} s eval]")
    if not lead:
        torch.distributed.barrier()  # wait for rank 0's final evaluation and files
        return {}
    if best is None:  # zero epochs: the untrained model is the result
        best = dict(history[-1]) if history else None
        save_atomic(checkpoint(-1), best_path)
        save_atomic(checkpoint(-1), last_path)

    result = {"config": dataclasses.asdict(config), "processes": size, "history": history, "best_valid": best,
              "dataset": split.name, "data_fingerprint": split.fingerprint}
    best_model, _, _ = load_model(best_path, backend=config.backend, device=device)
    result["test"] = test_metrics(best_model, split, config, device)
    pop = popularity_scores(split)
    result["popularity_test"] = {
        "candidates": evaluate_candidates(None, split, "test", k=config.k, popularity=pop),
        "full": evaluate_full(None, split, "test", k=config.k, popularity=pop, device=device),
    }
    _write_json(result, out_dir / "metrics.json")
    plot_curves(history, out_dir / "curves.png", config.k)
    if size > 1:
        torch.distributed.barrier()
    return result


def test_metrics(model, split: Split, config: TrainConfig, device="cpu") -> dict:
    ui = UserInput(split, model, config.history_len, device)
    return {"candidates": evaluate_candidates(model, split, "test", k=config.k, user_input=ui, device=device),
            "full": evaluate_full(model, split, "test", k=config.k, user_input=ui, device=device)}


def _write_json(obj, path: Path) -> None:
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


def main(argv=None) -> None:
    from .cli import main as cli_main

    cli_main(["train", *(argv if argv is not None else __import__("sys").argv[1:])])


if __name__ == "__main__":
    main()
