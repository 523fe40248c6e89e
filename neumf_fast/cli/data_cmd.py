"""``neumf-fast data``: download a MovieLens archive, or read a dataset and print its size."""

from __future__ import annotations

from pathlib import Path

from . import flags


def add_parser(add, common) -> None:
    """The ``data`` subcommand and its own subcommands, added with ``add(name, **kwargs)``."""
    data = add("data", help="datasets: download, info")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("download", parents=[common], formatter_class=flags.Formatter,
                         help="download and unpack a MovieLens archive into the cache")
    dl.add_argument("name", help="ml-100k | ml-1m | ml-10m | ml-20m | ml-25m | ml-latest-small")
    dl.add_argument("--root", type=Path, default=None, help="cache directory (default $NEUMF_FAST_DATA or ~/.cache/neumf_fast)")
    info = dsub.add_parser("info", parents=[common], formatter_class=flags.Formatter, help="read a dataset and print its size")
    info.add_argument("name", help="synthetic, a MovieLens name, or a ratings file or directory")


def run(args, argv=None) -> None:
    from ..data import download, load_dataset

    if args.data_command == "download":
        path = download(args.name, args.root)
        print(f"{args.name}: {path}")
    else:
        print(load_dataset(args.name).describe())
