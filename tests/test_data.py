"""Data: readers, bad files, the synthetic set, leave-one-out, candidates, negative sampling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("pandas", reason="the data pipeline needs pandas")

from neumf_fast.data import (DataError, NegativeSampler, Split, distinct_negatives, from_raw, leave_one_out,
                             load_dataset, random_split, read_interactions, synthetic)

ROWS = [(10, 100, 5.0, 3), (10, 200, 3.0, 1), (10, 300, 4.0, 2), (20, 100, 1.0, 7), (30, 300, 2.0, 9),
        (30, 200, 4.5, 8)]


def _write(path, rows, sep, header=None):
    lines = ([header] if header else []) + [sep.join(str(int(x)) if i != 2 else str(x) for i, x in enumerate(r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


FORMATS = [
    ("u.data", "\t", None),
    ("ratings.dat", "::", None),
    ("ratings.csv", ",", "userId,movieId,rating,timestamp"),
    ("mine.csv", ",", "user,item,rating,timestamp"),
]


@pytest.mark.parametrize("name,sep,header", FORMATS)
def test_readers_remap_ids_and_keep_every_rating(tmp_path, name, sep, header):
    data = read_interactions(_write(tmp_path / name, ROWS, sep, header))
    assert (data.num_users, data.num_items, len(data)) == (3, 3, 6)
    assert list(data.user_ids) == [10, 20, 30] and list(data.item_ids) == [100, 200, 300]
    got = sorted(zip(data.user_ids[data.user], data.item_ids[data.item], data.timestamp))
    assert got == sorted((r[0], r[1], r[3]) for r in ROWS)


def test_parquet_and_directory_and_threshold(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(ROWS, columns=["user", "item", "rating", "timestamp"])
    frame.to_parquet(tmp_path / "x.parquet")
    assert len(read_interactions(tmp_path / "x.parquet", threshold=4.0)) == 3
    (tmp_path / "ml-1m").mkdir()
    _write(tmp_path / "ml-1m" / "ratings.dat", ROWS, "::")
    assert len(load_dataset(str(tmp_path / "ml-1m"))) == 6


def test_generic_files_take_text_ids(tmp_path):
    import pandas as pd

    path = tmp_path / "events.csv"
    path.write_text("user,item\nalice,B0001\nbob,B0002\nalice,B0002\n")
    data = read_interactions(path)
    assert list(data.user_ids) == ["alice", "bob"] and list(data.item_ids) == ["B0001", "B0002"]
    assert data.user_ids.dtype.kind == "U"  # fixed-width text: splits save without pickle
    split = leave_one_out(from_raw(["a", "a", "a", "b"], ["x", "y", "z", "x"], [1, 2, 3, 1]), num_negatives=0)
    split.save(tmp_path / "s.npz")
    assert list(Split.load(tmp_path / "s.npz").user_ids) == ["a", "b"]
    path.write_text("user,item\nalice,B0001\n,B0002\n")
    with pytest.raises(DataError, match=r"events.csv, line 3: '' is not a valid id"):
        read_interactions(path)
    pd.DataFrame({"user": ["u1", "u2"], "item": [3, 4]}).to_parquet(tmp_path / "x.parquet")
    assert list(read_interactions(tmp_path / "x.parquet").user_ids) == ["u1", "u2"]
    pd.DataFrame({"user": ["u1", None], "item": [3, 4]}).to_parquet(tmp_path / "y.parquet")
    with pytest.raises(DataError, match="column user has missing values"):
        read_interactions(tmp_path / "y.parquet")


def test_duplicates_are_kept_once_at_their_earliest_time():
    data = from_raw([1, 1, 2], [5, 5, 5], [9, 4, 1])
    assert len(data) == 2
    assert sorted(data.timestamp.tolist()) == [1, 4]


@pytest.mark.parametrize("content,line,what", [
    ("1::2::3::4\n1::2::3\n", 2, "expected 4 fields"),
    ("1::2::3::4\n5::x::3::4\n", 2, "'x' is not a valid int"),
    ("1::2::3::4\n\n5::6::3::4\n", 2, "empty line"),
    ("1::2::3::4\n5::6::3::4::8\n", 2, "expected 4 fields"),
    ("1::2::3::4\n5::6::3::12", None, None),  # a last line without newline is fine
    ("1::2::3::4\n5::6::3::1", None, None),
    ("1::2::3::4\n5::6", 2, "expected 4 fields"),  # truncated mid-line
    ("1::2::3::4\n5::6::nan::4\n", 2, "'nan' is not a valid rating"),  # NaN is not read as missing
    ("1::2::3::4\n5::6::inf::4\n", 2, "'inf' is not a valid rating"),
])
def test_corrupt_files_name_file_and_line(tmp_path, content, line, what):
    path = tmp_path / "ratings.dat"
    path.write_text(content)
    if line is None:
        assert len(read_interactions(path)) == 2
        return
    with pytest.raises(DataError) as e:
        read_interactions(path)
    assert str(path) in str(e.value) and f"line {line}" in str(e.value) and what in str(e.value)


def test_a_nan_rating_names_file_line_and_value_and_an_empty_one_is_missing(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,10,4.0,100\n1,11,,101\n2,10,NaN,102\n")
    with pytest.raises(DataError) as e:
        read_interactions(path)
    assert f"{path}, line 4: 'NaN' is not a valid rating" in str(e.value)
    path.write_text("userId,movieId,rating,timestamp\n1,10,4.0,100\n1,11,,101\n2,10,3.0,102\n")
    assert len(read_interactions(path)) == 3  # the empty rating is missing: the row is still a positive
    assert len(read_interactions(path, threshold=3.5)) == 1  # ... which a threshold drops


def test_recbole_atomic_files(tmp_path):
    """RecBole's ml-100k.inter: tab-separated, typed header names, float timestamps."""
    path = tmp_path / "ml-100k.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                    + "".join(f"{u}\t{i}\t{r}\t{t}.0\n" for u, i, r, t in ROWS))
    data = read_interactions(path)
    assert list(data.user_ids) == [10, 20, 30] and list(data.item_ids) == [100, 200, 300]
    assert sorted(zip(data.user_ids[data.user], data.item_ids[data.item], data.timestamp)) == \
        sorted((r[0], r[1], r[3]) for r in ROWS)
    assert data.timestamp.dtype == np.int64
    assert len(read_interactions(path, threshold=4.0)) == 3
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3.5\n")
    with pytest.raises(DataError, match=r"ml-100k.inter, line 2: '3.5' is not a valid timestamp"):
        read_interactions(path)


@pytest.mark.parametrize("name", ["ratings.tsv", "events.csv", "log.txt"])
@pytest.mark.parametrize("sep", ["\t", ","])
@pytest.mark.parametrize("header", [("userId", "movieId", "rating", "timestamp"), ("USER_ID", "Item_Id", "score", "time"),
                                    ("uid", "iid", "stars", "ts")])
def test_headered_files_under_common_names_and_either_separator(tmp_path, name, sep, header):
    path = tmp_path / name
    path.write_text(sep.join(header) + "\n" + "".join(sep.join(map(str, r)) + "\n" for r in ROWS))
    data = read_interactions(path)
    assert (data.num_users, data.num_items, len(data)) == (3, 3, 6)
    assert sorted(zip(data.user_ids[data.user], data.item_ids[data.item], data.timestamp)) == \
        sorted((r[0], r[1], r[3]) for r in ROWS)


def test_a_header_with_no_known_column_names_the_columns_it_has(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("who\twhat\twhen\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"x.tsv, line 1: no user column in the header; its columns are "
                                        r"\['who', 'what', 'when'\] \(accepted user names: user, user_id"):
        read_interactions(path)


def test_bad_header_binary_garbage_and_parquet(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("who,what\n1,2\n")
    with pytest.raises(DataError, match=r"x.csv, line 1: no user column"):
        read_interactions(path)
    path = tmp_path / "u.data"
    path.write_bytes(b"1\t2\t3\t4\n\xff\xfe\t2\n")
    with pytest.raises(DataError, match=r"u.data, line 2: not UTF-8"):
        read_interactions(path)
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_interactions(path)


def test_unknown_format_lists_the_supported_ones(tmp_path):
    path = tmp_path / "ratings.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"unknown data format; supported: ml-100k, ml-1m, ml-10m, ml-csv, recbole, csv, parquet"):
        read_interactions(path)
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def test_empty_data_is_an_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("user,item\n")
    with pytest.raises(DataError, match="holds no interactions"):
        read_interactions(path)
    with pytest.raises(DataError, match="empty after the rating threshold"):
        from_raw([1], [2], rating=[1.0], threshold=4.0)


def test_synthetic_is_deterministic_and_ml1m_like():
    a = synthetic(0)
    assert (a.num_users, a.num_items) == (6040, 3706)
    assert 0.95e6 <= len(a) <= 1.05e6
    per_user = np.bincount(a.user)
    assert per_user.min() >= 20
    popularity = np.sort(np.bincount(a.item, minlength=a.num_items))[::-1]
    assert popularity[: a.num_items // 10].sum() > 0.3 * len(a)  # long tail: top 10% of items > 30%
    assert len(np.unique(a.user * a.num_items + a.item)) == len(a)  # no duplicate pairs
    small = synthetic(1, 50, 40, 800)
    again = synthetic(1, 50, 40, 800)
    assert small.fingerprint() == again.fingerprint()
    assert small.fingerprint() != synthetic(2, 50, 40, 800).fingerprint()


def test_leave_one_out_follows_time_and_handles_short_users():
    #           user 0: 4 interactions, user 1: 2, user 2: 1, user 3: 3 with a time tie
    user = [0, 0, 0, 0, 1, 1, 2, 3, 3, 3]
    item = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    time = [5, 1, 9, 7, 2, 1, 4, 3, 3, 1]
    data = from_raw(user, item, time)
    split = leave_one_out(data, num_negatives=2, seed=0)
    assert split.test.tolist() == [2, 4, -1, 8]  # latest; tie (7, 8) broken by row order
    assert split.valid.tolist() == [3, -1, -1, 7]
    train = sorted(zip(split.train_user.tolist(), split.train_item.tolist()))
    assert train == [(0, 0), (0, 1), (1, 5), (2, 6), (3, 9)]
    assert split.eval_users("valid").tolist() == [0, 3] and split.eval_users("test").tolist() == [0, 1, 3]
    assert (split.valid_candidates[1] == -1).all() and (split.test_candidates[2] == -1).all()


def test_new_users_are_held_out_of_training_entirely(tmp_path):
    data = synthetic(0, num_users=200, num_items=300, num_interactions=6000)
    split = leave_one_out(data, num_negatives=20, seed=3, new_users=0.1)
    new = split.new_users
    assert len(new) == 20 and len(np.unique(new)) == 20
    assert not np.isin(split.train_user, new).any() and (split.valid[new] == -1).all()
    assert not np.isin(split.eval_users("test"), new).any() and split.eval_users("new").tolist() == new.tolist()
    for u in new[:5]:  # the latest interaction is the test item, every earlier one the history
        rows = np.flatnonzero(data.user == u)
        latest = rows[np.lexsort((rows, data.timestamp[rows]))[-1]]
        assert split.test[u] == data.item[latest]
        assert sorted(split.new_history_item[split.new_history_user == u]) == sorted(set(data.item[rows]) - {data.item[latest]})
        cands = split.test_candidates[u]
        assert cands[0] == split.test[u] and not np.isin(cands[1:], data.item[rows]).any()
    split.save(tmp_path / "split.npz")
    back = Split.load(tmp_path / "split.npz")
    assert back.new_users.tolist() == new.tolist() and back.new_history_item.tolist() == split.new_history_item.tolist()
    # the same users for the same seed; none held out by default, as a split file from before this field loads
    assert leave_one_out(data, num_negatives=20, seed=3, new_users=0.1).new_users.tolist() == new.tolist()
    plain = leave_one_out(data, num_negatives=20, seed=3)
    assert len(plain.new_users) == 0 and len(plain.eval_users("test")) == 200
    fields = {k: v for k, v in np.load(tmp_path / "split.npz").items() if not k.startswith("new_")}
    np.savez(tmp_path / "old.npz", **fields)
    assert len(Split.load(tmp_path / "old.npz").new_users) == 0
    with pytest.raises(ValueError, match=r"new_users must lie in \[0, 1\)"):
        leave_one_out(data, new_users=1.0)


def test_candidates_are_distinct_negatives_fixed_by_seed(tmp_path):
    data = synthetic(3, 60, 300, 3000)  # at most 150 positives per user: >= 150 free items
    split = leave_one_out(data, num_negatives=99, seed=7)
    users, cands = split.candidates("test")
    assert cands.shape == (len(users), 100)
    assert (cands[:, 0] == split.test[users]).all()
    positives = set(zip(data.user.tolist(), data.item.tolist()))
    for u, row in zip(users, cands):
        assert len(set(row.tolist())) == 100
        assert not any((u, i) in positives for i in row[1:].tolist())
    again = leave_one_out(data, num_negatives=99, seed=7)
    assert (again.test_candidates == split.test_candidates).all()
    assert not (leave_one_out(data, num_negatives=99, seed=8).test_candidates == split.test_candidates).all()
    split.save(tmp_path / "s.npz")
    loaded = Split.load(tmp_path / "s.npz")
    assert loaded.fingerprint == split.fingerprint == data.fingerprint()
    assert (loaded.valid_candidates == split.valid_candidates).all() and loaded.name == split.name
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(DataError, match="not a readable split file"):
        Split.load(tmp_path / "bad.npz")


def test_too_few_items_for_the_candidates_is_an_error_only_when_asked_exactly():
    data = from_raw([0, 0, 0], [0, 1, 2], [1, 2, 3])
    sampler = NegativeSampler(data.user, data.item, data.num_items, data.num_users)
    with pytest.raises(ValueError, match="has only 0 items without a positive; 99 negatives"):
        distinct_negatives(sampler, torch.tensor([0]), 99, seed=0)


def test_small_catalogue_candidates_are_every_unseen_item_and_padding_is_never_ranked():
    """50 users x 20 items (the issue's case): 99 negatives cannot be had, so each user's
    candidates are all of their unseen items, padded with -1, with a warning counting them; the
    metrics rank among the real candidates only."""
    from neumf_fast.evaluate import evaluate_candidates

    rng = np.random.default_rng(0)
    picks = [rng.choice(20, size=rng.integers(3, 18), replace=False) for _ in range(50)]
    data = from_raw(np.repeat(np.arange(50), [len(p) for p in picks]), np.concatenate(picks),
                    np.concatenate([np.arange(len(p)) for p in picks]))
    with pytest.warns(UserWarning, match=r"of \d+ evaluated users have fewer than 99 items"):
        split = leave_one_out(data, num_negatives=99, seed=0)
    users, cands = split.candidates("test")
    seen = NegativeSampler(*split.all_positives(), split.num_items, split.num_users).positive_mask(torch.from_numpy(users))
    for row, (u, c) in enumerate(zip(users, cands)):
        real = c[c >= 0]
        assert real[0] == split.test[u] and (c[len(real):] == -1).all()
        negatives = set(real[1:].tolist())
        assert len(negatives) == len(real) - 1  # distinct
        assert negatives == set(np.flatnonzero(~seen[row].numpy()).tolist())  # every unseen item
    # a score that puts the held-out item last among real candidates ranks it at (real count - 1)
    popularity = torch.zeros(split.num_items)
    popularity[torch.from_numpy(split.test[users])] = -1.0
    m = evaluate_candidates(None, split, "test", k=100, popularity=popularity)
    assert m["hr@100"] == 1.0 and m["auc"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        leave_one_out(data, num_negatives=3, seed=0)  # enough items for everyone: no warning, no padding


def test_negative_sampler_never_returns_a_positive():
    g = torch.Generator().manual_seed(0)
    user = torch.randint(0, 30, (400,), generator=g)
    item = torch.randint(0, 20, (400,), generator=g)  # dense: about half the items are positives
    sampler = NegativeSampler(user, item, 20, 30)
    u = torch.arange(30).repeat_interleave(200)
    neg = sampler.sample(u, torch.Generator().manual_seed(1))
    keys = set((user * 20 + item).tolist())
    assert not any(k in keys for k in (u * 20 + neg).tolist())
    assert sampler.positive_mask(torch.tensor([3]))[0].sum() == sampler.positives_per_user[3]
    full = NegativeSampler(torch.zeros(20, dtype=torch.long), torch.arange(20), 20)
    with pytest.raises(ValueError, match="user 0 has a positive for every one of the 20 items"):
        full.sample(torch.zeros(3, dtype=torch.long))


def test_dense_and_sorted_membership_draw_the_same_negatives(monkeypatch):
    """The bool table of pairs (small catalogues) and the binary search over sorted keys (large
    ones) are two ways to the same membership: the same draws give the same negatives."""
    from neumf_fast.data import sampling

    g = torch.Generator().manual_seed(0)
    user = torch.randint(0, 30, (400,), generator=g)
    item = torch.randint(0, 20, (400,), generator=g)
    u = torch.arange(30).repeat_interleave(50)
    dense = NegativeSampler(user, item, 20, 30)
    monkeypatch.setattr(sampling, "DENSE_PAIRS", 0)
    searched = NegativeSampler(user, item, 20, 30)
    assert dense._pairs is not None and searched._pairs is None
    a, b = dense.sample(u, torch.Generator().manual_seed(3)), searched.sample(u, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not (dense._is_positive(u, a)).any()


@pytest.mark.parametrize("bad", [-1, 30])
def test_sampling_for_an_unknown_user_is_a_clear_error(bad):
    sampler = NegativeSampler(torch.tensor([0, 29]), torch.tensor([0, 1]), 20, 30)
    with pytest.raises(ValueError, match=rf"user {bad} is outside the sampler's users \[0, 30\)"):
        sampler.sample(torch.tensor([0, bad, 3]))


def test_epoch_samples_are_every_positive_and_their_negatives_shuffled():
    """One epoch: each positive once with label 1, ``neg`` negatives per positive with label 0
    and the same user, in one permutation fixed by (seed, epoch)."""
    from neumf_fast.train import epoch_samples

    g = torch.Generator().manual_seed(0)
    train_user = torch.randint(0, 30, (200,), generator=g)
    train_item = torch.randint(0, 20, (200,), generator=g)
    sampler = NegativeSampler(train_user, train_item, 20, 30)
    user, item, label = epoch_samples(train_user, train_item, sampler, 3, 0, 5)
    assert len(user) == len(item) == len(label) == 800 and label.dtype == torch.float32
    pos = label == 1
    assert sorted(zip(user[pos].tolist(), item[pos].tolist())) == sorted(zip(train_user.tolist(), train_item.tolist()))
    assert torch.equal(torch.bincount(user[~pos], minlength=30), 3 * torch.bincount(train_user, minlength=30))
    assert not sampler._is_positive(user[~pos], item[~pos]).any()
    again = epoch_samples(train_user, train_item, sampler, 3, 0, 5)
    assert all(torch.equal(x, y) for x, y in zip((user, item, label), again))
    assert not torch.equal(epoch_samples(train_user, train_item, sampler, 3, 0, 6)[0], user)


def test_negatives_are_uniform_over_the_allowed_items():
    sampler = NegativeSampler(torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]), 6)
    neg = sampler.sample(torch.zeros(60000, dtype=torch.long), torch.Generator().manual_seed(0))
    counts = torch.bincount(neg, minlength=6)
    assert counts[:2].sum() == 0
    assert (counts[2:] - 15000).abs().max() < 600  # 4.9 sigma of a binomial(60000, 1/4)


def test_distinct_negatives_chunking_does_not_change_the_draw_shape():
    sampler = NegativeSampler(torch.tensor([0, 1]), torch.tensor([0, 1]), 10, 2)
    out = distinct_negatives(sampler, torch.tensor([0, 1]), 9, seed=0, chunk=1)
    assert out.shape == (2, 9) and 0 not in out[0].tolist() and 1 not in out[1].tolist()


def test_random_split_partitions_the_data():
    data = synthetic(0, 30, 40, 500)
    train, test = random_split(data, 0.8, seed=1)
    assert len(train) + len(test) == len(data)
    assert abs(len(train) / len(data) - 0.8) < 0.06
    with pytest.raises(ValueError, match="ratio"):
        random_split(data, 1.0)


def test_synthetic_on_a_torch_device_is_deterministic_and_well_formed():
    a = synthetic(4, 60, 300, 3000, device="cpu")
    assert a.fingerprint() == synthetic(4, 60, 300, 3000, device="cpu").fingerprint()
    assert a.fingerprint() != synthetic(4, 60, 300, 3000).fingerprint()  # a different draw than numpy's
    assert len(np.unique(a.user * a.num_items + a.item)) == len(a)
    assert np.bincount(a.user).min() >= 20
    split = leave_one_out(a, num_negatives=9, device="cpu")
    assert (split.test_candidates[split.test >= 0, 0] == split.test[split.test >= 0]).all()
