"""The first calls of a fresh process: what a user waits for before the first forward returns
and before a training run's first steps are done.  ``test_bench_gpu.py::test_first_call`` runs
this in a subprocess with empty Triton and Inductor caches, so a JIT compiles for real.

    TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) \
        python benchmarks/first_call.py eager cuda triton [--rows FILE]

For each provider, in the order given, it prints one JSON line as soon as it is measured (and
with ``--rows`` appends it to FILE as a benchmark row, ``test_bench_gpu.py``'s JSONL shape, for
``report.py --gpu-table``), so a run stopped at its deadline keeps what it finished:

- ``forward``: the design's first stage (B=4096 L=10 D=H=128, fp32, under ``no_grad``): the
  first call, and the median of the next 5 (the steady state; their difference is the compile
  and first-touch cost);
- ``training``: what a NeuMF training run (ML-1M-sized tables, the paper's factors 8 and
  layers [64, 32, 16, 8], fused Adam) runs before its loop is warm: ``train_epoch`` over 5,096
  samples at batch 4096 (a full batch and a ragged last one of 1,000), then an evaluation-sized
  forward (6,040 users x 100 candidates); the first pass, and a second.

``eager`` is the user's code: ``baselines.PlainFirstHalf`` for the forward, ``neumf_fast.NeuMF``
on the PyTorch reference (``backend="torch"``: ``nn.Embedding`` lookups and slicing) for
training.  The CUDA context and cuBLAS are started before anything is timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from baselines import PlainFirstHalf, fused_twin  # noqa: E402
from neumf_fast.models import NeuMF  # noqa: E402
from neumf_fast.train import train_epoch  # noqa: E402


def _seconds(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def forward(provider: str) -> dict:
    torch.manual_seed(0)
    plain = PlainFirstHalf(128, 128).cuda()
    module = plain if provider == "eager" else fused_twin(plain, backend=provider)
    user, item = torch.randn(4096, 10, 128, device="cuda"), torch.randn(4096, 128, device="cuda")
    mask = torch.rand(4096, 10, device="cuda") > 0.2
    call = torch.no_grad()(lambda: module(user, item, mask))
    first = _seconds(call)
    steady = statistics.median(_seconds(call) for _ in range(5))
    return dict(first_s=first, steady_s=steady)


def training(provider: str) -> dict:
    torch.manual_seed(0)
    model = NeuMF(6040, 3706, 8, (64, 32, 16, 8), backend="torch" if provider == "eager" else provider).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    samples = (torch.randint(0, 6040, (5096,), device="cuda", generator=g),
               torch.randint(0, 3706, (5096,), device="cuda", generator=g),
               torch.randint(0, 2, (5096,), device="cuda", generator=g).float())
    users = torch.randint(0, 6040, (6040 * 100,), device="cuda", generator=g)
    items = torch.randint(0, 3706, (6040 * 100,), device="cuda", generator=g)

    def run():
        train_epoch(model, optimizer, samples, 4096)
        with torch.no_grad():
            model(users, items)

    return dict(first_s=_seconds(run), steady_s=_seconds(run))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("providers", nargs="*", default=["eager", "cuda", "triton"])
    parser.add_argument("--rows", help="append each measurement to this JSONL file as a benchmark row")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("first_call.py: no CUDA device")
    warm = torch.nn.Linear(8, 8).cuda()  # CUDA context, cuBLAS, the caching allocator: not ours to count
    warm(torch.ones(2, 8, device="cuda")).sum().backward()
    torch.cuda.synchronize()
    for provider in args.providers:
        for what, fn in (("forward", forward), ("training", training)):
            try:
                row = fn(provider)
            except Exception as e:  # a backend that cannot run here: say why, go on with the next
                row = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
            print(json.dumps(dict(provider=provider, what=what, **row)), flush=True)
            if args.rows:
                info = dict(provider=provider, direction="first call", dtype="float32", shape=f"first call: {what}",
                            device=torch.cuda.get_device_name(), **row)
                with open(args.rows, "a") as f:
                    f.write(json.dumps(dict(name=f"first_call[{provider}-{what}]", extra_info=info,
                                            stats=dict(median=row.get("first_s")))) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
