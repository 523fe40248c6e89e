"""``neumf-fast export RUN --out model.pt2 [--k 10] [--aot]``: the run's scoring function as
``torch.export`` programs (scores, and top-K) with its id maps; see ``neumf_fast.export``."""

from __future__ import annotations

import sys
from pathlib import Path

from . import flags
from .checks import UsageError
from .run_cmds import load_run


def add_parser(add) -> None:
    e = add("export", help="the run's scoring as torch.export programs (+ id maps), loadable with torch alone")
    e.add_argument("checkpoint", type=Path, help="a run's best.pt or last.pt, or the run directory")
    e.add_argument("--out", type=Path, required=True, help="the scores program, e.g. model.pt2 (the top-K program "
                   "and the id maps are written beside it: model.topk.pt2, model.ids.json)")
    e.add_argument("--k", type=flags.positive, default=10, help="k of the top-K program")
    e.add_argument("--aot", action="store_true", help="also an AOTInductor package, model.aoti.pt2 (needs a C++ "
                   "compiler; about a minute)")
    e.add_argument("--split", type=Path, default=None, help="split file (default: split.npz beside the checkpoint)")


def check_writable(out: Path) -> None:
    """Before the export's work: ``--out`` and the files beside it can be written (each is
    opened for appending, which leaves an existing file as it is)."""
    from ..export import sibling

    for path in (out, sibling(out, "topk.pt2"), sibling(out, "ids.json")):
        created = not path.exists()
        try:
            with open(path, "ab"):
                pass
        except OSError as e:
            raise UsageError(f"--out {out}: cannot write {path}: {e.strerror}") from None
        if created:
            path.unlink()


def run(args, argv=None) -> None:
    from ..export import export_run

    if not args.out.name.endswith(".pt2"):
        raise UsageError(f"--out {args.out}: name it *.pt2 (torch.export's suffix)")
    if not args.out.parent.is_dir():
        raise UsageError(f"--out {args.out}: no directory {args.out.parent}")
    check_writable(args.out)
    args.device, args.backend = "cpu", None
    paths = export_run(load_run(args), args.out, k=args.k, aot=args.aot)
    for what, path in paths.items():
        print(f"{what}: {path}", file=sys.stderr)
