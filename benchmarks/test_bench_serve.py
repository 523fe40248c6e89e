"""Serving benchmarks (CPU): all-user top-10 on an ML-1M-sized run, single-request latency of the
exported program, and peak memory of ``recommend --all``.  Same run, same threads for every
provider of a case; ``serve_report.py`` prints the ratios to each case's baseline.

- ``top10-all-users``: the paper's NeuMF (factors 8, layers 64-32-16-8; random weights) on
  6,040 users x 3,706 items, seen items excluded, k = 10.  Providers: ``forward-loop`` (baseline:
  the model's ``forward`` over every user x item pair, 64 users a batch, then ``torch.topk``; what
  RecBole's ``full_sort_predict`` does), ``per-user-recommend`` (today's ``Run.recommend`` per user,
  timed on a sample of users and scaled to all, which the row says), ``recommend_many`` fp32 and bf16.
- ``one-user-latency``: one user against the whole catalogue and against 100 candidates, the
  exported program (``torch.export.load(...).module()``, and its AOTInductor package) against the
  eager ``model.score``; one
  thread (a serving process runs a request per core).
- ``..., paired``: the same providers timed in alternating rounds of one run (who goes first
  alternates), so that the shared VM's load, which moves single runs by 2x and more, slows each
  alike; the ratios of these medians are the ones to read against a target.
- ``peak-rss``: ``neumf-fast recommend`` in a subprocess, its peak RSS (``ru_maxrss`` of the
  child, measured by a fresh parent), less the RSS of a process that imports torch and neumf_fast
  and the model's parameter bytes.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path
from time import perf_counter

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from serve_runs import ML1M, ML20M, make_run, model_bytes  # noqa: E402

import neumf_fast  # noqa: E402
from neumf_fast.parallel import configure_threads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K = 10
SAMPLE = 300  # users timed for the per-user loop


@pytest.fixture(scope="module")
def ml1m(tmp_path_factory):
    run = neumf_fast.load_run(make_run(tmp_path_factory.mktemp("ml1m"), **ML1M))
    run.seen(run.user_ids[:1])  # build the seen-items index once, outside the timings
    return run


def _top10_case(benchmark, provider, fn, rounds=3, **extra):
    threads = configure_threads(None, 16384)  # as train and recommend --all pick them for these blocks
    benchmark.extra_info.update(case="top10-all-users", shape="6040x3706", provider=provider, threads=threads, **extra)
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)


def _forward_loop(run):
    """The model's ``forward`` over every user x item pair, 64 users a batch, then ``torch.topk``."""
    model, split = run.model, run.split
    items = torch.arange(split.num_items)
    out = []
    with torch.no_grad():
        for start in range(0, split.num_users, 64):
            users = torch.arange(start, min(start + 64, split.num_users))
            pairs_u = users.repeat_interleave(len(items))
            scores = model(pairs_u, items.repeat(len(users))).view(len(users), -1)
            scores = scores.masked_fill(run._seen.positive_mask(users), float("-inf"))
            out.append(scores.topk(K, dim=1).indices)
    return torch.cat(out)


def test_top10_forward_loop(benchmark, ml1m):
    _top10_case(benchmark, "forward-loop", lambda: _forward_loop(ml1m), rounds=1, baseline=True)


def test_top10_per_user_recommend(benchmark, ml1m):
    sample = ml1m.user_ids[np.linspace(0, ml1m.split.num_users - 1, SAMPLE).astype(int)]
    _top10_case(benchmark, "per-user-recommend", lambda: [ml1m.recommend(u, K) for u in sample], rounds=1,
                scaled_from=f"{SAMPLE} users", scale=ml1m.split.num_users / SAMPLE)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_top10_recommend_many(benchmark, ml1m, precision):
    table = _top10_case(benchmark, f"recommend_many-{precision}", lambda: ml1m.recommend_many(None, K, precision=precision))
    assert len(table) == ml1m.split.num_users * K
    if precision == "bf16":  # the ranking change against fp32, reported beside the time
        fp32 = ml1m.recommend_many(None, K)
        same = [len(set(a) & set(b)) / K for a, b in zip(fp32.item.to_numpy().reshape(-1, K),
                                                           table.item.to_numpy().reshape(-1, K))]
        order = float((fp32.item.to_numpy() == table.item.to_numpy()).mean())
        benchmark.extra_info.update(top10_overlap_with_fp32=float(np.mean(same)), same_item_at_rank=order)


def _paired(benchmark, fns: dict, rounds: int, calls: int = 1) -> dict:
    """``fns`` timed in alternating rounds of ``calls`` calls each (the order reversed every other
    round); the median seconds per call of each, and the rounds."""
    times = {p: [] for p in fns}

    def paired():
        for r in range(rounds):
            for p in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                begin = perf_counter()
                for _ in range(calls):
                    fns[p]()
                times[p].append((perf_counter() - begin) / calls)

    benchmark.pedantic(paired, rounds=1, iterations=1)
    return {p: {"seconds": statistics.median(t), "rounds": len(t), "calls_per_round": calls} for p, t in times.items()}


def test_top10_paired(benchmark, ml1m):
    """The forward loop and ``recommend_many`` fp32 over every user, alternating."""
    threads = configure_threads(None, 16384)
    fns = {"forward-loop": lambda: _forward_loop(ml1m), "recommend_many-fp32": lambda: ml1m.recommend_many(None, K)}
    paired = _paired(benchmark, fns, rounds=4)
    benchmark.extra_info.update(case="top10-all-users, paired", shape="6040x3706", provider="+".join(fns),
                                threads=threads, paired=paired, baseline_provider="forward-loop")


@pytest.fixture(scope="module")
def exported(ml1m, tmp_path_factory):
    from neumf_fast.export import export_run

    out = tmp_path_factory.mktemp("export") / "model.pt2"
    paths = export_run(ml1m, out, k=K, aot=True)  # AOTInductor: a C++ compile, about a minute
    return {"exported": torch.export.load(out).module(),
            "exported-aoti": torch._inductor.aoti_load_package(str(paths["aoti"]))}


@pytest.mark.parametrize("candidates", [3706, 100])
@pytest.mark.parametrize("provider", ["eager-score", "exported", "exported-aoti"])
def test_one_user_latency(benchmark, ml1m, exported, provider, candidates):
    torch.set_num_threads(1)
    user, items = torch.tensor([17]), torch.arange(candidates) * (3706 // candidates)
    fn = exported.get(provider, ml1m.model.score)
    with torch.no_grad():
        err = float((fn(user, items) - ml1m.model.score(user, items)).abs().max())
        benchmark.extra_info.update(case=f"one-user-latency, {candidates} candidates", shape=f"1x{candidates}",
                                    provider=provider, threads=1, baseline=provider == "eager-score",
                                    max_abs_error_vs_score=err)
        benchmark.pedantic(fn, args=(user, items), rounds=200, iterations=5, warmup_rounds=10)


@pytest.mark.parametrize("candidates", [3706, 100])
def test_one_user_latency_paired(benchmark, ml1m, exported, candidates):
    """``score``, the exported program and the AOTInductor package, alternating, one thread."""
    torch.set_num_threads(1)
    user, items = torch.tensor([17]), torch.arange(candidates) * (3706 // candidates)
    fns = {"eager-score": ml1m.model.score, **exported}
    with torch.no_grad():
        for fn in fns.values():
            fn(user, items)
        paired = _paired(benchmark, {p: (lambda fn=fn: fn(user, items)) for p, fn in fns.items()}, rounds=40, calls=25)
    benchmark.extra_info.update(case=f"one-user-latency, {candidates} candidates, paired", shape=f"1x{candidates}",
                                provider="+".join(fns), threads=1, paired=paired, baseline_provider="eager-score")


RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def _peak_rss(argv) -> int:
    done = subprocess.run([sys.executable, "-c", RSS, *argv], capture_output=True, text=True, cwd=ROOT, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.parametrize("size, users", [("ml-1m", "all"), ("ml-1m", 3000), ("ml-20m", 3000)])
def test_peak_rss(benchmark, tmp_path_factory, size, users):
    dims = ML1M if size == "ml-1m" else ML20M
    run_dir = tmp_path_factory.getbasetemp() / f"rss-{size}"
    if not (run_dir / "best.pt").exists():
        make_run(run_dir, **dims)
    argv = [sys.executable, "-m", "neumf_fast.cli", "recommend", str(run_dir), "--k", str(K), "--no-progress",
            "--out", str(run_dir / "top.parquet")]
    if users == "all":
        argv.append("--all")
    else:
        ids = run_dir / "users.txt"
        ids.write_text("\n".join(map(str, np.linspace(0, dims["num_users"] - 1, users).astype(int))) + "\n")
        argv += ["--users", str(ids)]
    base = _peak_rss([sys.executable, "-c", "import torch, neumf_fast.runs, neumf_fast.cli"])
    peak = benchmark.pedantic(lambda: _peak_rss(argv), rounds=1, iterations=1)
    model = model_bytes(run_dir)
    benchmark.extra_info.update(case="peak-rss", shape=f"{dims['num_users']}x{dims['num_items']}", provider="recommend",
                                users=users, interactions=dims["interactions"], peak_rss=peak, import_rss=base,
                                model_bytes=model, above_model=peak - base - model)
