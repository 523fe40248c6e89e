"""``neumf-fast``: train, evaluate and recommend with NeuMF models; download MovieLens.

    neumf-fast train --model neumf --dataset synthetic --out runs/neumf
    neumf-fast evaluate runs/neumf/best.pt
    neumf-fast recommend runs/neumf/best.pt --user 42 --k 10
    neumf-fast data download ml-1m
    neumf-fast data info ml-100k

Every flag is checked before any work starts.  A user error (a bad flag, a missing or damaged
file, a backend that cannot run on the device) prints one line naming the problem and the fix
and exits non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

from . import models


def _layers(text: str) -> tuple[int, ...]:
    """``64,32,16,8`` or the paper code's ``[64,32,16,8]``."""
    try:
        value = ast.literal_eval(text if text.strip().startswith("[") else f"[{text}]")
        layers = tuple(int(v) for v in value)
    except (ValueError, SyntaxError, TypeError):
        raise argparse.ArgumentTypeError(f"layers must be integers like 64,32,16,8, got {text!r}") from None
    if len(layers) < 2 or any(v <= 0 for v in layers) or layers[0] % 2:
        raise argparse.ArgumentTypeError(f"layers need at least two positive widths, the first even: {text!r}")
    return layers


def _number(kind, ok, what: str):
    """An argparse type: ``kind(text)`` that satisfies ``ok``, else "must be {what}"."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


_positive = _number(int, lambda v: v > 0, "a positive integer")
_non_negative = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
_unit_interval = _number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


_thread_count = _number(int, lambda v: v > 0, "auto or a positive integer")


def _threads(text: str) -> int | None:
    return None if text == "auto" else _thread_count(text)


BACKEND_CHOICES = ["auto", "triton", "cuda", "cpu", "torch"]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default in --help (not for flags and options with no default)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or isinstance(action, argparse._HelpAction):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    from .train import SMALL_BATCH, TrainConfig

    d = TrainConfig()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show a traceback for errors instead of one line")
    parser = argparse.ArgumentParser(prog="neumf-fast", description="NeuMF (He et al. 2017) with fused kernels.")
    sub = parser.add_subparsers(dest="command", required=True)
    add = lambda name, **kw: sub.add_parser(name, parents=[common], formatter_class=_Formatter, **kw)

    t = add("train", help="train a model; prints validation HR/NDCG per epoch and test metrics at the end",
            description="Train a model. The defaults are the paper's setting (He et al. 2017).")
    t.add_argument("--model", choices=list(models.MODELS), default=d.model, help="which of the paper's models (seq: SequenceNeuMF)")
    t.add_argument("--dataset", default=d.dataset,
                   help="synthetic | ml-100k | ml-1m | ml-10m | ml-20m | ml-25m | ml-latest-small | a ratings file "
                        "(u.data, ratings.dat, *.csv, *.tsv, *.inter, *.parquet, ...) or a directory holding one")
    t.add_argument("--epochs", type=_non_negative, default=d.epochs, help="0 evaluates the untrained model")
    t.add_argument("--batch-size", type=_positive, default=d.batch_size, help="samples per optimizer step")
    t.add_argument("--lr", type=_positive_float, default=None, help="default 0.001 × sqrt(batch / 256)")
    t.add_argument("--factors", type=_positive, default=d.factors, help="GMF factors (and SequenceNeuMF width)")
    t.add_argument("--layers", type=_layers, default=",".join(map(str, d.layers)),
                   help="MLP widths, the first = 2 × the MLP embedding")
    t.add_argument("--neg", type=_positive, default=d.neg, help="negatives per positive")
    t.add_argument("--eval-negatives", type=_non_negative, default=d.eval_negatives,
                   help="sampled negatives beside each held-out item in evaluation; a user with fewer unseen items "
                        "gets all of them (with a warning)")
    t.add_argument("--optimizer", choices=["adam", "sgd"], default=None, help="default adam; sgd with --pretrain")
    t.add_argument("--backend", choices=BACKEND_CHOICES, default=d.backend,
                   help="the fused op's kernels (NEUMF_FAST_BACKEND overrides)")
    t.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N")
    t.add_argument("--threads", type=_threads, default="auto",
                   help=f"CPU threads for torch: auto is 1 up to batch {SMALL_BATCH} (the paper's small GEMMs gain "
                        "little from more, and lose much when several runs share the cores), else every core this "
                        "process may use")
    t.add_argument("--seed", type=int, default=d.seed, help="seed of the initialisation, negatives and shuffle")
    t.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the fixed evaluation candidates")
    t.add_argument("--history-len", type=_positive, default=d.history_len, help="seq model: history length")
    t.add_argument("--threshold", type=float, default=None, help="keep ratings >= this as positives")
    t.add_argument("--pretrain", nargs=2, metavar=("GMF_CKPT", "MLP_CKPT"), default=None,
                   help="NeuMF from a trained GMF and MLP (the paper's pretraining)")
    t.add_argument("--alpha", type=_unit_interval, default=d.alpha, help="pretraining's GMF weight in the last layer")
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
    t.add_argument("--nproc", type=_positive, default=1,
                   help="data-parallel processes on this machine (launches torchrun; gloo on CPU, NCCL on GPUs)")

    e = add("evaluate", help="test metrics of a checkpoint (100 candidates, and full ranking)")
    e.add_argument("checkpoint", type=Path, help="a run's best.pt or last.pt, or the run directory")
    e.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help="default: the one it was trained with")
    e.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    e.add_argument("--split", type=Path, default=None, help="split file (default: split.npz beside the checkpoint)")

    r = add("recommend", help="top-K unseen items for a user, by original ids")
    r.add_argument("checkpoint", type=Path, help="a run's best.pt or last.pt, or the run directory")
    r.add_argument("--user", required=True, help="the user's original id")
    r.add_argument("--k", type=_positive, default=10, help="how many items")
    r.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help="default: the one it was trained with")
    r.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    r.add_argument("--split", type=Path, default=None, help="split file (default: split.npz beside the checkpoint)")

    data = add("data", help="datasets: download, info")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("download", parents=[common], formatter_class=_Formatter,
                         help="download and unpack a MovieLens archive into the cache")
    dl.add_argument("name", help="ml-100k | ml-1m | ml-10m | ml-20m | ml-25m | ml-latest-small")
    dl.add_argument("--root", type=Path, default=None, help="cache directory (default $NEUMF_FAST_DATA or ~/.cache/neumf_fast)")
    info = dsub.add_parser("info", parents=[common], formatter_class=_Formatter, help="read a dataset and print its size")
    info.add_argument("name", help="synthetic, a MovieLens name, or a ratings file or directory")
    return parser


class UsageError(ValueError):
    """A flag that cannot work here: reported as one line, before any work starts."""


def check_device(text: str) -> str:
    """``text`` as a device this torch can use, or a ``UsageError`` saying why not."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if torch.version.cuda is None and not torch.cuda.is_available():
            raise UsageError(f"--device {text}: this torch ({torch.__version__}) is built without CUDA; use --device cpu, "
                             "or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                             "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1})")
    elif device.type != "cpu":
        raise UsageError(f"--device {text}: neumf-fast runs on cpu or cuda")
    return text


def check_backend(backend: str | None, device: str, precision: str = "fp32") -> None:
    """A ``UsageError`` when the named backend cannot run on ``device`` (checked before any work)."""
    import os

    import torch

    from .ops.dispatch import ENV_VAR, unavailable_reasons

    name = os.environ.get(ENV_VAR) or backend
    if name is None:
        return
    source = f"{ENV_VAR}={name}" if os.environ.get(ENV_VAR) else f"--backend {name}"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32
    reasons = unavailable_reasons(name, device, dtype)
    if reasons:
        raise UsageError(f"{source} cannot run on {device}: {'; '.join(reasons)}. Use --backend auto")


def _check_dataset(spec: str) -> None:
    from .data import DATASETS

    if spec not in DATASETS and not Path(spec).exists():
        raise UsageError(f"--dataset {spec!r}: no such file or directory, and not one of {', '.join(DATASETS)}")


def _check_train(args) -> None:
    """Every train flag, before any work: one line per problem, the first one raised."""
    check_device(args.device)
    check_backend(args.backend, args.device, args.precision)
    _check_dataset(args.dataset)
    if args.precision == "fp16" and not args.device.startswith("cuda"):
        raise UsageError("--precision fp16 needs --device cuda (it needs a GradScaler); use --precision bf16 on the CPU")
    if args.cuda_graphs and args.device.startswith("cuda") and (args.precision == "fp16" or args.nproc > 1):
        raise UsageError("--cuda-graphs captures one process's fp32 or bf16 step: "
                         + ("fp16's GradScaler syncs every step; use --precision bf16" if args.precision == "fp16"
                            else "drop it with --nproc > 1 (DDP's gradient hooks are not captured)"))
    if args.pretrain:
        if args.model != "neumf":
            raise UsageError("--pretrain applies to --model neumf")
        for path in args.pretrain:
            if not Path(path).is_file():
                raise UsageError(f"--pretrain {path}: no such checkpoint file")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; choose one")


def _resolve_out(args) -> Path:
    """The run directory: --out as given (it may hold a run only with --resume or --overwrite),
    or runs/<model>, moving on to runs/<model>-N when that holds a run already."""
    from .train import fresh_run_dir, holds_run

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


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _launch(nproc: int, argv: list[str]) -> None:
    """Re-run this command under torchrun with ``nproc`` processes on this machine."""
    from torch.distributed import run as torchrun

    torchrun.main(["--standalone", f"--nproc_per_node={nproc}", "-m", "neumf_fast.train",
                   *_without_nproc(argv[1:])])


def _init_distributed(device: str) -> str:
    """Joins the process group torchrun describes (WORLD_SIZE > 1); returns this rank's device."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.startswith("cuda"):
        import torch

        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return device


def _cmd_train(args, argv) -> None:
    import os

    import torch.distributed as dist

    from .train import TrainConfig, configure_malloc, configure_threads, fit

    launcher = args.nproc > 1 and "WORLD_SIZE" not in os.environ
    if "WORLD_SIZE" not in os.environ:  # checked once, by the process the user started
        _check_train(args)
        args.out = _resolve_out(args)
    elif args.out is None:  # started by torchrun directly: fit() still refuses to overwrite a run
        args.out = Path("runs") / args.model
    if launcher:
        return _launch(args.nproc, [*argv, "--out", str(args.out)])
    threads = configure_threads(args.threads, args.batch_size)
    configure_malloc()
    args.device = _init_distributed(args.device)

    config = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, factors=args.factors, layers=tuple(args.layers), neg=args.neg,
                         eval_negatives=args.eval_negatives, optimizer=args.optimizer, backend=args.backend,
                         device=args.device, seed=args.seed, split_seed=args.split_seed,
                         history_len=args.history_len, threshold=args.threshold,
                         pretrain=tuple(args.pretrain) if args.pretrain else None, alpha=args.alpha,
                         cuda_graphs=args.cuda_graphs, precision=args.precision)
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
    print(_summary(result, config.k, config.model))
    print(f"wrote {out}/best.pt, last.pt, split.npz, metrics.json, curves.png")


def _summary(result: dict, k: int, model: str) -> str:
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


def _load_run(args):
    from .runs import load_run

    check_device(args.device)
    if args.backend is not None:
        check_backend(args.backend, args.device)
    return load_run(args.checkpoint, backend=args.backend, device=args.device, split=args.split)


def _cmd_evaluate(args) -> None:
    run = _load_run(args)
    result = run.test_metrics()
    print(json.dumps({"checkpoint": str(args.checkpoint), "epoch": run.checkpoint["epoch"] + 1, **result}, indent=2))


def _cmd_recommend(args) -> None:
    run = _load_run(args)
    try:
        top = run.recommend(args.user, args.k)
        seen = int(run.seen(args.user).sum())
    except KeyError as e:
        raise UsageError(f"--user {args.user}: {e.args[0]} in this run's data") from None
    print(f"top {len(top)} for user {args.user} (of {run.split.num_items} items, {seen} seen):")
    for rank, (item, score) in enumerate(top, start=1):
        print(f"{rank:3d}. item {item}  score {score:.4f}")


def _cmd_data(args) -> None:
    from .data import download, load_dataset

    if args.data_command == "download":
        path = download(args.name, args.root)
        print(f"{args.name}: {path}")
    else:
        print(load_dataset(args.name).describe())


def main(argv=None) -> None:
    from .data import DataError
    from .ops import BackendUnavailable

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _cmd_train(args, argv)
        {"evaluate": _cmd_evaluate, "recommend": _cmd_recommend, "data": _cmd_data}[args.command](args)
    except (DataError, OSError, ValueError, KeyError, BackendUnavailable) as e:
        if args.debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
            message = f"{e.filename}: {e.strerror or message}"
        raise SystemExit(f"neumf-fast: {message.splitlines()[0] if message else type(e).__name__}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
