"""``neumf-fast evaluate`` and ``neumf-fast recommend``: commands on a trained run, by original ids."""

from __future__ import annotations

import json
from pathlib import Path

from . import flags
from .checks import UsageError, check_backend, check_device


def _run_flags(p) -> None:
    p.add_argument("checkpoint", type=Path, help="a run's best.pt or last.pt, or the run directory")


def _split_flag(p) -> None:
    p.add_argument("--split", type=Path, default=None, help="split file (default: split.npz beside the checkpoint)")


def add_parsers(add) -> None:
    """The ``evaluate`` and ``recommend`` subcommands, added with ``add(name, **kwargs)``."""
    e = add("evaluate", help="test metrics of a checkpoint (100 candidates, and full ranking)")
    _run_flags(e)
    flags.add_device_flags(e)
    _split_flag(e)

    r = add("recommend", help="top-K unseen items for a user, by original ids")
    _run_flags(r)
    r.add_argument("--user", required=True, help="the user's original id")
    r.add_argument("--k", type=flags.positive, default=10, help="how many items")
    flags.add_device_flags(r)
    _split_flag(r)


def load_run(args):
    """The run ``args.checkpoint`` names, on ``args.device`` with ``args.backend``, flags checked first."""
    from ..runs import load_run as _load_run

    check_device(args.device)
    if args.backend is not None:
        check_backend(args.backend, args.device)
    return _load_run(args.checkpoint, backend=args.backend, device=args.device, split=args.split)


def evaluate(args, argv=None) -> None:
    run = load_run(args)
    result = run.test_metrics()
    print(json.dumps({"checkpoint": str(args.checkpoint), "epoch": run.checkpoint["epoch"] + 1, **result}, indent=2))


def recommend(args, argv=None) -> None:
    run = load_run(args)
    try:
        top = run.recommend(args.user, args.k)
        seen = int(run.seen(args.user).sum())
    except KeyError as e:
        raise UsageError(f"--user {args.user}: {e.args[0]} in this run's data") from None
    print(f"top {len(top)} for user {args.user} (of {run.split.num_items} items, {seen} seen):")
    for rank, (item, score) in enumerate(top, start=1):
        print(f"{rank:3d}. item {item}  score {score:.4f}")
