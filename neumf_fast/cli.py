"""``neumf-fast``: train, evaluate and recommend with NeuMF models; download MovieLens.

    neumf-fast train --model neumf --dataset synthetic --out runs/neumf
    neumf-fast evaluate runs/neumf/best.pt
    neumf-fast recommend runs/neumf/best.pt --user 42 --k 10
    neumf-fast data download ml-1m
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


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    from .train import TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(prog="neumf-fast", description="NeuMF (He et al. 2017) with fused kernels.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model; prints validation HR/NDCG per epoch and test metrics at the end")
    t.add_argument("--model", choices=list(models.MODELS), default=d.model)
    t.add_argument("--dataset", default=d.dataset,
                   help="synthetic | ml-100k | ml-1m | ml-10m | ml-20m | ml-25m | a ratings file or directory")
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--batch-size", type=_positive, default=d.batch_size)
    t.add_argument("--lr", type=float, default=None, help="default 0.001 × sqrt(batch / 256)")
    t.add_argument("--factors", type=_positive, default=d.factors, help="GMF factors (and SequenceNeuMF width)")
    t.add_argument("--layers", type=_layers, default=d.layers, help="MLP widths, first = 2 × MLP embedding (64,32,16,8)")
    t.add_argument("--neg", type=_positive, default=d.neg, help="negatives per positive")
    t.add_argument("--optimizer", choices=["adam", "sgd"], default=None, help="default adam; sgd with --pretrain")
    t.add_argument("--backend", default=d.backend, help="auto | triton | cuda | cpu | torch (NEUMF_FAST_BACKEND overrides)")
    t.add_argument("--device", default=d.device)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the fixed evaluation candidates")
    t.add_argument("--history-len", type=_positive, default=d.history_len, help="seq model: history length")
    t.add_argument("--threshold", type=float, default=None, help="keep ratings >= this as positives")
    t.add_argument("--pretrain", nargs=2, metavar=("GMF_CKPT", "MLP_CKPT"), default=None)
    t.add_argument("--alpha", type=float, default=d.alpha, help="pretraining's GMF weight in the last layer")
    t.add_argument("--out", type=Path, default=None, help="run directory (default runs/<model>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="bf16: autocast (CPU or GPU); fp16: autocast + GradScaler (CUDA only)")
    t.add_argument("--cuda-graphs", action="store_true",
                   help="capture the training step in CUDA graphs (torch.compile reduce-overhead); ignored off CUDA")
    t.add_argument("--nproc", type=_positive, default=1,
                   help="data-parallel processes on this machine (launches torchrun; gloo on CPU, NCCL on GPUs)")

    e = sub.add_parser("evaluate", help="test metrics of a checkpoint (100 candidates, and full ranking)")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--backend", default=None)
    e.add_argument("--device", default="cpu")
    e.add_argument("--split", type=Path, default=None, help="split file (default: split.npz beside the checkpoint)")

    r = sub.add_parser("recommend", help="top-K unseen items for a user, by original ids")
    r.add_argument("checkpoint", type=Path)
    r.add_argument("--user", required=True, help="the user's original id")
    r.add_argument("--k", type=_positive, default=10)
    r.add_argument("--backend", default=None)
    r.add_argument("--split", type=Path, default=None)

    data = sub.add_parser("data", help="datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("download", help="download and unpack a MovieLens archive into the cache")
    dl.add_argument("name")
    dl.add_argument("--root", type=Path, default=None, help="cache directory (default $NEUMF_FAST_DATA or ~/.cache/neumf_fast)")
    info = dsub.add_parser("info", help="read a dataset and print its size")
    info.add_argument("name")
    return parser


def _split_for(checkpoint: Path, given: Path | None):
    from .data import Split

    path = given or checkpoint.parent / "split.npz"
    if not path.exists():
        raise SystemExit(f"neumf-fast: {path} not found; pass --split with the run's split.npz")
    return Split.load(path)


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

    from .train import TrainConfig, fit

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args.nproc, argv)
    args.device = _init_distributed(args.device)

    config = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, factors=args.factors, layers=tuple(args.layers), neg=args.neg,
                         optimizer=args.optimizer, backend=args.backend, device=args.device, seed=args.seed,
                         split_seed=args.split_seed, history_len=args.history_len, threshold=args.threshold,
                         pretrain=tuple(args.pretrain) if args.pretrain else None, alpha=args.alpha,
                         cuda_graphs=args.cuda_graphs, precision=args.precision)
    if config.pretrain and config.model != "neumf":
        raise SystemExit("neumf-fast: --pretrain applies to --model neumf")
    out = args.out or Path("runs") / args.model
    try:
        result = fit(config, out, resume=args.resume, progress=not args.no_progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if not result:  # not rank 0
        return
    k = config.k
    best, test = result["best_valid"], result["test"]
    print(f"best validation epoch {best['epoch']}: HR@{k} {best[f'hr@{k}']:.4f}  NDCG@{k} {best[f'ndcg@{k}']:.4f}")
    print(f"test, 100 candidates: HR@{k} {test['candidates'][f'hr@{k}']:.4f}  NDCG@{k} {test['candidates'][f'ndcg@{k}']:.4f}")
    print(f"test, full ranking:   HR@{k} {test['full'][f'hr@{k}']:.4f}  NDCG@{k} {test['full'][f'ndcg@{k}']:.4f}")
    pop = result["popularity_test"]["candidates"]
    print(f"popularity baseline, 100 candidates: HR@{k} {pop[f'hr@{k}']:.4f}  NDCG@{k} {pop[f'ndcg@{k}']:.4f}")
    print(f"wrote {out}/best.pt, metrics.json, curves.png")


def _cmd_evaluate(args) -> None:
    from .train import load_model, test_metrics

    model, config, ckpt = load_model(args.checkpoint, backend=args.backend, device=args.device)
    split = _split_for(args.checkpoint, args.split)
    if split.fingerprint != ckpt["data_fingerprint"]:
        raise SystemExit(f"neumf-fast: {args.checkpoint} was trained on different data than this split")
    result = test_metrics(model, split, config, args.device)
    print(json.dumps({"checkpoint": str(args.checkpoint), "epoch": ckpt["epoch"] + 1, **result}, indent=2))


def _cmd_recommend(args) -> None:
    import numpy as np
    import torch

    from .data import NegativeSampler
    from .evaluate import UserInput
    from .train import load_model

    model, config, ckpt = load_model(args.checkpoint, backend=args.backend)
    split = _split_for(args.checkpoint, args.split)
    if split.fingerprint != ckpt["data_fingerprint"]:
        raise SystemExit(f"neumf-fast: {args.checkpoint} was trained on different data than this split")
    ids = split.user_ids
    try:
        wanted = np.array(args.user).astype(ids.dtype)
    except ValueError:
        raise SystemExit(f"neumf-fast: user {args.user!r} is not a valid id") from None
    pos = int(np.searchsorted(ids, wanted))
    if pos >= len(ids) or ids[pos] != wanted:
        raise SystemExit(f"neumf-fast: unknown user {args.user}")
    u = torch.tensor([pos])
    seen = NegativeSampler(*split.all_positives(), split.num_items, split.num_users).positive_mask(u)[0]
    k = min(args.k, int((~seen).sum()))
    model.eval()
    scores = model.score(UserInput(split, model, config.history_len)(u), torch.arange(split.num_items))[0]
    scores = scores.masked_fill(seen, float("-inf"))
    top = scores.topk(k)
    print(f"top {k} for user {args.user} (of {split.num_items} items, {int(seen.sum())} seen):")
    for rank, (item, score) in enumerate(zip(top.indices.tolist(), top.values.tolist()), start=1):
        print(f"{rank:3d}. item {split.item_ids[item]}  score {score:.4f}")


def _cmd_data(args) -> None:
    from .data import download, load_dataset

    if args.data_command == "download":
        path = download(args.name, args.root)
        print(f"{args.name}: {path}")
    else:
        print(load_dataset(args.name).describe())


def main(argv=None) -> None:
    from .data import DataError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _cmd_train(args, argv)
        {"evaluate": _cmd_evaluate, "recommend": _cmd_recommend, "data": _cmd_data}[args.command](args)
    except (DataError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"neumf-fast: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
