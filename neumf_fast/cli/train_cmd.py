"""``neumf-fast train``: its flags, their checks, the run directory, and torchrun for
``--nproc N`` (each process runs this same command, ``python -m neumf_fast.cli train ...``)."""

from __future__ import annotations

import os
from pathlib import Path

from . import flags
from .checks import UsageError, check_backend, check_dataset, check_device


def add_parser(add) -> None:
    """The ``train`` subcommand, added with ``add(name, **kwargs)``."""
    from .. import models
    from ..config import TrainConfig
    from ..parallel import SMALL_BATCH
    from ..table_optimizer import CHOICES as TABLE_CHOICES
    from ..table_optimizer import DEFAULT_LR

    d = TrainConfig()
    t = add("train", help="train a model; prints validation HR/NDCG per epoch and test metrics at the end",
            description="Train a model. The defaults are the paper's setting (He et al. 2017).")
    t.add_argument("--model", choices=list(models.MODELS), default=d.model, help="which of the paper's models (seq: SequenceNeuMF)")
    t.add_argument("--dataset", default=d.dataset,
                   help="synthetic | ml-100k | ml-1m | ml-10m | ml-20m | ml-25m | ml-latest-small | a ratings file "
                        "(u.data, ratings.dat, *.csv, *.tsv, *.inter, *.parquet, ...) or a directory holding one")
    t.add_argument("--epochs", type=flags.non_negative, default=d.epochs, help="0 evaluates the untrained model")
    t.add_argument("--batch-size", type=flags.positive, default=d.batch_size, help="samples per optimizer step")
    t.add_argument("--lr", type=flags.positive_float, default=None, help="default 0.001 × sqrt(batch / 256)")
    t.add_argument("--factors", type=flags.positive, default=d.factors, help="GMF factors (and SequenceNeuMF width)")
    t.add_argument("--layers", type=flags.layers, default=",".join(map(str, d.layers)),
                   help="MLP widths, the first = 2 × the MLP embedding")
    t.add_argument("--neg", type=flags.positive, default=d.neg, help="negatives per positive")
    t.add_argument("--eval-negatives", type=flags.non_negative, default=d.eval_negatives,
                   help="sampled negatives beside each held-out item in evaluation; a user with fewer unseen items "
                        "gets all of them (with a warning)")
    t.add_argument("--optimizer", choices=["adam", "sgd"], default=None, help="default adam; sgd with --pretrain")
    t.add_argument("--backend", choices=flags.BACKEND_CHOICES, default=d.backend,
                   help="the fused op's kernels (NEUMF_FAST_BACKEND overrides)")
    t.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N")
    t.add_argument("--threads", type=flags.threads, default="auto",
                   help=f"CPU threads for torch: auto is 1 up to batch {SMALL_BATCH} (the paper's small GEMMs gain "
                        "little from more, and lose much when several runs share the cores), else every core this "
                        "process may use")
    t.add_argument("--seed", type=int, default=d.seed, help="seed of the initialisation, negatives and shuffle")
    t.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the fixed evaluation candidates")
    t.add_argument("--history-len", type=flags.positive, default=d.history_len, help="seq model: history length")
    t.add_argument("--new-users", type=flags.unit_interval, default=d.new_users,
                   help="seq model: a share of the users (e.g. 0.1) held out of training entirely; `evaluate` ranks "
                        "their latest item from their earlier ones (cold start)")
    t.add_argument("--threshold", type=float, default=None, help="keep ratings >= this as positives")
    t.add_argument("--pretrain", nargs=2, metavar=("GMF_CKPT", "MLP_CKPT"), default=None,
                   help="NeuMF from a trained GMF and MLP (the paper's pretraining)")
    t.add_argument("--alpha", type=flags.unit_interval, default=d.alpha, help="pretraining's GMF weight in the last layer")
    t.add_argument("--out", type=Path, default=None,
                   help="run directory (default runs/<model>, or runs/<model>-N when that holds a run)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace the run that --out holds")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="bf16: autocast (CPU or GPU); fp16: autocast + GradScaler (CUDA only)")
    t.add_argument("--cuda-graphs", action="store_true",
                   help="capture the whole training step (forward, backward, Adam) in a CUDA graph and replay it per "
                        "batch; fp32/bf16, one process; ignored off CUDA")
    t.add_argument("--table-optimizer", choices=list(TABLE_CHOICES), default=d.table_optimizer,
                   help="dense: the tables train with --optimizer; adam (row-wise), rowwise_adagrad or sgd: each "
                        "step updates only the rows the batch touched, inside the backward (docs/training.md)")
    t.add_argument("--table-lr", type=flags.positive_float, default=None,
                   help="the table optimizer's lr; default " + ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items()))
    t.add_argument("--nproc", type=flags.positive, default=1,
                   help="data-parallel processes on this machine (launches torchrun; gloo on CPU, NCCL on GPUs)")


def check_train(args) -> None:
    """Every train flag, before any work: one line per problem, the first one raised."""
    check_device(args.device)
    check_backend(args.backend, args.device, args.precision)
    check_dataset(args.dataset)
    if args.precision == "fp16" and not args.device.startswith("cuda"):
        raise UsageError("--precision fp16 needs --device cuda (it needs a GradScaler); use --precision bf16 on the CPU")
    if args.cuda_graphs and args.device.startswith("cuda") and (args.precision == "fp16" or args.nproc > 1):
        raise UsageError("--cuda-graphs captures one process's fp32 or bf16 step: "
                         + ("fp16's GradScaler syncs every step; use --precision bf16" if args.precision == "fp16"
                            else "drop it with --nproc > 1 (DDP's gradient hooks are not captured)"))
    if args.table_lr is not None and args.table_optimizer == "dense":
        raise UsageError("--table-lr sets a table optimizer's lr; with --table-optimizer dense the tables train with "
                         "--optimizer at --lr")
    if args.pretrain:
        if args.model != "neumf":
            raise UsageError("--pretrain applies to --model neumf")
        for path in args.pretrain:
            if not Path(path).is_file():
                raise UsageError(f"--pretrain {path}: no such checkpoint file")
    if args.new_users and args.model != "seq":
        raise UsageError(f"--new-users applies to --model seq: a {args.model} user is an id embedding, which a user "
                         "held out of training does not have")
    if args.new_users >= 1:
        raise UsageError(f"--new-users {args.new_users}: hold out a share below 1 (e.g. 0.1), so some users train")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; choose one")


def resolve_out(args) -> Path:
    """The run directory: --out as given (it may hold a run only with --resume or --overwrite),
    or runs/<model>, moving on to runs/<model>-N when that holds a run already."""
    from ..run_files import fresh_run_dir, holds_run

    if args.out is not None:
        if args.resume and not (args.out / "last.pt").exists():
            raise UsageError(f"--resume: {args.out} holds no last.pt to resume from")
        if not args.resume and not args.overwrite and holds_run(args.out):
            raise UsageError(f"--out {args.out} already holds a run; pass --resume to continue it, --overwrite to "
                             f"replace it, or another --out (e.g. {fresh_run_dir(args.out)})")
        return args.out
    default = Path("runs") / args.model
    if args.resume or args.overwrite:
        if args.resume and not (default / "last.pt").exists():
            raise UsageError(f"--resume: {default} holds no last.pt to resume from (pass --out with the run's directory)")
        return default
    out = fresh_run_dir(default)
    if out != default:
        print(f"neumf-fast: {default} holds a run already; this run goes to {out} "
              f"(--overwrite replaces {default}, --resume continues it)")
    return out


def without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launch(nproc: int, argv: list[str]) -> None:
    """Re-run this command under torchrun with ``nproc`` processes on this machine."""
    from torch.distributed import run as torchrun

    torchrun.main(["--standalone", f"--nproc_per_node={nproc}", "-m", "neumf_fast.cli", "train",
                   *without_nproc(argv[1:])])


def run(args, argv) -> None:
    import torch.distributed as dist

    from ..config import TrainConfig
    from ..malloc import configure_malloc
    from ..parallel import configure_threads, init_distributed
    from ..train import fit

    launcher = args.nproc > 1 and "WORLD_SIZE" not in os.environ
    if "WORLD_SIZE" not in os.environ:  # checked once, by the process the user started
        check_train(args)
        args.out = resolve_out(args)
    elif args.out is None:  # started by torchrun directly: fit() still refuses to overwrite a run
        args.out = Path("runs") / args.model
    if launcher:
        return launch(args.nproc, [*argv, "--out", str(args.out)])
    threads = configure_threads(args.threads, args.batch_size)
    configure_malloc()
    args.device = init_distributed(args.device)

    config = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, factors=args.factors, layers=tuple(args.layers), neg=args.neg,
                         eval_negatives=args.eval_negatives, optimizer=args.optimizer, backend=args.backend,
                         device=args.device, seed=args.seed, split_seed=args.split_seed,
                         history_len=args.history_len, new_users=args.new_users, threshold=args.threshold,
                         pretrain=tuple(args.pretrain) if args.pretrain else None, alpha=args.alpha,
                         cuda_graphs=args.cuda_graphs, precision=args.precision,
                         table_optimizer=args.table_optimizer, table_lr=args.table_lr)
    out = args.out
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"neumf-fast: training {config.model} on {config.dataset} into {out} ({config.device}, "
              f"{threads} thread{'s' * (threads > 1)}, batch {config.batch_size}, {config.epochs} epochs)")
    try:
        result = fit(config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if not result:  # not rank 0
        return
    print(summary(result, config.k, config.model))
    print(f"wrote {out}/best.pt, last.pt, split.npz, metrics.json, curves.png")


def summary(result: dict, k: int, model: str) -> str:
    """The test metrics of the best epoch beside the popularity baseline, as a table."""
    best, test, pop = result["best_valid"], result["test"], result["popularity_test"]
    rows = [(f"{model} (best epoch {best['epoch']})", test["candidates"], test.get("full")),
            ("popularity", pop["candidates"], pop.get("full"))]
    lines = [f"test metrics, {test['candidates']['users']} users: held-out item among its candidates "
             f"(the paper's protocol), and among all items",
             f"| model | HR@{k} | NDCG@{k} | full-ranking HR@{k} | full-ranking NDCG@{k} |",
             "|---|---|---|---|---|"]
    for name, cand, full in rows:
        f = (f"{full[f'hr@{k}']:.4f} | {full[f'ndcg@{k}']:.4f}") if full else "- | -"
        lines.append(f"| {name} | {cand[f'hr@{k}']:.4f} | {cand[f'ndcg@{k}']:.4f} | {f} |")
    return "\n".join(lines)
