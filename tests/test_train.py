"""Training, checkpoints, resume, and the CLI, on a tiny synthetic dataset written as a CSV."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("pandas", reason="the data pipeline needs pandas")
pytest.importorskip("tqdm", reason="the data pipeline needs tqdm")
pytest.importorskip("matplotlib", reason="the data pipeline needs matplotlib")

from neumf_fast.checkpoints import load_checkpoint, load_model
from neumf_fast.cli import main as cli_main
from neumf_fast.config import TrainConfig
from neumf_fast.data import leave_one_out, synthetic
from neumf_fast.evaluate import UserInput, training_history
from neumf_fast.models import SequenceNeuMF
from neumf_fast.run_files import save_atomic
from neumf_fast.train import fit


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    data = synthetic(0, num_users=120, num_items=300, num_interactions=6000)
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    lines = ["user,item,timestamp"] + [f"{u + 1000},{i + 5000},{t}" for u, i, t in zip(data.user, data.item, data.timestamp)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tiny_csv, **kw):
    base = dict(dataset=str(tiny_csv), epochs=2, batch_size=512, factors=4, layers=(16, 8, 4), neg=2)
    return TrainConfig(**{**base, **kw})


def test_fit_writes_checkpoints_metrics_and_plot(tiny_csv, tmp_path):
    result = fit(_config(tiny_csv), tmp_path, progress=False, log=False)
    for name in ("best.pt", "last.pt", "split.npz", "metrics.json", "curves.png"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert [h["epoch"] for h in saved["history"]] == [0, 1, 2]
    assert saved["history"][1]["loss"] > saved["history"][2]["loss"] > 0
    assert set(result["test"]) == {"candidates", "full"}
    assert result["test"]["candidates"]["users"] == 120
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_loads_on_another_backend_with_the_same_scores(tiny_csv, tmp_path):
    fit(_config(tiny_csv, epochs=1), tmp_path, progress=False, log=False)
    a, config, _ = load_model(tmp_path / "best.pt", backend="auto")
    b, _, _ = load_model(tmp_path / "best.pt", backend="torch")
    u, i = torch.arange(50), torch.arange(50) % 300
    with torch.no_grad():
        torch.testing.assert_close(a(u, i), b(u, i), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("table_optimizer", ["dense", "adam"])
def test_a_run_killed_mid_epoch_and_resumed_ends_like_an_uninterrupted_one(tiny_csv, tmp_path, table_optimizer):
    config = _config(tiny_csv, epochs=3, table_optimizer=table_optimizer)
    straight = fit(config, tmp_path / "a", progress=False, log=False)

    class Killed(Exception):
        pass

    def kill(epoch, step):
        if epoch == 1 and step == 3:
            raise Killed

    with pytest.raises(Killed):
        fit(config, tmp_path / "b", progress=False, log=False, on_step=kill)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 0
    resumed = fit(config, tmp_path / "b", resume=True, progress=False, log=False)

    strip = lambda h: [{k: v for k, v in row.items() if not k.endswith("_s")} for row in h]
    assert strip(resumed["history"]) == strip(straight["history"])
    assert resumed["test"] == straight["test"]
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    if table_optimizer != "dense":  # the row states are saved, and restored bit for bit
        for name, state in a["table_optimizer"]["state"].items():
            for field, t in state.items():
                assert torch.equal(t, b["table_optimizer"]["state"][name][field]), (name, field)


def test_resume_refuses_a_different_configuration(tiny_csv, tmp_path):
    fit(_config(tiny_csv, epochs=1), tmp_path, progress=False, log=False)
    with pytest.raises(ValueError, match=r"different configuration \(neg: 2 then, 3 now\)"):
        fit(_config(tiny_csv, epochs=2, neg=3), tmp_path, resume=True, progress=False, log=False)
    with pytest.raises(FileNotFoundError, match="last.pt does not exist"):
        fit(_config(tiny_csv), tmp_path / "empty", resume=True, progress=False, log=False)


def test_a_failed_write_never_replaces_a_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_atomic({"format": 1, "ok": True}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"format": 1, "ok": False}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["ok"] is True
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable neumf_fast checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    torch.save({"something": 1}, tmp_path / "y.pt")
    with pytest.raises(ValueError, match="not a neumf_fast checkpoint"):
        load_checkpoint(tmp_path / "y.pt")


def test_sequence_history_and_its_training_mask():
    data = synthetic(0, num_users=20, num_items=300, num_interactions=600)
    split = leave_one_out(data, num_negatives=5)
    hist = training_history(split, 4)
    for u in range(20):
        rows = np.flatnonzero(split.train_user == u)
        latest = split.train_item[rows[np.argsort(split.train_time[rows], kind="stable")]][-4:]
        assert hist[u, 4 - len(latest):].tolist() == latest.tolist()
        assert (hist[u, : 4 - len(latest)] == 300).all()
    model = SequenceNeuMF(300, 4, history_items=300)
    ui = UserInput(split, model, 4)
    users = torch.tensor([0, 1])
    own = hist[users, -1]  # a positive that is in its own history
    assert (ui(users, own)[:, -1] == 300).all()  # ... is hidden from it
    assert torch.equal(ui(users), hist[users])


def test_learning_beats_popularity(tmp_path):
    """A NeuMF trained for a few epochs must rank the held-out item clearly better than item
    popularity on synthetic data with low-rank tastes (the synthetic set's whole point)."""
    data = synthetic(0, num_users=600, num_items=500, num_interactions=40000)
    split = leave_one_out(data, num_negatives=99)
    config = TrainConfig(dataset="synthetic", epochs=6, batch_size=1024, factors=8, layers=(32, 16, 8))
    result = fit(config, tmp_path, progress=False, log=False, split=split)
    pop = result["popularity_test"]["candidates"]["hr@10"]
    ours = result["test"]["candidates"]["hr@10"]
    assert ours > pop + 0.05, (ours, pop)


def test_cli_train_pretrain_evaluate_recommend(tiny_csv, tmp_path, capsys):
    common = ["--dataset", str(tiny_csv), "--epochs", "1", "--batch-size", "512", "--factors", "4",
              "--layers", "[16,8,4]", "--no-progress"]
    cli_main(["train", "--model", "gmf", "--out", str(tmp_path / "gmf"), *common])
    cli_main(["train", "--model", "mlp", "--out", str(tmp_path / "mlp"), *common])
    cli_main(["train", "--model", "neumf", "--out", str(tmp_path / "neumf"), "--pretrain",
              str(tmp_path / "gmf" / "best.pt"), str(tmp_path / "mlp" / "best.pt"), *common])
    out = capsys.readouterr().out
    assert "| model | HR@10 | NDCG@10 | full-ranking HR@10 |" in out and "| popularity |" in out
    ckpt = load_checkpoint(tmp_path / "neumf" / "best.pt")
    assert ckpt["config"]["optimizer"] is None and ckpt["config"]["pretrain"] is not None  # sgd, as the paper

    cli_main(["evaluate", str(tmp_path / "neumf" / "best.pt")])
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"candidates", "full"} and report["candidates"]["users"] == 120

    cli_main(["recommend", str(tmp_path / "neumf" / "best.pt"), "--user", "1003", "--k", "5"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("top 5 for user 1003") and len(lines) == 6
    seen = {int(l.split(",")[1]) for l in tiny_csv.read_text().splitlines()[1:] if l.startswith("1003,")}
    recommended = [int(l.split()[2]) for l in lines[1:]]
    assert all(5000 <= i < 5300 for i in recommended) and not seen & set(recommended)

    with pytest.raises(SystemExit, match="--user 77: unknown user id 77 in this run's data"):
        cli_main(["recommend", str(tmp_path / "neumf" / "best.pt"), "--user", "77"])
    with pytest.raises(SystemExit, match="--pretrain applies to --model neumf"):
        cli_main(["train", "--model", "gmf", "--pretrain", "a", "b", *common])
    with pytest.raises(SystemExit):
        cli_main(["train", "--layers", "15,8"])


def test_cli_seq_model_trains(tiny_csv, tmp_path, capsys):
    cli_main(["train", "--model", "seq", "--dataset", str(tiny_csv), "--epochs", "1", "--batch-size", "512",
              "--factors", "4", "--history-len", "5", "--out", str(tmp_path), "--no-progress"])
    assert "epoch 1: loss" in capsys.readouterr().out
    model, config, _ = load_model(tmp_path / "best.pt")
    assert isinstance(model, SequenceNeuMF) and config.history_len == 5


def test_cli_trains_with_a_table_optimizer_and_evaluate_reads_the_run(tiny_csv, tmp_path, capsys):
    cli_main(["train", "--model", "seq", "--dataset", str(tiny_csv), "--epochs", "1", "--batch-size", "512",
              "--factors", "4", "--history-len", "5", "--out", str(tmp_path), "--no-progress",
              "--table-optimizer", "rowwise_adagrad", "--table-lr", "0.3"])
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["config"]["table_optimizer"] == "rowwise_adagrad"
    assert ckpt["table_optimizer"]["hyper"]["lr"] == 0.3
    assert set(ckpt["table_optimizer"]["state"]) == {"history_embedding.weight", "item_embedding.weight"}
    cli_main(["evaluate", str(tmp_path / "best.pt")])
    assert "hr@10" in capsys.readouterr().out.lower()


def test_learning_rate_scales_with_batch():
    assert TrainConfig().learning_rate() == 0.001
    assert TrainConfig(batch_size=1024).learning_rate() == pytest.approx(0.002)
    assert TrainConfig(batch_size=1024, lr=0.01).learning_rate() == 0.01
    assert TrainConfig(pretrain=("a", "b")).optimizer_name() == "sgd"
    assert dataclasses.asdict(TrainConfig())["layers"] == (64, 32, 16, 8)


def test_a_new_run_never_reuses_an_old_runs_split(tiny_csv, tmp_path):
    fit(_config(tiny_csv, epochs=0), tmp_path, progress=False, log=False)
    other = tmp_path / "other.csv"
    other.write_text("user,item,timestamp\n" + "\n".join(f"{u},{i},{u + i}" for u in range(30) for i in range(u % 5, 200, 5)))
    result = fit(_config(other, epochs=0, eval_negatives=5), tmp_path, overwrite=True, progress=False, log=False)
    from neumf_fast.data import Split
    assert Split.load(tmp_path / "split.npz").num_users == 30 == result["test"]["candidates"]["users"]


def test_a_process_killed_with_sigkill_resumes_to_the_same_result(tiny_csv, tmp_path):
    """The real thing: the CLI in a subprocess, SIGKILLed once its first epoch's checkpoint is
    on disk (so mid-way through a later epoch), then resumed; compared with an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    args = ["--dataset", str(tiny_csv), "--epochs", "4", "--batch-size", "32", "--factors", "4",
            "--layers", "16,8,4", "--neg", "2", "--no-progress"]
    cmd = [sys.executable, "-m", "neumf_fast.cli", "train", "--model", "neumf"]
    subprocess.run([*cmd, *args, "--out", str(tmp_path / "a")], check=True, capture_output=True)
    proc = subprocess.Popen([*cmd, *args, "--out", str(tmp_path / "b")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "b" / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if killed:
        assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] < 3  # it died before the end
    subprocess.run([*cmd, *args, "--out", str(tmp_path / "b"), "--resume"], check=True, capture_output=True)
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    strip = lambda h: [{k: v for k, v in row.items() if not k.endswith("_s")} for row in h]
    assert strip(b["history"]) == strip(a["history"])
    assert b["test"] == a["test"]
    assert killed, "the first run finished before it could be killed; the test proved nothing"


def test_cuda_graphs_option_is_wired_and_ignored_off_cuda(tiny_csv, tmp_path):
    plain = fit(_config(tiny_csv, epochs=1), tmp_path / "plain", progress=False, log=False)
    with pytest.warns(RuntimeWarning, match="cuda_graphs ignored: CUDA graphs need a CUDA device"):
        graphs = fit(_config(tiny_csv, epochs=1, cuda_graphs=True), tmp_path / "graphs", progress=False, log=False)
    strip = lambda h: [{k: v for k, v in row.items() if not k.endswith("_s")} for row in h]
    assert strip(graphs["history"]) == strip(plain["history"]) and graphs["test"] == plain["test"]
    assert graphs["config"]["cuda_graphs"] is True
    with pytest.warns(RuntimeWarning, match="cuda_graphs ignored"):
        cli_main(["train", "--model", "gmf", "--dataset", str(tiny_csv), "--epochs", "0", "--cuda-graphs",
                  "--out", str(tmp_path / "cli"), "--no-progress"])
    assert load_checkpoint(tmp_path / "cli" / "best.pt")["config"]["cuda_graphs"] is True


def test_bf16_autocast_training_tracks_fp32(tiny_csv, tmp_path):
    """bf16 autocast runs the fused op's bf16 path (parameters and Adam stay fp32).  bf16 keeps 8
    bits of mantissa, so the loss follows fp32 to about 1% and the ranking metrics to a few users."""
    fp32 = fit(_config(tiny_csv), tmp_path / "fp32", progress=False, log=False)
    bf16 = fit(_config(tiny_csv, precision="bf16"), tmp_path / "bf16", progress=False, log=False)
    for a, b in zip(fp32["history"][1:], bf16["history"][1:]):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.02)
        assert abs(a["hr@10"] - b["hr@10"]) <= 0.05
    assert fp32["history"][-1]["loss"] != bf16["history"][-1]["loss"]  # it really ran in bf16
    model, _, _ = load_model(tmp_path / "bf16" / "best.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="fp16 training needs a CUDA device"):
        fit(_config(tiny_csv, precision="fp16"), tmp_path / "fp16", progress=False, log=False)


def test_resume_may_change_only_how_long_and_where(tiny_csv, tmp_path):
    fit(_config(tiny_csv, epochs=1), tmp_path, progress=False, log=False)
    with pytest.warns(RuntimeWarning, match="cuda_graphs ignored"):
        resumed = fit(_config(tiny_csv, epochs=2, cuda_graphs=True, backend="torch"), tmp_path, resume=True,
                      progress=False, log=False)
    assert resumed["config"]["epochs"] == 2 and resumed["config"]["cuda_graphs"] is True
    assert resumed["config"]["backend"] == "torch"


_MALLOC_PROBE = """
import resource, sys, torch
from neumf_fast.malloc import configure_malloc
configured = configure_malloc() if sys.argv[1] == "on" else None
for _ in range(10):  # the heap grows to hold the block (4 rounds here)
    torch.empty(1 << 18).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(1 << 18).fill_(1.0)  # 1 MiB, allocated, written and freed
print(configured, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_configure_malloc_keeps_freed_memory_in_the_process():
    """configure_malloc fixes glibc's thresholds so that a freed 1 MiB block is reused without
    page faults.  The probe process starts where every such block is a fresh mmap
    (MALLOC_TRIM_THRESHOLD_ set in its environment, which also freezes glibc's mmap threshold
    at 128 KiB): without configure_malloc each allocation faults its 256 pages again; with it,
    the block stays in the heap."""
    import os
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("configure_malloc sets glibc's malloc")
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "131072"}
    faults = {}
    for mode in ("off", "on"):
        out = subprocess.run([sys.executable, "-c", _MALLOC_PROBE, mode], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        faults[mode] = int(out[-1])
        if mode == "on":
            assert out[0] == "True"
    assert faults["off"] >= 20 * 200, faults  # the probe sees the faults it is meant to remove
    assert faults["on"] < 100, faults


def test_configure_malloc_imports_without_numpy():
    """The benchmarks' conftest imports neumf_fast.malloc in every benchmark process, the GPU
    ones included, whose image may lack numpy: the module needs only the standard library."""
    import subprocess
    import sys

    probe = "import sys; sys.modules['numpy'] = None; from neumf_fast.malloc import configure_malloc; print('ok')"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    # the check can fail: the training module does need numpy
    blocked = subprocess.run([sys.executable, "-c", probe.replace("neumf_fast.malloc", "neumf_fast.train")],
                             capture_output=True, text=True)
    assert blocked.returncode != 0
