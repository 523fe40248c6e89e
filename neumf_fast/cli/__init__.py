"""``neumf-fast``: train, evaluate and recommend with NeuMF models; download MovieLens.

    neumf-fast train --model neumf --dataset synthetic --out runs/neumf
    neumf-fast evaluate runs/neumf/best.pt
    neumf-fast recommend runs/neumf/best.pt --user 42 --k 10
    neumf-fast recommend runs/neumf --all --k 10 --out top10.parquet
    neumf-fast export runs/neumf --out model.pt2
    neumf-fast data download ml-1m
    neumf-fast data info ml-100k

Every flag is checked before any work starts.  A user error (a bad flag, a missing or damaged
file, a backend that cannot run on the device) prints one line naming the problem and the fix
and exits non-zero; ``--debug`` shows the traceback instead.

Each command lives in its own module (``train_cmd``, ``run_cmds``, ``data_cmd``): its flags, its
checks and what it runs; ``flags`` holds the argument types they share, ``checks`` the checks.
"""

from __future__ import annotations

import argparse
import sys

from . import data_cmd, export_cmd, flags, run_cmds, train_cmd

# every subcommand: what runs it, called as fn(args, argv)
COMMANDS = {"train": train_cmd.run, "evaluate": run_cmds.evaluate, "recommend": run_cmds.recommend,
            "export": export_cmd.run, "data": data_cmd.run}


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show a traceback for errors instead of one line")
    top = argparse.ArgumentParser(prog="neumf-fast", description="NeuMF (He et al. 2017) with fused kernels.")
    sub = top.add_subparsers(dest="command", required=True)
    add = lambda name, **kw: sub.add_parser(name, parents=[common], formatter_class=flags.Formatter, **kw)
    train_cmd.add_parser(add)
    run_cmds.add_parsers(add)
    export_cmd.add_parser(add)
    data_cmd.add_parser(add, common)
    return top


def main(argv=None) -> None:
    from ..data import DataError
    from ..ops import BackendUnavailable

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, argv)
    except (DataError, OSError, ValueError, KeyError, BackendUnavailable) as e:
        if args.debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if isinstance(e, OSError) and e.filename and e.strerror:  # "path: reason", not "[Errno 21] reason: 'path'"
            message = f"{e.filename}: {e.strerror}"
        raise SystemExit(f"neumf-fast: {message.splitlines()[0] if message else type(e).__name__}") from None
