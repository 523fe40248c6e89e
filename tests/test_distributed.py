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
import time

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


def _ranks_step_with_a_table_optimizer(rank: int, world: int, store_path: str, out: str) -> None:
    """One rank: NeuMF under DDP with row-wise Adam on its tables, three steps on this rank's own
    batches (shares of 37 and 36 rows: unequal), then every rank's tables gathered to rank 0."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from neumf_fast.models import NeuMF
    from neumf_fast.table_optimizer import TableOptimizer

    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    torch.manual_seed(0)
    model = NeuMF(50, 40, 4, (16, 8, 4), backend="cpu")
    model.table_optimizer = TableOptimizer(model.tables(), "adam", lr=0.05)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(model.tables()))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.Adam(model.dense_parameters(), lr=0.01)
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(3):
        n = 37 - rank
        user, item = torch.randint(0, 50, (n,), generator=g), torch.randint(0, 40, (n,), generator=g)
        opt.zero_grad()
        ddp(user, item).sum().backward()
        opt.step()
    tables = torch.cat([t.detach().reshape(-1) for t in model.tables().values()])
    gathered = [torch.empty_like(tables) for _ in range(world)]
    dist.all_gather(gathered, tables)
    if rank == 0:
        torch.save(gathered, out)
    # DDP's reducer holds the process group and is freed with the GIL held: were it the group's
    # last holder, gloo's destructor would join a worker thread that waits for the GIL to free the
    # all_gather's tensors, and hang.  Freed first, the group goes with destroy_process_group,
    # which releases the GIL.
    del ddp, opt, model
    dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_end_every_step_with_identical_tables(tmp_path):
    """Under DDP the table optimizer gathers every rank's row gradients and each rank applies the
    same update: the tables stay bit for bit identical, though each rank saw other rows."""
    out = tmp_path / "tables.pt"
    ranks = torch.multiprocessing.spawn(_ranks_step_with_a_table_optimizer,
                                        args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=False)
    deadline = time.monotonic() + 300  # a hung rank fails the test instead of stalling the suite
    while not ranks.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the two ranks did not finish within 300 s")
    first, second = torch.load(out)
    assert torch.equal(first, second)
    torch.manual_seed(0)
    from neumf_fast.models import NeuMF

    assert not torch.equal(first, torch.cat([t.detach().reshape(-1) for t in NeuMF(50, 40, 4, (16, 8, 4)).tables().values()]))
