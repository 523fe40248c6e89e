"""``TableOptimizer``: the models' tables updated inside the fused op's backward.

A step with a table optimizer must update exactly the rows the batch touched, as the optimizer's
spec (``reference.table_update_``) does from the dense gradient autograd gives the table, and
leave every other parameter's gradient as the dense step has it.  Tolerance: float32, 2e-6
absolute on tables of magnitude about 0.01 to 1 (one step of an optimizer with lr 0.05: a few
float32 ulps of the gradient sums and the update, which differ only in summation order).
"""

from __future__ import annotations

import copy

import pytest
import torch

from neumf_fast import models, reference
from neumf_fast.ops.table_update import new_state
from neumf_fast.table_optimizer import TableOptimizer
from neumf_fast.written_out import WrittenOutStep

from conftest import target_reasons

OPTIMIZERS = ["sgd", "adam", "rowwise_adagrad"]
LR = 0.05


def _model(kind: str, backend: str):
    torch.manual_seed(0)
    if kind == "seq":
        return models.SequenceNeuMF(40, 6, history_items=30, backend=backend)
    return {"gmf": models.GMF, "mlp": models.MLP, "neumf": models.NeuMF}[kind](50, 40, backend=backend) \
        if kind != "mlp" else models.MLP(50, 40, (8, 4), backend=backend)


def _batch(kind: str, batch: int = 37, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    if kind == "seq":
        user = torch.randint(0, 31, (batch, 5), generator=g)  # 30 is the padding id
        user[3] = 30  # a history of nothing but padding
    else:
        user = torch.randint(0, 50, (batch,), generator=g)
    return user, torch.randint(0, 40, (batch,), generator=g)


def _expected_tables(dense_model, optimizer: str) -> dict[str, torch.Tensor]:
    """Each table after ``optimizer``'s step from its dense gradient, on the rows it names."""
    out = {}
    for name, table in dense_model.tables().items():
        rows = table.grad.abs().sum(1).nonzero()[:, 0]
        new = table.detach().clone()
        reference.table_update_(new, *new_state(optimizer, new), rows[:, None], table.grad[rows].contiguous(), None,
                                optimizer, LR, 0.9, 0.999, 1e-8, 0.0)
        out[name] = new
    return out


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("kind", ["gmf", "mlp", "neumf", "seq"])
@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_a_step_updates_the_touched_rows_as_the_spec(kind, optimizer, backend):
    reasons = [] if backend == "torch" else target_reasons("triton-interpret" if backend == "triton" else backend)
    if reasons:
        pytest.skip("; ".join(reasons))
    if backend == "triton" and kind != "neumf":
        pytest.skip("the interpreter is slow: one model on Triton")
    dense = _model(kind, backend)
    rowwise = copy.deepcopy(dense)
    rowwise.table_optimizer = TableOptimizer(rowwise.tables(), optimizer, lr=LR)
    user, item = _batch(kind)
    dense(user, item).sum().backward()
    rowwise(user, item).sum().backward()
    expected = _expected_tables(dense, optimizer)
    for name, table in rowwise.tables().items():
        assert table.grad is None, name
        torch.testing.assert_close(table.detach(), expected[name], atol=2e-6, rtol=0, msg=lambda m: f"{name}: {m}")
    for (name, p), q in zip(dense.named_parameters(), rowwise.parameters()):
        if name not in rowwise.tables():
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_inference_and_eval_leave_the_tables_alone():
    model = _model("neumf", "cpu")
    before = {n: t.detach().clone() for n, t in model.tables().items()}
    model.table_optimizer = TableOptimizer(model.tables(), "adam")
    user, item = _batch("neumf")
    with torch.no_grad():
        model(user, item)
    model(user, item).detach()  # no backward: nothing to update
    for name, table in model.tables().items():
        assert torch.equal(table, before[name]), name


@pytest.mark.parametrize("kind", ["gmf", "mlp", "neumf"])
def test_the_written_out_step_matches_autograd_with_a_table_optimizer(kind):
    """The trainer's CPU fast path (written_out.py) takes the table optimizer too: three steps of
    it against three of autograd + torch.optim, from the same start."""
    models_ = [_model(kind, "cpu") for _ in range(2)]
    steps = []
    for m in models_:
        m.table_optimizer = TableOptimizer(m.tables(), "adam", lr=LR)
        opt = torch.optim.Adam(m.dense_parameters(), lr=0.01, fused=True)
        assert not WrittenOutStep.why_not(m, opt)
        steps.append(opt)
    written = WrittenOutStep(models_[1], steps[1])
    for s in range(3):
        user, item = _batch(kind, 64 + s)
        label = (item % 2).float()
        steps[0].zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(models_[0](user, item), label).backward()
        steps[0].step()
        if written.ready():
            written.step(user, item, label)
        else:  # a fresh optimizer's first step goes through autograd (see WrittenOutStep)
            steps[1].zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(models_[1](user, item), label).backward()
            steps[1].step()
    for (name, p), q in zip(models_[0].named_parameters(), models_[1].parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_a_step_allocates_nothing_of_a_tables_size():
    """The profiler's allocation records of one step with row-wise Adam: none as large as a
    table (the dense backward allocates two, one gradient per table)."""
    torch.manual_seed(0)
    model = models.NeuMF(20000, 20000, backend="cpu")  # tables 20000 x 24 floats, 1.9 MB each
    table_bytes = min(t.numel() * t.element_size() for t in model.tables().values())
    user, item = torch.randint(0, 20000, (256,)), torch.randint(0, 20000, (256,))

    def largest_allocation(m) -> int:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            m(user, item).sum().backward()
        return max(e.cpu_memory_usage for e in prof.events())

    assert largest_allocation(copy.deepcopy(model)) >= table_bytes  # the check sees the dense gradient
    model.table_optimizer = TableOptimizer(model.tables(), "adam")
    assert largest_allocation(model) < table_bytes


def test_compiled_step_updates_the_tables_as_eager():
    eager = _model("neumf", "cpu")
    compiled = copy.deepcopy(eager)
    for m in (eager, compiled):
        m.table_optimizer = TableOptimizer(m.tables(), "adam", lr=LR)
    step = torch.compile(lambda m, u, i: m(u, i).sum())
    for s in range(2):
        user, item = _batch("neumf", 37 + s)
        eager(user, item).sum().backward()
        step(compiled, user, item).backward()
    for name, table in compiled.tables().items():
        torch.testing.assert_close(table, eager.tables()[name], atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")


def test_state_dict_round_trip_and_refusals():
    model = _model("neumf", "cpu")
    opt = TableOptimizer(model.tables(), "rowwise_adagrad", lr=0.1)
    model.table_optimizer = opt
    model(*_batch("neumf")).sum().backward()
    saved = copy.deepcopy(opt.state_dict())
    again = TableOptimizer(model.tables(), "rowwise_adagrad", lr=0.1)
    again.load_state_dict(saved)
    for name, state in again.state.items():
        assert all(torch.equal(a, b) for a, b in zip(state, opt.state[name]))
    with pytest.raises(ValueError, match="saved table optimizer is"):
        TableOptimizer(model.tables(), "rowwise_adagrad", lr=0.2).load_state_dict(saved)
    with pytest.raises(ValueError, match="must be one of"):
        TableOptimizer(model.tables(), "lamb")


def test_one_table_on_both_sides_is_refused():
    table = torch.nn.Parameter(torch.randn(10, 4))
    opt = TableOptimizer({"t": table}, "sgd")
    from neumf_fast.ops import neumf_input

    with pytest.raises(ValueError, match="both sides"):
        neumf_input(torch.tensor([[1]]), torch.tensor([2]), h_mf=4, user_table=table, item_table=table,
                    table_optimizer=opt)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (a CUDA graph)")
def test_a_captured_step_updates_the_tables_as_eager():
    """``--cuda-graphs`` with a table optimizer: six steps (three eager warm-up steps, the
    capture, replays) end with the same tables as six eager steps."""
    from neumf_fast.train_step import TrainStep

    tables = []
    for capture in (False, True):
        model = _model("neumf", "auto").cuda()
        model.table_optimizer = TableOptimizer(model.tables(), "adam", lr=LR)
        opt = torch.optim.Adam(model.dense_parameters(), lr=0.01, fused=True, capturable=capture)
        step = TrainStep(model, opt, 64, capture=capture)
        step.begin_epoch(torch.device("cuda"))
        for s in range(6):
            user, item = _batch("neumf", 64, seed=s)
            step(user.cuda(), item.cuda(), (item % 2).float().cuda(), 64)
        assert (step.graph is not None) == capture
        tables.append({n: t.detach().cpu() for n, t in model.tables().items()})
    for name, table in tables[0].items():
        torch.testing.assert_close(tables[1][name], table, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
