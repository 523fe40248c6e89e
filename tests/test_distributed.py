"""Multi-process data parallelism: 2 CPU processes (gloo, launched by `neumf-fast train --nproc 2`
through torchrun) against 1 process with the same global batch.

The global batch (333) does not divide evenly between the ranks, so every step checks the loss
weighting that makes DDP's gradient average equal the single-process gradient.  The two runs
differ only in the order of floating-point sums (gloo's all-reduce), so losses agree to 1e-5
relative and ranking metrics exactly or within one user (1/120).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("pandas", reason="the data pipeline needs pandas")
pytest.importorskip("matplotlib", reason="the data pipeline needs matplotlib")

from neumf_fast.checkpoints import load_model  # noqa: E402
from neumf_fast.config import TrainConfig  # noqa: E402
from neumf_fast.data import synthetic  # noqa: E402
from neumf_fast.train import fit  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    data = synthetic(0, num_users=120, num_items=300, num_interactions=6000)
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    path.write_text("user,item,timestamp\n" + "\n".join(
        f"{u + 1000},{i + 5000},{t}" for u, i, t in zip(data.user, data.item, data.timestamp)) + "\n")
    return path


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tiny_csv, tmp_path):
    args = ["--dataset", str(tiny_csv), "--epochs", "2", "--batch-size", "333", "--factors", "4",
            "--layers", "16,8,4", "--neg", "2", "--no-progress"]
    single = fit(TrainConfig(dataset=str(tiny_csv), epochs=2, batch_size=333, factors=4, layers=(16, 8, 4), neg=2),
                 tmp_path / "one", progress=False, log=False)
    done = subprocess.run([sys.executable, "-m", "neumf_fast.cli", "train", "--model", "neumf", *args,
                           "--out", str(tmp_path / "two"), "--nproc", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    multi = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert multi["processes"] == 2 and single["processes"] == 1
    for a, b in zip(single["history"], multi["history"]):
        if a["loss"] is not None:
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert abs(a["hr@10"] - b["hr@10"]) <= 1 / 120 + 1e-12
    assert abs(single["test"]["candidates"]["hr@10"] - multi["test"]["candidates"]["hr@10"]) <= 1 / 120 + 1e-12

    # a checkpoint written under DDP loads in a single process, with the single run's weights
    assert load_model(tmp_path / "two" / "best.pt")[0] is not None
    model, _, _ = load_model(tmp_path / "two" / "last.pt")
    reference, _, _ = load_model(tmp_path / "one" / "last.pt")
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
