"""Export: the programs round-trip in a fresh process that imports only torch (no neumf_fast at
all, so no training module) and score as the run's ``score`` to 1e-6; the top-K program equals
``topk`` of those scores; the AOTInductor package loads and runs on the CPU where it can be built."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from neumf_fast import models
from neumf_fast.cli import main as cli_main
from neumf_fast.export import CatalogueScores, _export, export_run

from conftest import tiny_run

# fp32: the program sums the same products as score in another order; 1e-6 is the bar
# (logits of size ~0.1-1, float32 ulp ~6e-8).
ATOL = 1e-6

LOADER = """
import json, sys, torch
score = torch.export.load(sys.argv[1]).module()
top_k = torch.export.load(sys.argv[2]).module()
ids = json.load(open(sys.argv[3]))
users = torch.tensor([0, 2, len(ids["users"]) - 1])
items = torch.arange(len(ids["items"]))
with torch.no_grad():
    logits = score(users, items)
    one = score(users[:1], items[5:105])
    values, top = top_k(users, items)
assert not any(m == "neumf_fast" or m.startswith("neumf_fast.") for m in sys.modules), "neumf_fast was imported"
print(json.dumps({"logits": logits.tolist(), "one": one.tolist(), "values": values.tolist(), "top": top.tolist(),
                  "modules": sorted(m for m in sys.modules if m.split(".")[0] == "neumf_fast")}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run"), num_users=40, num_items=150, num_interactions=1500)


def test_exported_programs_score_as_the_run_in_a_fresh_torch_only_process(run, tmp_path):
    out = tmp_path / "model.pt2"
    cli_main(["export", str(run.checkpoint_path.parent), "--out", str(out), "--k", "7"])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no PYTHONPATH: neumf_fast is not importable as ours
    done = subprocess.run([sys.executable, "-c", LOADER, str(out), str(tmp_path / "model.topk.pt2"),
                           str(tmp_path / "model.ids.json")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    ids = json.loads((tmp_path / "model.ids.json").read_text())
    assert ids["users"] == run.user_ids.tolist() and ids["items"] == run.item_ids.tolist() and ids["k"] == 7
    users = [ids["users"][i] for i in (0, 2, len(ids["users"]) - 1)]
    want = run.score(users, run.item_ids)
    err = (torch.tensor(got["logits"]) - want).abs()
    assert err.max() <= ATOL, f"max abs error {err.max():.3g} at {divmod(int(err.argmax()), want.shape[1])}"
    torch.testing.assert_close(torch.tensor(got["one"]), want[:1, 5:105], atol=ATOL, rtol=0)
    top = want.topk(7, dim=1)
    torch.testing.assert_close(torch.tensor(got["values"]), top.values, atol=ATOL, rtol=0)
    assert torch.equal(torch.tensor(got["top"]), top.indices)  # candidates are arange: positions are indices
    assert got["modules"] == []


@pytest.mark.parametrize("name", ["gmf", "mlp", "neumf"])
def test_every_exportable_model_matches_score_on_odd_shapes(name):
    torch.manual_seed(0)
    model = {"gmf": models.GMF(13, 37, 3), "mlp": models.MLP(13, 37, (10, 6, 3)),
             "neumf": models.NeuMF(13, 37, 3, (10, 6, 3))}[name].eval()
    program = _export(CatalogueScores(model), 1).module()
    for users, items in [(torch.tensor([4]), torch.tensor([36])), (torch.arange(13), torch.arange(37)),
                         (torch.tensor([12, 0, 3]), torch.tensor([5, 1, 1, 30]))]:
        with torch.no_grad():
            torch.testing.assert_close(program(users, items), model.score(users, items), atol=ATOL, rtol=0)


def test_bad_export_requests_are_one_line(run, tmp_path):
    for argv, message in [(["--out", str(tmp_path / "model.bin")], "name it *.pt2"),
                          (["--out", str(tmp_path / "no" / "model.pt2")], "no directory")]:
        with pytest.raises(SystemExit) as e:
            cli_main(["export", str(run.checkpoint_path.parent)] + argv)
        assert message in str(e.value.code)
    seq = type("SeqRun", (), {"model": models.SequenceNeuMF(10, 4, history_items=10)})()
    with pytest.raises(ValueError, match="SequenceNeuMF run .* is not exported"):
        export_run(seq, tmp_path / "seq.pt2")


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


@pytest.mark.skipif(_compiler() is None, reason="AOTInductor compiles C++: no c++/g++ compiler on PATH")
@pytest.mark.skipif(not hasattr(torch._inductor, "aoti_compile_and_package"),
                    reason=f"torch {torch.__version__} has no torch._inductor.aoti_compile_and_package")
def test_aot_package_loads_and_runs_on_the_cpu(run, tmp_path):
    paths = export_run(run, tmp_path / "model.pt2", k=5, aot=True)
    compiled = torch._inductor.aoti_load_package(str(paths["aoti"]))
    users, items = run.user_index(run.user_ids[:3]), torch.arange(run.split.num_items)
    with torch.no_grad():
        got = compiled(users, items)
    # Inductor may fuse and reorder the float32 sums: a few ulps more than the eager program
    torch.testing.assert_close(got, run.model.score(users, items), atol=1e-5, rtol=0)
