"""Training under the paper's protocol: pointwise log loss on each positive and ``neg`` sampled
negatives (redrawn every epoch), Adam, validation HR/NDCG@10 after every epoch, the best
checkpoint kept.

Reproducibility: the model is initialised from ``seed``, and each epoch's negatives and shuffle
come from a generator seeded with ``(seed, epoch)`` alone.  A run resumed from its last
checkpoint (written atomically at the end of every epoch) therefore repeats the interrupted
epoch exactly and ends with the same metrics as an uninterrupted run.

The run's configuration is ``config.TrainConfig``, its checkpoints ``checkpoints``, its files
``run_files``, its threads and processes ``parallel`` and one step ``train_step``; import those
names from their modules.  ``fit`` runs in four steps: ``_resume`` (may this directory be used,
and what does last.pt hold), ``_build`` (model, optimizer, training step), ``_train_epochs``
(with ``_end_epoch``'s validation and checkpoints) and ``_finish`` (test metrics and files).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import torch

from .checkpoints import CHECKPOINT_FORMAT, build_model, load_checkpoint, load_model, model_config
from .config import TrainConfig, config_differences, resumed_config
from .data import NegativeSampler, Split, leave_one_out, load_dataset
from .evaluate import UserInput, evaluate_candidates, evaluate_full, popularity_scores
from .parallel import world
from .run_files import RunExistsError, fresh_run_dir, holds_run, plot_curves, save_atomic, write_json
from .table_optimizer import TableOptimizer
from .train_step import PRECISIONS, TrainStep, use_cuda_graphs


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


def _optimizer(config: TrainConfig, model, capturable: bool = False) -> torch.optim.Optimizer:
    lr = config.learning_rate()
    name = config.optimizer_name()
    if name == "adam":
        fused = torch.device(config.device).type in ("cpu", "cuda")
        return torch.optim.Adam(model.dense_parameters(), lr=lr, fused=fused, capturable=capturable)
    if name == "sgd":
        return torch.optim.SGD(model.dense_parameters(), lr=lr)
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
    split = leave_one_out(data, num_negatives=config.eval_negatives, seed=config.split_seed,
                          new_users=config.new_users)
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
    config, state = _resume(config, out_dir, resume, overwrite, lead)
    split = _shared_split(config, out_dir, split, lead, size, log, reuse=state is not None)
    if state is not None and state["data_fingerprint"] != split.fingerprint:
        raise ValueError(f"--resume: {out_dir}'s checkpoint was trained on different data")
    run = _build(config, split, state, size, out_dir)
    _train_epochs(run, rank, progress, log, on_step)
    if not lead:
        torch.distributed.barrier()  # wait for rank 0's final evaluation and files
        return {}
    return _finish(run, size)


def _resume(config: TrainConfig, out_dir: Path, resume: bool, overwrite: bool, lead: bool):
    """(the run's config, last.pt's state or None): checks that ``out_dir`` may be used, and with
    ``resume`` that the saved run is this one (``resumed_config``: what a resumed run may change)."""
    # rank 0 only: the other ranks may start after rank 0 has written split.npz
    if lead and not resume and not overwrite and holds_run(out_dir):
        raise RunExistsError(f"{out_dir} already holds a run; pass --resume to continue it, --overwrite to replace "
                             f"it, or choose another --out (e.g. {fresh_run_dir(out_dir)})")
    if config.epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {config.epochs}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        return config, None
    last_path = out_dir / "last.pt"
    if not last_path.exists():
        raise FileNotFoundError(f"--resume: {last_path} does not exist")
    state = load_checkpoint(last_path)
    saved = TrainConfig.from_dict(state["config"])
    differs = config_differences(saved, config)
    if differs:
        raise ValueError(f"--resume: the run in {out_dir} was started with a different configuration "
                         f"({'; '.join(differs)})")
    return resumed_config(saved, config), state


def _shared_split(config: TrainConfig, out_dir: Path, split: Split | None, lead: bool, size: int, log: bool,
                  reuse: bool) -> Split:
    """The given split, or the one rank 0 builds (or reloads) and saves, read by every other rank."""
    if split is not None:
        return split
    if lead:
        split = prepare_split(config, out_dir, log, reuse=reuse)
    if size > 1:  # the other ranks read the split rank 0 wrote, so every rank has the same one
        torch.distributed.barrier()
        if not lead:
            split = Split.load(out_dir / "split.npz")
    return split


@dataclasses.dataclass
class _Run:
    """What fit's steps share: the run's settings and data, its model and optimizer, and its
    validation history so far."""

    config: TrainConfig
    split: Split
    out_dir: Path
    model: torch.nn.Module
    train_model: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    step: TrainStep  # built once: with cuda_graphs it holds the captured step across epochs
    user_input: UserInput
    history: list = dataclasses.field(default_factory=list)
    best: dict | None = None
    start_epoch: int = 0

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    def validate(self) -> dict:
        return evaluate_candidates(self.model, self.split, "valid", k=self.config.k, user_input=self.user_input,
                                   device=self.device)

    def save(self, epoch: int, *names: str) -> None:
        state = {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(self.config),
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": epoch,
                 "table_optimizer": None if self.model.table_optimizer is None else self.model.table_optimizer.state_dict(),
                 "history": self.history, "best": self.best, "data_fingerprint": self.split.fingerprint,
                 "num_users": self.split.num_users, "num_items": self.split.num_items}
        for name in names:
            save_atomic(state, self.out_dir / name)


def _build(config: TrainConfig, split: Split, state: dict | None, size: int, out_dir: Path) -> _Run:
    """The model, optimizer and training step, restored from ``state`` when resuming."""
    device = torch.device(config.device)
    # resuming loads every weight from last.pt, so the pretrained checkpoints are not needed again
    model = build_model(config if state is None else dataclasses.replace(config, pretrain=None),
                        split.num_users, split.num_items).to(device)
    config = model_config(config, model)
    if config.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {config.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if config.precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs a CUDA device (and its GradScaler); use --precision bf16 on the CPU")
    capture = use_cuda_graphs(config.cuda_graphs, device, config.precision, size)
    if config.table_optimizer != "dense":
        model.table_optimizer = TableOptimizer(model.tables(), config.table_optimizer, lr=config.table_lr,
                                               backend=config.backend)
    optimizer = _optimizer(config, model, capturable=capture)
    if state is not None:
        model.load_state_dict(state["model"])
        if model.table_optimizer is not None:
            model.table_optimizer.load_state_dict(state["table_optimizer"])
        optimizer.load_state_dict(state["optimizer"])  # this restores the saved run's "capturable" too
        for group in optimizer.param_groups:
            if "capturable" in group:
                group["capturable"] = capture
    train_model = model
    if size > 1:
        from torch.nn.parallel import DistributedDataParallel

        if model.table_optimizer is not None:  # its tables get no .grad: it keeps them identical itself
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(model.tables()))
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    user_input = UserInput(split, model, config.history_len, device)
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    step = TrainStep(train_model, optimizer, config.batch_size,
                     user_input=user_input if user_input.history is not None else None,
                     precision=config.precision, scaler=scaler, world=size, capture=capture)
    run = _Run(config, split, out_dir, model, train_model, optimizer, step, user_input)
    if state is not None:
        run.history, run.best, run.start_epoch = state["history"], state["best"], state["epoch"] + 1
    return run


def _train_epochs(run: _Run, rank: int, progress: bool, log: bool, on_step) -> None:
    """From ``run.start_epoch`` to the last epoch; rank 0 validates, keeps ``best.pt`` and
    ``last.pt`` and logs after each (and before the first, the untrained model)."""
    config, split, device = run.config, run.split, run.device
    sampler = NegativeSampler(split.train_user, split.train_item, split.num_items, split.num_users, device=device)
    train_user = torch.from_numpy(split.train_user).to(device)
    train_item = torch.from_numpy(split.train_item).to(device)
    if run.start_epoch == 0 and rank == 0:
        # the untrained model's validation metrics (and, with pretraining, the starting point)
        t0 = time.perf_counter()
        m = run.validate()
        run.history.append({"epoch": 0, "loss": None, "train_s": 0.0, "eval_s": time.perf_counter() - t0, **m})
        if log:
            print(f"epoch 0: HR@{config.k} {m[f'hr@{config.k}']:.4f}  NDCG@{config.k} {m[f'ndcg@{config.k}']:.4f}")
    for epoch in range(run.start_epoch, config.epochs):
        t0 = time.perf_counter()
        samples = epoch_samples(train_user, train_item, sampler, config.neg, config.seed, epoch)
        loss = train_epoch(run.train_model, run.optimizer, samples, config.batch_size,
                           desc=f"epoch {epoch + 1}/{config.epochs}", progress=progress, rank=rank, step=run.step,
                           on_step=None if on_step is None else (lambda step, e=epoch: on_step(e, step)))
        if rank == 0:
            _end_epoch(run, epoch, loss, time.perf_counter() - t0, log)


def _end_epoch(run: _Run, epoch: int, loss: float, train_s: float, log: bool) -> None:
    """Rank 0 after an epoch: validate, keep the best checkpoint and the last one, log."""
    k = run.config.k
    t1 = time.perf_counter()
    m = run.validate()
    row = {"epoch": epoch + 1, "loss": loss, "train_s": train_s, "eval_s": time.perf_counter() - t1, **m}
    run.history.append(row)
    if run.best is None or m[f"hr@{k}"] > run.best[f"hr@{k}"]:
        run.best = dict(row)
        run.save(epoch, "best.pt")
    run.save(epoch, "last.pt")
    if log:
        print(f"epoch {epoch + 1}: loss {loss:.4f}  HR@{k} {m[f'hr@{k}']:.4f}  NDCG@{k} {m[f'ndcg@{k}']:.4f}  "
              f"[{train_s:.1f} s train, {row['eval_s']:.1f} s eval]")


def _finish(run: _Run, size: int) -> dict:
    """Rank 0 at the end: test metrics of the best checkpoint and of popularity, metrics.json and
    curves.png; returns the metrics."""
    config, split, device = run.config, run.split, run.device
    if run.best is None:  # zero epochs: the untrained model is the result
        run.best = dict(run.history[-1]) if run.history else None
        run.save(-1, "best.pt", "last.pt")
    result = {"config": dataclasses.asdict(config), "processes": size, "history": run.history,
              "best_valid": run.best, "dataset": split.name, "data_fingerprint": split.fingerprint}
    best_model, _, _ = load_model(run.out_dir / "best.pt", backend=config.backend, device=device)
    result["test"] = test_metrics(best_model, split, config, device)
    pop = popularity_scores(split)
    result["popularity_test"] = {
        "candidates": evaluate_candidates(None, split, "test", k=config.k, popularity=pop),
        "full": evaluate_full(None, split, "test", k=config.k, popularity=pop, device=device),
    }
    write_json(result, run.out_dir / "metrics.json")
    plot_curves(run.history, run.out_dir / "curves.png", config.k)
    if size > 1:
        torch.distributed.barrier()
    return result


def test_metrics(model, split: Split, config: TrainConfig, device="cpu") -> dict:
    ui = UserInput(split, model, config.history_len, device)
    return {"candidates": evaluate_candidates(model, split, "test", k=config.k, user_input=ui, device=device),
            "full": evaluate_full(model, split, "test", k=config.k, user_input=ui, device=device)}
