"""Training under the paper's protocol: pointwise log loss on each positive and ``neg`` sampled
negatives (redrawn every epoch), Adam, validation HR/NDCG@10 after every epoch, the best
checkpoint kept.

Reproducibility: the model is initialised from ``seed``, and each epoch's negatives and shuffle
come from a generator seeded with ``(seed, epoch)`` alone.  A run resumed from its last
checkpoint (written atomically at the end of every epoch) therefore repeats the interrupted
epoch exactly and ends with the same metrics as an uninterrupted run.

The run's configuration is ``config.TrainConfig``, its checkpoints ``checkpoints``, its files
``run_files`` and its threads and processes ``parallel``; the names users import from here
(``TrainConfig``, ``fit``, ``load_model``, ...) are re-exported.
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
from .malloc import configure_malloc
from .parallel import SMALL_BATCH, configure_threads, core_share, world
from .run_files import RunExistsError, fresh_run_dir, holds_run, plot_curves, save_atomic, write_json
from .train_step import PRECISIONS, TrainStep

__all__ = ["SMALL_BATCH", "RunExistsError", "TrainConfig", "build_model", "configure_malloc", "configure_threads",
           "core_share", "epoch_samples", "fit", "fresh_run_dir", "holds_run", "load_checkpoint", "load_model",
           "prepare_split", "save_atomic", "test_metrics", "train_epoch", "world"]


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
        differs = config_differences(saved, config)
        if differs:
            raise ValueError(f"--resume: the run in {out_dir} was started with a different configuration "
                             f"({'; '.join(differs)})")
        config = resumed_config(saved, config)
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
    config = model_config(config, model)
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
    write_json(result, out_dir / "metrics.json")
    plot_curves(history, out_dir / "curves.png", config.k)
    if size > 1:
        torch.distributed.barrier()
    return result


def test_metrics(model, split: Split, config: TrainConfig, device="cpu") -> dict:
    ui = UserInput(split, model, config.history_len, device)
    return {"candidates": evaluate_candidates(model, split, "test", k=config.k, user_input=ui, device=device),
            "full": evaluate_full(model, split, "test", k=config.k, user_input=ui, device=device)}



