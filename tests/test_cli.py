"""A new user's first hour: runs are never silently overwritten, small catalogues train, the
thread count is chosen, every bad flag is one line before any work, and the Python API (the
README's example) works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pandas", reason="the data pipeline needs pandas")
pytest.importorskip("tqdm", reason="the data pipeline needs tqdm")
pytest.importorskip("matplotlib", reason="the data pipeline needs matplotlib")

import neumf_fast
from neumf_fast.checkpoints import load_checkpoint
from neumf_fast.cli import main as cli_main
from neumf_fast.config import TrainConfig
from neumf_fast.data import synthetic
from neumf_fast.parallel import configure_threads
from neumf_fast.run_files import RunExistsError
from neumf_fast.train import fit

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--batch-size", "512", "--factors", "4", "--layers", "16,8,4", "--neg", "2", "--no-progress"]


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    """120 users, 2,000 items; ids as they are (so the README's ids 42, 7, 1193 and 661 exist)."""
    data = synthetic(0, num_users=120, num_items=2000, num_interactions=6000)
    path = tmp_path_factory.mktemp("data") / "events.csv"
    rows = [f"{u},{i},{t}" for u, i, t in zip(data.user_ids[data.user], data.item_ids[data.item], data.timestamp)]
    path.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(data_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    fit(TrainConfig(dataset=str(data_csv), epochs=1, batch_size=512, factors=4, layers=(16, 8, 4), neg=2), out,
        progress=False, log=False)
    return out


def _error(argv) -> str:
    """The one-line message a CLI call exits with (SystemExit with a message, or argparse's exit 2)."""
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert e.value.code not in (0, None), argv
    return e.value.code if isinstance(e.value.code, str) else ""


# ---- 1. runs are never silently overwritten ---------------------------------------------------


def test_a_run_directory_is_not_overwritten_without_being_asked(data_csv, trained, tmp_path):
    before = (trained / "best.pt").read_bytes()
    message = _error(["train", "--dataset", str(data_csv), "--out", str(trained), *FAST])
    assert "already holds a run; pass --resume to continue it, --overwrite to replace it" in message
    assert "\n" not in message and (trained / "best.pt").read_bytes() == before
    with pytest.raises(RunExistsError):
        fit(TrainConfig(dataset=str(data_csv), epochs=0), trained, progress=False, log=False)
    assert (trained / "best.pt").read_bytes() == before

    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("best.pt", "last.pt", "split.npz"):
        (copy / name).write_bytes((trained / name).read_bytes())
    cli_main(["train", "--dataset", str(data_csv), "--out", str(copy), "--overwrite", *FAST, "--epochs", "0"])
    assert load_checkpoint(copy / "best.pt")["epoch"] == -1  # replaced, as asked


def test_the_default_run_directory_moves_on_to_a_fresh_one(data_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli_main(["train", "--model", "gmf", "--dataset", str(data_csv), *FAST, "--epochs", "0"])
    first = (tmp_path / "runs" / "gmf" / "best.pt").read_bytes()
    cli_main(["train", "--model", "gmf", "--dataset", str(data_csv), *FAST, "--epochs", "0"])
    out = capsys.readouterr().out
    assert f"runs{os.sep}gmf holds a run already; this run goes to runs{os.sep}gmf-2" in out
    assert (tmp_path / "runs" / "gmf-2" / "best.pt").exists()
    assert (tmp_path / "runs" / "gmf" / "best.pt").read_bytes() == first


# ---- 2. small catalogues ----------------------------------------------------------------------


def test_a_small_catalogue_trains_and_evaluates(tmp_path, capsys):
    """50 users x 20 items: 99 evaluation negatives cannot be had.  The default warns, counting
    the users evaluated among fewer candidates; --eval-negatives asks for fewer."""
    rng = np.random.default_rng(0)
    lines = [f"{u},{i},{t}" for u in range(50) for t, i in enumerate(rng.choice(20, size=8, replace=False))]
    path = tmp_path / "small.csv"
    path.write_text("user,item,timestamp\n" + "\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"50 of 50 evaluated users have fewer than 99 items"):
        cli_main(["train", "--dataset", str(path), "--out", str(tmp_path / "a"), *FAST])
    cli_main(["train", "--dataset", str(path), "--out", str(tmp_path / "b"), *FAST, "--eval-negatives", "5"])
    assert load_checkpoint(tmp_path / "b" / "best.pt")["config"]["eval_negatives"] == 5
    assert "| popularity |" in capsys.readouterr().out


# ---- 3. threads --------------------------------------------------------------------------------


def test_threads_are_chosen_deliberately():
    before = torch.get_num_threads()
    try:
        assert configure_threads(None, 256) == 1 == torch.get_num_threads()  # the paper's batch: one thread
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        assert configure_threads(None, 8192) == cores
        assert configure_threads(2, 256) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert "--threads: must be auto or a positive integer, got 0" in _cli_stderr(["train", "--threads", "0"])


# ---- 4. every bad flag: one line, non-zero, before any work -------------------------------------


def _cli_stderr(argv, returncode=None) -> str:
    done = subprocess.run([sys.executable, "-m", "neumf_fast.cli", *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode != 0, done.stdout
    if returncode is not None:
        assert done.returncode == returncode
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


@pytest.mark.parametrize("argv,expected", [
    (["train", "--epochs", "-1"], "argument --epochs: must be an integer >= 0, got -1"),
    (["recommend", "x.pt", "--user", "1", "--backend", "bogus"], "argument --backend: invalid choice: 'bogus'"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be a positive integer, got 0"),
    (["train", "--lr", "-0.1"], "argument --lr: must be a positive number"),
    (["train", "--alpha", "2"], "argument --alpha: must be a number in [0, 1]"),
])
def test_argument_errors_exit_2_with_usage(argv, expected):
    err = _cli_stderr(argv, returncode=2)
    assert expected in err, err


def test_a_cuda_device_without_cuda_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    err = _cli_stderr(["train", "--device", "cuda", "--out", str(tmp_path / "x")])
    assert err.strip().count("\n") == 0, err
    assert "--device cuda:" in err and "use --device cpu" in err, err
    assert not (tmp_path / "x").exists()  # before any work


def test_a_backend_that_cannot_run_on_the_device_is_refused_before_any_work(tmp_path, data_csv):
    if torch.cuda.is_available():
        pytest.skip("triton can run here")
    env_free = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "neumf_fast.cli", "train", "--backend", "triton", "--dataset",
                           str(data_csv), "--out", str(tmp_path / "x"), *FAST], capture_output=True, text=True,
                          cwd=ROOT, env=env_free, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("neumf-fast: --backend triton cannot run on cpu: the Triton kernels run on CUDA")
    assert done.stderr.strip().endswith("Use --backend auto") and done.stderr.strip().count("\n") == 0
    assert "epoch 0" not in done.stdout and not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv,expected", [
    (["train", "--dataset", "nope"], "--dataset 'nope': no such file or directory, and not one of synthetic"),
    (["train", "--model", "gmf", "--pretrain", "a.pt", "b.pt"], "--pretrain applies to --model neumf"),
    (["train", "--pretrain", "a.pt", "b.pt"], "--pretrain a.pt: no such checkpoint file"),
    (["train", "--precision", "fp16"], "--precision fp16 needs --device cuda"),
    (["train", "--table-lr", "0.1"], "--table-lr sets a table optimizer's lr; with --table-optimizer dense"),
    (["train", "--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
    (["train", "--device", "tpu"], "--device 'tpu' is not a device"),
])
def test_flag_errors_are_one_line(argv, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = _error(argv)
    assert message.startswith("neumf-fast: ") and expected in message and "\n" not in message, message
    assert not (tmp_path / "runs").exists()


def test_bad_checkpoints_are_one_line_without_torchs_advice(trained, tmp_path):
    truncated = tmp_path / "best.pt"
    truncated.write_bytes((trained / "best.pt").read_bytes()[:1000])
    (tmp_path / "split.npz").write_bytes((trained / "split.npz").read_bytes())
    for path in (truncated, trained / "metrics.json"):
        message = _error(["evaluate", str(path)])
        assert "not a readable neumf_fast checkpoint" in message and "weights_only" not in message, message
        assert "\n" not in message
    assert "no such checkpoint" in _error(["evaluate", str(tmp_path / "missing.pt")])
    assert "Traceback" in subprocess.run([sys.executable, "-m", "neumf_fast.cli", "evaluate", str(truncated),
                                          "--debug"], capture_output=True, text=True, cwd=ROOT).stderr


def test_help_shows_defaults():
    done = subprocess.run([sys.executable, "-m", "neumf_fast.cli", "train", "--help"], capture_output=True, text=True,
                          cwd=ROOT)
    text = " ".join(done.stdout.split())  # argparse wraps lines
    assert "(default: 256)" in text and "(default: 64,32,16,8)" in text and "(default: 99)" in text, text


# ---- 5. the Python API ------------------------------------------------------------------------


def test_available_backends_takes_a_device():
    assert neumf_fast.available_backends()[-1] == "torch"
    assert "triton" not in neumf_fast.available_backends("cpu") or os.environ.get("TRITON_INTERPRET") == "1"


def test_the_readmes_python_example_runs(trained):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- api-example[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert block, "the README's api-example block is missing"
    code = block.group(1).replace('"runs/neumf"', repr(str(trained)))
    scope: dict = {}
    exec(compile(code, "README.md api-example", "exec"), scope)
    run = scope["run"]
    top = scope["top"]
    assert len(top) == 5 and top == sorted(top, key=lambda t: -t[1])
    seen_items = set(run.item_ids[run.seen(42)[0].numpy()].tolist())
    assert not seen_items & {item for item, _ in top}
    assert scope["scores"].shape == (2, 2)
    assert run.user_ids[scope["rows"]].tolist() == [42, 7]
    # scores by original ids are the model's scores at the mapped indices
    with torch.no_grad():
        direct = run.model.score(run.user_index([42, 7]), run.item_index([1193, 661]))
    torch.testing.assert_close(scope["scores"], direct)
    assert 0.0 <= scope["hr10"] <= 1.0
    with pytest.raises(KeyError, match="unknown user id 99999"):
        run.recommend(99999)
