"""Batch recommendation and whole-catalogue scoring: the streaming top-K equals the per-user
``Run.recommend`` (ties aside), the scorer equals ``model.score`` for every model on shapes that
are not block multiples, memory is bounded by the blocks, unknown ids are named, and every output
format round-trips."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from neumf_fast import evaluate, models
from neumf_fast.cli import main as cli_main
from neumf_fast.scoring import CatalogueScorer, block_sizes

from conftest import tiny_run

# fp32 tolerance: the scorer sums the same products as model.score in another order (the GMF
# term as a matmul, the prediction layer split), so logits agree to a few float32 ulps of
# numbers of size ~1; 1e-5 is ~100 ulps and still far below any gap between distinct scores here.
ATOL = 1e-5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run"), num_users=90, num_items=307, num_interactions=3000)


def _models(num_users=13, num_items=37):
    torch.manual_seed(0)
    made = {"gmf": models.GMF(num_users, num_items, 3), "mlp": models.MLP(num_users, num_items, (10, 6, 3)),
            "neumf": models.NeuMF(num_users, num_items, 3, (10, 6, 3)),
            "seq": models.SequenceNeuMF(num_items, 4, history_items=num_items)}
    with torch.no_grad():  # the paper's init zeroes every bias: give them values, so a dropped bias shows
        for model in made.values():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(std=0.3)
    return made


@pytest.mark.parametrize("name", ["gmf", "mlp", "neumf", "seq"])
@pytest.mark.parametrize("num_users, user_block, item_block", [(1, None, None), (3, 2, 5), (13, 4, 36), (13, 13, 1)])
def test_scorer_equals_model_score(name, num_users, user_block, item_block):
    model = _models()[name].eval()
    user = torch.arange(num_users) if name != "seq" else torch.randint(0, 38, (num_users, 5))
    scorer = CatalogueScorer(model, user_block=user_block, item_block=item_block)
    got, want = scorer.scores(user), model.score(user, torch.arange(37))
    err = (got - want).abs()
    assert err.max() <= ATOL, f"max abs error {err.max():.3g} at {divmod(int(err.argmax()), 37)}"
    # the top-K of the stream is the top-K of the whole row
    values, idx = scorer.top_k(user, 5)
    torch.testing.assert_close(values, want.topk(5, dim=1).values, atol=ATOL, rtol=0)
    torch.testing.assert_close(want.gather(1, idx), values, atol=ATOL, rtol=0)


def test_bf16_scores_are_close_and_their_ranking_change_is_measurable():
    model = _models(200, 1000)["neumf"].eval()
    users = torch.arange(200)
    fp32, bf16 = CatalogueScorer(model).scores(users), CatalogueScorer(model, precision="bf16").scores(users)
    # flash-attention's rule: the bf16 tower's error is about that of torch's own bf16 forward
    torch_bf16 = model.to(torch.bfloat16).score(users, torch.arange(1000)).float()
    model.float()
    assert (bf16 - fp32).abs().max() <= 2 * (torch_bf16 - fp32).abs().max() + 1e-6
    assert not torch.equal(bf16, fp32)  # it did run in bf16


def test_blocks_bound_memory(monkeypatch, run):
    """The largest score block is user_block x item_block, whatever the number of users."""
    largest = []
    original = CatalogueScorer.item_block_scores

    def counted(self, gmf_u, first_u, sl):
        out = original(self, gmf_u, first_u, sl)
        largest.append(out.numel())
        return out

    monkeypatch.setattr(CatalogueScorer, "item_block_scores", counted)
    frames = list(run.iter_recommendations(None, 5, user_block=7))
    scorer = run.scorer(user_block=7)
    assert max(largest) <= 7 * scorer.item_block
    assert len(frames) == -(-run.split.num_users // 7)
    ub, ib = block_sizes(32, 3706)
    assert ub * ib * 32 * 4 <= 8 * 1024 * 1024  # a block of the ML-1M tower input is a few MiB, not users x items


def test_recommend_many_equals_per_user_recommend(run):
    table = run.recommend_many(None, 10)
    assert list(table.columns) == ["user", "rank", "item", "score"]
    assert set(table.user) == set(run.user_ids.tolist())
    for user, rows in table.groupby("user"):
        want = run.recommend(user, 10)
        got = list(zip(rows.item, rows.score))
        assert len(got) == len(want)
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=ATOL, rtol=0)
        # equal rankings, ties aside: a differing item must have a score within ATOL of the expected one
        for (gi, gs), (wi, ws) in zip(got, want):
            assert gi == wi or abs(gs - ws) <= ATOL, (user, got, want)
        seen = set(run.item_ids[run.seen(user)[0].numpy()].tolist())
        assert not seen & set(rows.item)


def test_keep_seen_ranks_every_item(run):
    user = run.user_ids[0]
    kept = run.recommend_many([user], run.split.num_items + 5, exclude_seen=False)
    assert len(kept) == run.split.num_items  # k is capped at the catalogue
    scores = run.score([user], run.item_ids)[0]
    np.testing.assert_allclose(np.sort(kept.score.to_numpy())[::-1], np.sort(scores.numpy())[::-1], atol=ATOL)


def test_unknown_users_are_named_or_skipped(run):
    known = run.user_ids[:2].tolist()
    with pytest.raises(KeyError, match="2 unknown user ids: 999991, 999992"):
        run.recommend_many(known + [999991, 999992])
    table = run.recommend_many(known + [999991], 3, skip_unknown=True)
    assert sorted(set(table.user)) == sorted(known)
    with pytest.raises(ValueError, match="no user ids"):
        run.recommend_many([])


def test_evaluate_full_is_unchanged_by_the_shared_scorer(run, monkeypatch):
    new = evaluate.evaluate_full(run.model, run.split, "test")

    class ViaScore:  # the old path: model.score against every item
        def __init__(self, model, items):
            self.model, self.items = model, items

        def scores(self, users):
            return self.model.score(users, self.items)

    monkeypatch.setattr(evaluate, "CatalogueScorer", ViaScore)
    assert evaluate.evaluate_full(run.model, run.split, "test") == pytest.approx(new, abs=1e-6)


def _read(path):
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".jsonl":
        return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])
    return pd.read_parquet(path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_cli_all_users_in_every_format(run, tmp_path, suffix, capsys):
    run_dir = run_dir_of(run)
    out = tmp_path / f"top{suffix}"
    cli_main(["recommend", str(run_dir), "--all", "--k", "4", "--out", str(out), "--no-progress"])
    got = _read(out)
    want = run.recommend_many(None, 4)
    assert list(got.columns) == ["user", "rank", "item", "score"]
    assert got.user.tolist() == want.user.tolist() and got.item.tolist() == want.item.tolist()
    assert got["rank"].tolist() == want["rank"].tolist()
    np.testing.assert_allclose(got.score, want.score, rtol=1e-6)
    assert "rows)" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_block_writer_appends_blocks(tmp_path, suffix):
    from neumf_fast.cli.outputs import BlockWriter

    frames = [pd.DataFrame({"user": [u, u], "rank": [1, 2], "item": [10 + u, 20 + u], "score": [0.5, 0.25]})
              for u in range(3)]
    writer = BlockWriter(tmp_path / f"out{suffix}")
    for frame in frames:
        writer.write(frame)
    writer.close()
    got = _read(tmp_path / f"out{suffix}")
    pd.testing.assert_frame_equal(got, pd.concat(frames, ignore_index=True), check_dtype=False)
    empty = BlockWriter(tmp_path / f"empty{suffix}")
    empty.close()
    assert len(_read(tmp_path / f"empty{suffix}")) == 0 if suffix != ".jsonl" else (tmp_path / "empty.jsonl").read_text() == ""


def run_dir_of(run):
    return run.checkpoint_path.parent


def test_cli_users_file_unknown_ids(run, tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# users\n{run.user_ids[3]}\n999991\n{run.user_ids[5]}\n")
    out = tmp_path / "top.csv"
    argv = ["recommend", str(run_dir_of(run)), "--users", str(ids), "--out", str(out)]
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert "1 unknown user ids: 999991" in str(e.value.code) and "--skip-unknown" in str(e.value.code)
    assert not out.exists()
    cli_main(argv + ["--skip-unknown"])
    assert "skipped 1 unknown user ids" in capsys.readouterr().err
    assert sorted(set(pd.read_csv(out).user)) == sorted([run.user_ids[3], run.user_ids[5]])


@pytest.mark.parametrize("argv, message", [
    (["--all"], "add --out FILE"),
    (["--all", "--out", "top.txt"], "unknown suffix '.txt'"),
    (["--users", "missing.txt", "--out", "top.csv"], "--users missing.txt"),
])
def test_cli_bad_batch_flags_are_one_line(run, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli_main(["recommend", str(run_dir_of(run))] + argv)
    assert message in str(e.value.code)


def _assert_rankings_equal_per_user_recommend(run, table):
    """Each user's rows equal ``run.recommend`` of that user, ties aside, and leave seen items out."""
    for user, rows in table.groupby("user"):
        want = run.recommend(user, 10)
        got = list(zip(rows.item, rows.score))
        assert len(got) == len(want)
        for (gi, gs), (wi, ws) in zip(got, want):  # a differing item must tie with the expected one
            assert gi == wi or abs(gs - ws) <= ATOL, (user, got, want)
        assert not set(run.item_ids[run.seen(user)[0].numpy()].tolist()) & set(rows.item)


def test_recommend_many_on_tiles_and_worker_threads_equals_per_user_recommend(run, monkeypatch):
    """The all-user path as it runs at ML-1M size: several tiles a call, taken by two worker
    threads that each run torch on one thread, and several item blocks a tile, the last short."""
    import threading

    from neumf_fast import scoring

    monkeypatch.setattr(scoring, "block_sizes", lambda *args, **kw: (4, 50))  # 307 items: 6 blocks of 50 and 7
    seen_by = set()
    original = CatalogueScorer.item_block_scores

    def spied(self, gmf_u, first_u, sl):
        seen_by.add((threading.get_ident(), torch.get_num_threads()))
        return original(self, gmf_u, first_u, sl)

    monkeypatch.setattr(CatalogueScorer, "item_block_scores", spied)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        scorer = run.scorer()
        assert (scorer.threads, scorer.user_tile, scorer.item_block, scorer.user_block) == (2, 4, 50, 32)
        table = run.recommend_many(None, 10)
        assert torch.get_num_threads() == 2  # put back after every call
    finally:
        torch.set_num_threads(previous)
    assert set(table.user) == set(run.user_ids.tolist())
    _assert_rankings_equal_per_user_recommend(run, table)
    workers = {ident for ident, _ in seen_by}
    assert threading.get_ident() not in workers and len(workers) >= 2, seen_by
    assert {threads for _, threads in seen_by} == {1}


@pytest.mark.parametrize("name", ["gmf", "mlp", "mlp-one-layer", "neumf", "seq"])
def test_worker_threads_score_as_model_score(name):
    """Tiles of 5 users on 3 workers, 8 items a block: scores and top-K as ``model.score``."""
    made = _models()
    if name == "mlp-one-layer":  # no tower layer after the first: the prediction reads the first layer
        torch.manual_seed(0)
        made[name] = models.MLP(13, 37, (10, 4))
        with torch.no_grad():
            made[name].tower[0].bias.normal_(std=0.3), made[name].predict.bias.normal_(std=0.3)
    model = made[name].eval()
    user = torch.arange(13) if name != "seq" else torch.randint(0, 38, (13, 5))
    scorer = CatalogueScorer(model, user_block=13, item_block=8, threads=3)
    assert scorer.user_tile == 5
    want = model.score(user, torch.arange(37))
    torch.testing.assert_close(scorer.scores(user), want, atol=ATOL, rtol=0)
    excluded = torch.rand(13, 37, generator=torch.Generator().manual_seed(2)) < 0.3
    values, idx = scorer.top_k(user, 5, lambda sl: excluded[:, sl])
    masked = want.masked_fill(excluded, float("-inf"))
    torch.testing.assert_close(values, masked.topk(5, dim=1).values, atol=ATOL, rtol=0)
    torch.testing.assert_close(masked.gather(1, idx), values, atol=ATOL, rtol=0)


def test_worker_threads_put_torch_threads_back_after_an_error():
    model = _models()["neumf"].eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        scorer = CatalogueScorer(model, user_block=13)
        assert scorer.threads == 2
        with pytest.raises(RuntimeError):  # a mask of the wrong shape fails inside a worker
            scorer.top_k(torch.arange(13), 5, lambda sl: torch.zeros(13, 2, dtype=torch.bool))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        CatalogueScorer(model, threads=0)


@pytest.mark.parametrize("fast", [True, False])
def test_add_relu_is_add_then_relu(fast, monkeypatch):
    """The one-pass ``aten::_add_relu`` and the fallback give ``(a + b).clamp_min(0)`` exactly."""
    from neumf_fast import scoring

    assert scoring.HAS_ADD_RELU  # the fast path exists in the torch we pin
    monkeypatch.setattr(scoring, "HAS_ADD_RELU", fast)
    a, b = torch.randn(5, 3, 1), torch.randn(5, 1, 7)
    want = (a + b).clamp_min(0)
    assert torch.equal(scoring.add_relu(a, b), want)
    out = torch.empty(5, 3, 7)
    assert scoring.add_relu(a, b, out=out) is out and torch.equal(out, want)
