"""Cold start: a SequenceNeuMF run recommends for a history of original item ids as it does for
the user whose training history that is; unknown items are named or skipped; unknown users get
the popular items only when asked; id models refuse a history; every history file layout and
format reads the same; and 10,000 histories stream through blocks of bounded size."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from neumf_fast.cli import main as cli_main
from neumf_fast.data import DataError
from neumf_fast.data.histories import Histories, read_histories
from neumf_fast.evaluate import training_history
from neumf_fast.scoring import CatalogueScorer

from conftest import tiny_run

ATOL = 1e-5  # as test_recommend: the scorer and model.score sum the same products in another order


@pytest.fixture(scope="module")
def seq(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("seq"), num_users=60, num_items=200, num_interactions=2400, model="seq")


@pytest.fixture(scope="module")
def neumf(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("neumf"), num_users=40, num_items=150, num_interactions=1500)


def history_of(run, u: int) -> list:
    """User ``u``'s training history (the run's own user input) as original item ids, oldest first."""
    hist = training_history(run.split, run.config.history_len)[u]
    return run.item_ids[hist[hist != run.split.num_items].numpy()].tolist()


@pytest.mark.parametrize("u", [0, 7, 59])
def test_a_history_ranks_as_the_user_it_came_from(seq, u):
    every = seq.split.num_items
    got = seq.recommend(history=history_of(seq, u), k=every, exclude_seen=False)
    want = seq.recommend(seq.user_ids[u], k=every, exclude_seen=False)
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=ATOL, rtol=0)
    for (gi, gs), (wi, ws) in zip(got, want):  # equal rankings, ties aside
        assert gi == wi or abs(gs - ws) <= ATOL
    hidden = seq.recommend(history=history_of(seq, u), k=every)  # the history's items are left out
    assert len(hidden) == every - len(history_of(seq, u))
    assert not set(i for i, _ in hidden) & set(history_of(seq, u))


def test_only_the_latest_history_len_items_make_the_user(seq, monkeypatch):
    full = [u for u in range(seq.split.num_users) if len(history_of(seq, u)) == seq.config.history_len]
    recent = history_of(seq, full[0])  # a user with more training items than the history holds
    older = [i for i in seq.item_ids.tolist() if i not in recent][:5]
    a = seq.recommend(history=older + recent, k=8, exclude_seen=False)
    b = seq.recommend(history=recent, k=8, exclude_seen=False)
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=ATOL, rtol=0)
    given = []  # the user input the scorer gets: the latest history_len items, oldest first
    top_k = CatalogueScorer.top_k
    monkeypatch.setattr(CatalogueScorer, "top_k", lambda self, user, *a, **kw: given.append(user) or top_k(self, user, *a, **kw))
    seq.recommend(history=older + recent[:-5], k=8)
    assert given[0][0].tolist() == seq.item_index(older + recent[:-5])[-seq.config.history_len:].tolist()


def test_unknown_items_are_named_or_skipped_with_a_count(seq):
    history = history_of(seq, 1)[:6]
    with pytest.raises(KeyError, match="unknown item id 999991 in the history"):
        seq.recommend(history=history + [999991])
    counts = {}
    got = seq.recommend_many(histories={"ann": history[:3] + [999991, "x"] + history[3:]}, k=5, skip_unknown=True,
                             counts=counts)
    assert counts["unknown_items"] == 2
    assert got.item.tolist() == [i for i, _ in seq.recommend(history=history, k=5)]
    with pytest.raises(KeyError, match="1 users have no item this run knows"):
        seq.recommend_many(histories={"ann": history, "bob": [999991]}, skip_unknown=True)


def test_unknown_users_get_the_popular_items_only_when_asked(seq, neumf):
    for run in (seq, neumf):
        counts = {}
        table = run.recommend_many([run.user_ids[2], -5, -6], 4, unknown_users="popular", counts=counts)
        popular = [i for i, _ in run.popular(4)]
        assert counts["popular"] == 2
        assert table[table.user == -5].item.tolist() == popular == table[table.user == -6].item.tolist()
        assert table[table.user == run.user_ids[2]].item.tolist() == [i for i, _ in run.recommend(run.user_ids[2], 4)]
        with pytest.raises(KeyError, match="unknown user id"):
            run.recommend(-5)
    counts = np.bincount(seq.split.train_item, minlength=seq.split.num_items)
    assert [c for _, c in seq.popular(4)] == sorted(counts, reverse=True)[:4]  # the most training interactions
    table = seq.recommend_many(histories={"ann": history_of(seq, 1), "bob": [999991]}, k=3, skip_unknown=True,
                               unknown_users="popular")
    assert table.user.tolist() == ["ann"] * 3 + ["bob"] * 3  # in the given order
    assert table[table.user == "bob"].item.tolist() == [i for i, _ in seq.popular(3)]


def test_an_id_model_refuses_a_history_saying_which_model_takes_one(neumf, tmp_path):
    with pytest.raises(ValueError, match=r"takes user ids, not histories: only a SequenceNeuMF run \(train --model seq\)"):
        neumf.recommend(history=[neumf.item_ids[0]])
    with pytest.raises(SystemExit) as e:
        cli_main(["recommend", str(neumf.checkpoint_path.parent), "--history", str(neumf.item_ids[0])])
    assert "--history" in str(e.value.code) and "only a SequenceNeuMF run" in str(e.value.code)


# ---- files ---------------------------------------------------------------------------------------


def write(path, layout: str, histories: dict) -> None:
    """``histories`` as a file of ``path``'s format in ``layout`` ("list" or "rows")."""
    if layout == "list":
        frame = pd.DataFrame({"user": list(histories), "items": [list(v) for v in histories.values()]})
    else:  # one row per interaction, shuffled: the timestamps give the order
        rows = [(u, i, 1000 + n) for u, items in histories.items() for n, i in enumerate(items)]
        rows = [rows[j] for j in np.random.default_rng(0).permutation(len(rows))]
        frame = pd.DataFrame(rows, columns=["userId", "movieId", "timestamp"])
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}) + "\n"
                                for row in frame.to_dict("records")))
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        if layout == "list":
            frame["items"] = [" ".join(map(str, v)) for v in frame["items"]]
        frame.to_csv(path, sep=sep, index=False)


@pytest.mark.parametrize("layout", ["list", "rows"])
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_history_file_format_and_layout_recommends_the_same(seq, tmp_path, suffix, layout, capsys):
    histories = {"ann": history_of(seq, 0)[:7], "bob": history_of(seq, 1), "cy": history_of(seq, 2)[-2:]}
    src = tmp_path / f"histories{suffix}"
    write(src, layout, histories)
    read = read_histories(src)
    assert read.users.tolist() == list(histories)
    assert [read.items[a:b].tolist() for a, b in zip(read.offsets, read.offsets[1:])] == list(histories.values())
    out = tmp_path / "top.csv"
    cli_main(["recommend", str(seq.checkpoint_path.parent), "--histories", str(src), "--k", "4", "--out", str(out),
              "--no-progress"])
    got, want = pd.read_csv(out), seq.recommend_many(histories=histories, k=4)
    assert got.user.tolist() == want.user.tolist() and got.item.tolist() == want.item.tolist()
    np.testing.assert_allclose(got.score, want.score, rtol=1e-6)
    assert "top 4 of 3 users written" in capsys.readouterr().err


def test_a_history_file_with_an_unknown_item_names_its_line_and_leaves_no_output(seq, tmp_path, capsys):
    src = tmp_path / "h.csv"
    src.write_text(f"user,items\nann,{history_of(seq, 0)[0]}\nbob,\"{history_of(seq, 1)[0]},999991\"\n")
    out = tmp_path / "top.csv"
    argv = ["recommend", str(seq.checkpoint_path.parent), "--histories", str(src), "--out", str(out)]
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert f"unknown item id 999991 in {src}, line 3 (user 'bob')" in str(e.value.code)
    assert "--skip-unknown" in str(e.value.code) and not out.exists()
    cli_main(argv + ["--skip-unknown"])
    assert "skipped 1 unknown item ids" in capsys.readouterr().err and len(pd.read_csv(out)) == 20


@pytest.mark.parametrize("name, content, message", [
    ("h.jsonl", '{"user": 1, "items": [1]}\n{"user": 2, "items": [1\n', "h.jsonl, line 2: not JSON"),
    ("h.jsonl", '[1, 2]\n', "h.jsonl, line 1: expected an object"),
    ("h.csv", "who,items\n1,2\n", "no user column among ['who', 'items']"),
    ("h.csv", "user,what\n1,2\n", "no items column"),
    ("h.csv", "user,items\n1,2\n1,3\n", "h.csv, lines 2 and 3: user 1 twice"),
    ("h.csv", "user,item,timestamp\n1,2,3\n1,3,soon\n", "h.csv, line 3: timestamp 'soon' is not a number"),
    ("h.csv", "user,item\n1,2\n,3\n", "h.csv, line 3: no user"),
    ("h.csv", "user,items\n", "holds no histories"),
    ("h.txt", "user,items\n1,2\n", "unknown history file suffix '.txt'"),
])
def test_bad_history_files_name_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        read_histories(path)


# ---- bounded memory ------------------------------------------------------------------------------


def test_ten_thousand_histories_stream_in_blocks_of_bounded_size(seq, monkeypatch):
    """As ``--all`` (test_recommend.test_blocks_bound_memory): the largest score block is
    user_block x item_block, and the user input of a block is user_block x history_len, for
    10,000 new users."""
    largest, inputs = [], []
    scores, top_k = CatalogueScorer.item_block_scores, CatalogueScorer.top_k

    def counted_scores(self, gmf_u, first_u, sl):
        out = scores(self, gmf_u, first_u, sl)
        largest.append(out.numel())
        return out

    def counted_top_k(self, user, k, exclude=None, **kw):
        inputs.append(tuple(user.shape))
        return top_k(self, user, k, exclude, **kw)

    monkeypatch.setattr(CatalogueScorer, "item_block_scores", counted_scores)
    monkeypatch.setattr(CatalogueScorer, "top_k", counted_top_k)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, 10_000)
    histories = Histories.from_lists(np.arange(10_000), [seq.item_ids[rng.integers(0, len(seq.item_ids), n)]
                                                         for n in lengths])
    rows = 0
    for frame in seq.iter_recommendations(histories=histories, k=3, user_block=64):
        rows += len(frame)
        assert frame.user.nunique() <= 64
    scorer = seq.scorer(user_block=64)
    assert rows == 30_000 and len(inputs) == -(-10_000 // 64)
    assert max(largest) <= 64 * scorer.item_block
    assert max(inputs) == (64, seq.config.history_len)


# ---- new-user evaluation -------------------------------------------------------------------------


def test_new_user_metrics_rank_the_test_item_as_recommend_from_the_history_does(tmp_path, capsys):
    """A seq run trained with --new-users: ``evaluate`` reports the held-out users' metrics
    beside popularity's, and a new user's full-ranking hit is whether ``recommend(history=...)``
    (their history, whose items it leaves out) has the test item in its top 10."""
    import neumf_fast
    from neumf_fast.data import synthetic

    data = synthetic(0, num_users=80, num_items=150, num_interactions=2400)
    csv = tmp_path / "events.csv"
    csv.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in zip(data.user, data.item, data.timestamp)))
    cli_main(["train", "--model", "seq", "--dataset", str(csv), "--new-users", "0.25", "--epochs", "1", "--factors",
              "4", "--batch-size", "512", "--no-progress", "--out", str(tmp_path / "run")])
    capsys.readouterr()
    cli_main(["evaluate", str(tmp_path / "run")])
    result = json.loads(capsys.readouterr().out)
    new = result["new_users"]
    assert new["users"] == 20 and result["candidates"]["users"] == 60  # the 20 are not in the leave-one-out test
    for who in ("model", "popularity"):
        assert new[who]["candidates"]["users"] == new[who]["full"]["users"] == 20
    run = neumf_fast.load_run(tmp_path / "run")
    split, hits = run.split, []
    for u in split.new_users:
        order = np.argsort(split.new_history_time[split.new_history_user == u], kind="stable")
        history = run.item_ids[split.new_history_item[split.new_history_user == u][order]].tolist()
        top = [i for i, _ in run.recommend(history=history, k=10)]
        hits.append(run.item_ids[split.test[u]] in top)
    assert new["model"]["full"]["hr@10"] == pytest.approx(np.mean(hits))


def test_evaluate_says_when_a_seq_run_holds_no_new_users(seq, capsys):
    cli_main(["evaluate", str(seq.checkpoint_path.parent)])
    out = capsys.readouterr()
    assert json.loads(out.out)["new_users"] is None and "train with --new-users 0.1" in out.err


def test_new_users_is_for_the_seq_model_only(tmp_path):
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--model", "neumf", "--dataset", "synthetic", "--new-users", "0.1", "--out", str(tmp_path)])
    assert "--new-users applies to --model seq" in str(e.value.code)
