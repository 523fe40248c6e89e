"""``neumf-fast evaluate`` and ``neumf-fast recommend``: commands on a trained run, by original ids.

    neumf-fast recommend runs/neumf --user 42 --k 10                # one user, printed
    neumf-fast recommend runs/neumf --all --k 10 --out top10.parquet # every user, streamed to a file
    neumf-fast recommend runs/neumf --users ids.txt --out top10.csv --skip-unknown
    neumf-fast recommend runs/seq --history 1193,661,914 --k 10      # a user the run never saw
    neumf-fast recommend runs/seq --histories new.jsonl --out top10.csv --skip-unknown
"""

from __future__ import annotations

import json
import re
import sys
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

    r = add("recommend", help="top-K unseen items for one user, many, or all, by original ids")
    _run_flags(r)
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="one user's original id (printed)")
    who.add_argument("--users", type=Path, help="a file of original user ids, one a line (needs --out)")
    who.add_argument("--all", action="store_true", help="every user of the run (needs --out)")
    who.add_argument("--history", help="seq runs: one user's history, original item ids oldest first, e.g. "
                     "1193,661,914 (printed)")
    who.add_argument("--histories", type=Path, help="seq runs: a file of histories, .csv, .tsv, .jsonl or .parquet: "
                     "a user column and a list column (items), or one user,item[,timestamp] row per interaction "
                     "(needs --out)")
    r.add_argument("--k", type=flags.positive, default=10, help="how many items")
    r.add_argument("--out", type=Path, help="with --users/--all/--histories: the output, .csv, .jsonl or .parquet "
                   "(rows: user, rank, item, score)")
    r.add_argument("--keep-seen", action="store_true", help="do not leave out the items each user interacted with "
                   "(the history's items)")
    r.add_argument("--skip-unknown", action="store_true", help="skip user ids not in the run's data, or with "
                   "--history/--histories item ids not in it (count on stderr)")
    r.add_argument("--unknown-users", choices=["error", "popular"], default="error",
                   help="popular: answer a user id the run does not know (or a history with no item it knows) with "
                   "the most popular items, counted on stderr; error: stop")
    r.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="dtype of the tower after its first layer (bf16 can reorder near-ties)")
    r.add_argument("--threads", type=flags.threads, default=None, help="torch threads (auto: as train picks them)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar (there is none off a terminal)")
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
    """Leave-one-out test metrics; for a seq run also the held-out new users' (model and popularity)."""
    run = load_run(args)
    result = {"checkpoint": str(args.checkpoint), "epoch": run.checkpoint["epoch"] + 1, **run.test_metrics()}
    if run.config.model == "seq":
        result["new_users"] = run.new_user_metrics()
        if result["new_users"] is None:
            print("neumf-fast: this run holds no new users out of training; train with --new-users 0.1 to evaluate "
                  "cold start", file=sys.stderr)
    print(json.dumps(result, indent=2))


def recommend(args, argv=None) -> None:
    if args.user is None and args.history is None:
        return recommend_many(args)
    run = load_run(args)
    flag = f"--user {args.user}" if args.history is None else f"--history {args.history}"
    counts = {}
    try:
        if args.history is not None:
            run.check_takes_histories()
            history = [v for v in re.split(r"[\s,;]+", args.history.strip()) if v]
            top = run.recommend_many(None, args.k, histories=[history], exclude_seen=not args.keep_seen,
                                     skip_unknown=args.skip_unknown, unknown_users=args.unknown_users, counts=counts)
            top = list(zip(top.item, top.score))
            about = f"the history ({len(history) - counts['unknown_items']} known items)"
        else:
            top = run.recommend(args.user, args.k, exclude_seen=not args.keep_seen, unknown_users=args.unknown_users)
            about = f"user {args.user}"
            if run.find_users([args.user], skip_unknown=True)[2].size:
                counts["popular"] = 1
            else:
                about += f" (of {run.split.num_items} items, {int(run.seen(args.user).sum())} seen)"
    except ValueError as e:  # a history for a model of user ids
        raise UsageError(f"{flag}: {e}") from None
    except KeyError as e:
        where = " in this run's data" if args.history is None else ""
        raise UsageError(f"{flag}: {e.args[0]}{where} ({_unknown_hint(args)})") from None
    if counts.get("popular"):
        about += " (unknown: the most popular items; score = training interactions)"
    report_counts(counts)
    print(f"top {len(top)} for {about}:")
    for rank, (item, score) in enumerate(top, start=1):
        print(f"{rank:3d}. item {item}  score {score:.4f}")


def _unknown_hint(args) -> str:
    if args.history is not None or args.histories is not None:
        return "--skip-unknown skips unknown items; --unknown-users popular answers a history with none known"
    return "--unknown-users popular answers unknown users" + ("; --skip-unknown skips them" if args.users else "")


def report_counts(counts: dict) -> None:
    """The fallbacks and skips of a recommendation, one stderr line each."""
    if counts.get("unknown_items"):
        print(f"neumf-fast: skipped {counts['unknown_items']} unknown item ids", file=sys.stderr)
    if counts.get("popular"):
        n = counts["popular"]
        print(f"neumf-fast: {n} user{'s' * (n != 1)} got the popular fallback (unknown to this run)", file=sys.stderr)


def _read_user_ids(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UsageError(f"--users {path}: {e.strerror}") from None
    ids = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise UsageError(f"--users {path}: no user ids in it (one id a line)")
    return ids


def recommend_many(args) -> None:
    from ..parallel import configure_threads
    from .outputs import BlockWriter, output_format

    if args.out is None:
        raise UsageError("--users, --all and --histories write a file: add --out FILE (.csv, .jsonl or .parquet)")
    output_format(args.out)
    if args.users and args.skip_unknown and args.unknown_users == "popular":
        raise UsageError("--skip-unknown and --unknown-users popular both say what unknown users get; choose one")
    users = _read_user_ids(args.users) if args.users else None
    run = load_run(args)
    histories = None
    if args.histories is not None:
        from ..data.histories import read_histories

        try:
            run.check_takes_histories()
        except ValueError as e:
            raise UsageError(f"--histories {args.histories}: {e}") from None
        histories = read_histories(args.histories)
    elif users is not None and args.unknown_users != "popular":
        try:
            _, users, unknown = run.find_users(users, skip_unknown=args.skip_unknown)
        except KeyError as e:
            raise UsageError(f"--users {args.users}: {e.args[0]} in this run's data ({_unknown_hint(args)})") from None
        if len(unknown):
            print(f"neumf-fast: skipped {len(unknown)} unknown user ids", file=sys.stderr)
        if not len(users):
            raise UsageError(f"--users {args.users}: none of its ids is a user of this run")
    scorer = run.scorer(args.precision)
    configure_threads(args.threads, scorer.user_block * scorer.item_block)
    writer, counts = BlockWriter(args.out), {}
    try:
        for frame in run.iter_recommendations(users, args.k, histories=histories, exclude_seen=not args.keep_seen,
                                              precision=args.precision, skip_unknown=args.skip_unknown,
                                              unknown_users=args.unknown_users, counts=counts,
                                              progress=not args.no_progress and sys.stderr.isatty()):
            writer.write(frame)
    except KeyError as e:
        writer.tmp.unlink(missing_ok=True)
        raise UsageError(f"--histories {args.histories}: {e.args[0]} ({_unknown_hint(args)})") from None
    except BaseException:
        writer.tmp.unlink(missing_ok=True)
        raise
    writer.close()
    report_counts(counts)
    count = run.split.num_users if users is None and histories is None else len(histories if users is None else users)
    print(f"top {args.k} of {count} users written to {args.out} ({writer.rows} rows)", file=sys.stderr)
