"""Export: the programs round-trip in a fresh process that imports only torch (no neumf_fast at
all, so no training module) and score as the run's ``score`` to 1e-6, for user ids and (a
SequenceNeuMF run) histories; the top-K program equals ``topk`` of those scores; the AOTInductor
package loads and runs on the CPU where it can be built."""

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


@pytest.mark.parametrize("name", ["gmf", "mlp", "neumf", "seq-mean", "seq-sum"])
def test_every_exportable_model_matches_score_on_odd_shapes(name):
    torch.manual_seed(0)
    model = {"gmf": lambda: models.GMF(13, 37, 3), "mlp": lambda: models.MLP(13, 37, (10, 6, 3)),
             "neumf": lambda: models.NeuMF(13, 37, 3, (10, 6, 3)),
             "seq-mean": lambda: models.SequenceNeuMF(37, 5, history_items=37, mode="mean"),
             "seq-sum": lambda: models.SequenceNeuMF(37, 5, history_items=37, mode="sum")}[name]().eval()
    program = _export(CatalogueScores(model), 1).module()
    cases = [(torch.tensor([4]), torch.tensor([36])), (torch.arange(13), torch.arange(37)),
             (torch.tensor([12, 0, 3]), torch.tensor([5, 1, 1, 30]))]
    if name.startswith("seq"):  # histories of item indices padded with 37, one of them all padding
        hist = torch.randint(0, 38, (13, 9), generator=torch.Generator().manual_seed(1))
        hist[2] = 37
        cases = [(hist[:1, :1], torch.tensor([36])), (hist, torch.arange(37)), (hist[:3, :4], torch.tensor([5, 1, 1, 30]))]
    for users, items in cases:
        with torch.no_grad():
            torch.testing.assert_close(program(users, items), model.score(users, items), atol=ATOL, rtol=0)


SEQ_LOADER = """
import json, sys, torch
score = torch.export.load(sys.argv[1]).module()
top_k = torch.export.load(sys.argv[2]).module()
hist = torch.tensor(json.loads(sys.argv[3]))
with torch.no_grad():
    logits = score(hist, torch.arange(int(sys.argv[4])))
    values, top = top_k(hist, torch.arange(int(sys.argv[4])))
assert not any(m.split(".")[0] == "neumf_fast" for m in sys.modules), "neumf_fast was imported"
print(json.dumps({"logits": logits.tolist(), "top": top.tolist()}))
"""


def test_a_sequence_run_exports_programs_that_take_histories(tmp_path_factory):
    """A SequenceNeuMF run: the programs take histories of item indices (padded with
    ``history_pad`` of the id maps) and score, in a fresh torch-only process, as the run's
    ``score`` of those users (whose histories the run builds from its training data)."""
    run = tiny_run(tmp_path_factory.mktemp("seq-run"), num_users=30, num_items=90, num_interactions=900, model="seq")
    out = tmp_path_factory.mktemp("seq-export") / "model.pt2"
    cli_main(["export", str(run.checkpoint_path.parent), "--out", str(out), "--k", "4"])
    ids = json.loads(out.with_name("model.ids.json").read_text())
    assert ids["history_pad"] == run.split.num_items
    users = run.user_ids[[0, 5, len(run.user_ids) - 1]]
    hist = run._user_input(run.user_index(users))
    assert (hist == ids["history_pad"]).any() and (hist != ids["history_pad"]).any()  # padding and items
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = subprocess.run([sys.executable, "-c", SEQ_LOADER, str(out), str(out.with_name("model.topk.pt2")),
                           json.dumps(hist.tolist()), str(run.split.num_items)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    want = run.score(users.tolist(), run.item_ids)
    err = (torch.tensor(got["logits"]) - want).abs()
    assert err.max() <= ATOL, f"max abs error {err.max():.3g}"
    assert torch.equal(torch.tensor(got["top"]), want.topk(4, dim=1).indices)


def test_bad_export_requests_are_one_line(run, tmp_path):
    for argv, message in [(["--out", str(tmp_path / "model.bin")], "name it *.pt2"),
                          (["--out", str(tmp_path / "no" / "model.pt2")], "no directory")]:
        with pytest.raises(SystemExit) as e:
            cli_main(["export", str(run.checkpoint_path.parent)] + argv)
        assert message in str(e.value.code)
    dense = models.SequenceNeuMF(10, 4, user_dim=6)
    with pytest.raises(ValueError, match="dense user features are not exported"):
        CatalogueScores(dense)


def test_an_out_that_cannot_be_written_is_one_line_naming_it(run, tmp_path, monkeypatch):
    """Not torch's ``RuntimeError: [enforce fail at inline_container.cc:...]``.  A directory in
    the file's place is what makes a path unwritable here (the tests may run as root, for whom
    a read-only directory is still writable)."""
    from neumf_fast.cli import export_cmd

    taken = tmp_path / "model.pt2"
    taken.mkdir()
    argv = ["export", str(run.checkpoint_path.parent), "--out", str(taken)]
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert str(e.value.code) == f"neumf-fast: --out {taken}: cannot write {taken}: Is a directory"
    (tmp_path / "other.topk.pt2").mkdir()  # a sibling in the way is named too, before any work
    with pytest.raises(SystemExit) as e:
        cli_main(argv[:-1] + [str(tmp_path / "other.pt2")])
    assert f"cannot write {tmp_path / 'other.topk.pt2'}: Is a directory" in str(e.value.code)
    assert not (tmp_path / "other.pt2").exists()  # the check leaves no file behind
    # past the check (a path that turns unwritable during the export), the save names it as well
    monkeypatch.setattr(export_cmd, "check_writable", lambda out: None)
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert str(e.value.code) == f"neumf-fast: {taken}: Is a directory"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


@pytest.mark.slow
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


def test_the_served_history_example_of_the_docs_runs_torch_only_and_matches_the_run(tmp_path_factory):
    """docs/serving.md's cold-start example, as written bar its history, in a fresh process
    that imports only torch: its top-K by original item id equals ``Run.recommend(history=...)``
    with the history's items kept (the program does not leave them out)."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "seq.topk.pt2" in b)
    run = tiny_run(tmp_path_factory.mktemp("seq-run"), num_users=30, num_items=90, num_interactions=900, model="seq")
    out = tmp_path_factory.mktemp("seq-serve") / "seq.pt2"
    cli_main(["export", str(run.checkpoint_path.parent), "--out", str(out), "--k", "6"])
    history = run.item_ids[[3, 17, 40, 41]].tolist() + [999991]  # an unknown id: the example drops it
    script = example.replace("history = [1193, 661, 42]", f"history = {history}")
    assert script != example, "the example's history line changed: update this test"
    script += "\nimport sys\nassert not any(m.split('.')[0] == 'neumf_fast' for m in sys.modules)\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=out.parent, capture_output=True, text=True,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, timeout=120)
    assert done.returncode == 0, done.stderr
    want = run.recommend(history=history, k=6, exclude_seen=False, skip_unknown=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [i for i, _ in want]


def test_an_mlp_of_one_tower_layer_exports_and_scores():
    """No tower layer after the first: the prediction reads the first layer's output (with the
    row of ones the columns tower carries, weighted 0)."""
    torch.manual_seed(0)
    model = models.MLP(13, 37, (10, 4)).eval()
    with torch.no_grad():
        model.tower[0].bias.normal_(std=0.3), model.predict.bias.normal_(std=0.3)
    for columns in (True, False):
        program = _export(CatalogueScores(model, columns=columns), 1).module()
        for users, items in [(torch.tensor([4]), torch.tensor([36])), (torch.tensor([12, 0, 3]), torch.tensor([5, 1, 1, 30]))]:
            with torch.no_grad():
                torch.testing.assert_close(program(users, items), model.score(users, items), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["mlp", "neumf", "seq"])
def test_the_rows_form_of_the_aot_package_scores_as_the_model(name):
    """``columns=False`` (what the AOTInductor package is compiled from), exported and run."""
    torch.manual_seed(0)
    model = {"mlp": lambda: models.MLP(13, 37, (10, 6, 3)), "neumf": lambda: models.NeuMF(13, 37, 3, (10, 6, 3)),
             "seq": lambda: models.SequenceNeuMF(37, 5, history_items=37)}[name]().eval()
    program = _export(CatalogueScores(model, columns=False), 1).module()
    users = torch.randint(0, 38, (13, 4)) if name == "seq" else torch.arange(13)
    with torch.no_grad():
        torch.testing.assert_close(program(users, torch.arange(37)), model.score(users, torch.arange(37)), atol=ATOL, rtol=0)
        torch.testing.assert_close(program(users[:3], torch.tensor([5, 1, 1, 30])),
                                   model.score(users[:3], torch.tensor([5, 1, 1, 30])), atol=ATOL, rtol=0)
