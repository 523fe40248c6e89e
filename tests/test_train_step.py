"""The training step (neumf_fast/train_step.py): the same arithmetic as a plain PyTorch loop, no
host sync inside a step, and on CUDA the captured step against the eager one.

Without a GPU, the capture itself cannot run: the CPU tests check everything the capture relies
on (the step's Python never reads a tensor on the host; the id checks become device asserts
while capturing; capture is refused, saying why, where it cannot work)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from neumf_fast import models
from neumf_fast.ops import _checks, _library
from neumf_fast.train import train_epoch
from neumf_fast.table_optimizer import TableOptimizer
from neumf_fast.train_step import TrainStep

needs_extension = pytest.mark.skipif(_library.EXTENSION_ERROR is not None, reason="C++ extension not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

USERS, ITEMS = 50, 40


def _model(kind: str, backend: str, device="cpu"):
    torch.manual_seed(0)
    if kind == "neumf":
        model = models.NeuMF(USERS, ITEMS, 8, (32, 16, 8), backend=backend)
    elif kind == "gmf":
        model = models.GMF(USERS, ITEMS, 8, backend=backend)
    elif kind == "mlp":
        model = models.MLP(USERS, ITEMS, (32, 16, 8), backend=backend)
    else:
        model = models.SequenceNeuMF(ITEMS, 8, history_items=ITEMS, backend=backend)
    return model.to(device)


def _samples(n: int, device="cpu", seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(0, USERS, (n,), generator=g)
    item = torch.randint(0, ITEMS, (n,), generator=g)
    label = (torch.rand(n, generator=g) < 0.2).float()
    return user.to(device), item.to(device), label.to(device)


class _History:
    """A fixed history per user, as evaluate.UserInput gives SequenceNeuMF (padding id ITEMS)."""

    def __init__(self, device="cpu"):
        g = torch.Generator().manual_seed(2)
        self.history = torch.randint(0, ITEMS + 1, (USERS, 6), generator=g).to(device)

    def __call__(self, users, items=None):
        hist = self.history[users]
        return hist if items is None else hist.masked_fill(hist == items[:, None], ITEMS)


def _plain_epoch(model, optimizer, samples, batch_size, user_input=None) -> float:
    """The loop a user writes: the spec that train_epoch/TrainStep must reproduce exactly."""
    user, item, label = samples
    total = 0.0
    for start in range(0, len(user), batch_size):
        u, i, y = user[start:start + batch_size], item[start:start + batch_size], label[start:start + batch_size]
        loss = F.binary_cross_entropy_with_logits(model(user_input(u, i) if user_input else u, i), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(u)
    return total / len(user)


@needs_extension
@pytest.mark.parametrize("kind", ["neumf", "gmf", "mlp", "seq"])
def test_the_autograd_step_is_the_plain_loop(kind):
    """Bit-for-bit the same weights as the plain loop over the same batches (the last one short):
    the same ops in the same order."""
    samples = _samples(203)
    user_input = _History() if kind == "seq" else None
    ours, plain = _model(kind, "cpu"), _model(kind, "cpu")
    opt_ours = torch.optim.Adam(ours.parameters(), lr=0.01, fused=True)
    opt_plain = torch.optim.Adam(plain.parameters(), lr=0.01, fused=True)
    step = TrainStep(ours, opt_ours, 64, user_input=user_input, written_out=False)
    for _ in range(2):
        loss = train_epoch(ours, opt_ours, samples, 64, step=step)
        expected = _plain_epoch(plain, opt_plain, samples, 64, user_input)
        assert loss == pytest.approx(expected, rel=1e-6)  # summed in another order
    for (name, a), b in zip(ours.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs: max abs {(a - b).abs().max():.3g}"


@needs_extension
@pytest.mark.parametrize("kind", ["neumf", "gmf", "mlp", "neumf-mlp-first"])
def test_the_written_out_gradients_are_autograds(kind):
    """The hand-written backward against autograd's on one batch.  Tolerance: float32 rounding of
    GEMMs summed in another order (the loss gradient's formula is autograd's own), relative
    1e-5 of each gradient's scale.  "neumf-mlp-first" turns NeuMF's head around (the tower's
    output first, as SequenceNeuMF has it): the written-out step reads the order from the model."""
    model = _model(kind.split("-")[0], "cpu")
    if kind == "neumf-mlp-first":
        model.HEAD = ("mlp", "gmf")
        assert model.head_columns() == {"mlp": slice(0, 8), "gmf": slice(8, 16)}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    user, item, label = _samples(37)
    F.binary_cross_entropy_with_logits(model(user, item), label).backward()
    written = TrainStep(model, optimizer, 37).written_out.gradients(user, item, label)
    for name, p in model.named_parameters():
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(written[name], p.grad, rtol=1e-5, atol=1e-5 * scale + 1e-12,
                                   msg=lambda m: f"{name}: {m}")


@needs_extension
@pytest.mark.parametrize("kind", ["neumf", "gmf", "mlp"])
def test_the_written_out_step_trains_like_the_autograd_step(kind):
    """Two epochs of 7 batches (the last one short) both ways from the same start.  Adam divides
    each gradient by its running scale, so float32 differences in the gradients stay at that
    level in the weights: relative 1e-4 (absolute 1e-6) after 16 steps, and the loss to 1e-6."""
    samples = _samples(7 * 64 - 13)
    results = []
    for written_out in (False, True):
        model = _model(kind, "cpu")
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
        step = TrainStep(model, optimizer, 64, written_out=written_out)
        losses = [train_epoch(model, optimizer, samples, 64, step=step) for _ in range(2)]
        assert (step.written_out is not None) == written_out
        results.append((losses, model.state_dict(), optimizer.state_dict()))
    (losses_a, state_a, opt_a), (losses_w, state_w, opt_w) = results
    assert losses_w == pytest.approx(losses_a, rel=1e-6)
    for name, a in state_a.items():
        torch.testing.assert_close(state_w[name], a, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    for k, sa in opt_a["state"].items():  # Adam's state is the optimizer's own, stepped as often
        assert float(opt_w["state"][k]["step"]) == float(sa["step"]) == 14
        torch.testing.assert_close(opt_w["state"][k]["exp_avg"], sa["exp_avg"], rtol=1e-4, atol=1e-7)


@needs_extension
def test_the_written_out_step_keeps_adams_step_counts_in_the_optimizer():
    """The written-out step advances every parameter's step count with one add (the counts are
    views of one buffer).  The optimizer's state_dict holds the right counts.  A checkpoint
    saved with torch.save and loaded back, into the same model and optimizer or into fresh
    ones, continues exactly as the uninterrupted run, and the loaded counts are the ones that
    advance."""
    import io

    samples = _samples(3 * 64)

    def fresh():
        model = _model("neumf", "cpu")
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
        return model, optimizer, TrainStep(model, optimizer, 64)

    def states(model, optimizer):
        return model.state_dict(), optimizer.state_dict()["state"]

    model, optimizer, step = fresh()
    train_epoch(model, optimizer, samples, 64, step=step)  # 1 autograd step, then 2 written out
    assert step.written_out is not None and step.written_out._step_counts is not None
    assert [float(s["step"]) for s in optimizer.state_dict()["state"].values()] == [3.0] * len(optimizer.state)
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, saved)
    train_epoch(model, optimizer, samples, 64, step=step)
    expected = {k: v.clone() for k, v in model.state_dict().items()}, \
        {k: {n: t.clone() for n, t in v.items()} for k, v in optimizer.state_dict()["state"].items()}

    for same_objects in (True, False):
        saved.seek(0)
        checkpoint = torch.load(saved)
        if not same_objects:
            model, optimizer, step = fresh()
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        train_epoch(model, optimizer, samples, 64, step=step)
        weights, adam = states(model, optimizer)
        for name, a in expected[0].items():
            assert torch.equal(weights[name], a), (same_objects, name)
        for k, a in expected[1].items():
            assert float(adam[k]["step"]) == float(a["step"]) == 6.0, (same_objects, k)
            assert torch.equal(adam[k]["exp_avg_sq"], a["exp_avg_sq"]), (same_objects, k)


@needs_extension
def test_the_written_out_step_is_taken_only_where_it_applies():
    model = _model("neumf", "cpu")
    adam = lambda m, **kw: torch.optim.Adam(m.parameters(), lr=0.01, **kw)
    assert TrainStep(model, adam(model, fused=True), 64).written_out is not None
    assert TrainStep(model, adam(model, fused=True), 64, precision="bf16").written_out is None
    assert TrainStep(model, adam(model), 64).written_out is None  # not fused: its own arithmetic
    assert TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), 64).written_out is None
    seq = _model("seq", "cpu")
    assert TrainStep(seq, adam(seq, fused=True), 64, user_input=_History()).written_out is None
    reference = _model("neumf", "torch")
    assert TrainStep(reference, adam(reference, fused=True), 64).written_out is None


_SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


@contextlib.contextmanager
def _host_reads_forbidden():
    """Every Python-level read of a tensor's value on the host raises: what a CUDA graph
    capture would refuse (C++ kernels on the CPU read their inputs directly, not through these)."""
    saved = {name: getattr(torch.Tensor, name) for name in _SYNCS}

    def forbid(name):
        def read(self, *args, **kw):
            raise AssertionError(f"Tensor.{name} read a value on the host inside a training step")
        return read

    try:
        for name in _SYNCS:
            setattr(torch.Tensor, name, forbid(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@needs_extension
@pytest.mark.parametrize("precision,table_optimizer", [("fp32", None), ("bf16", None), ("fp32", "adam")])
@pytest.mark.parametrize("kind", ["neumf", "seq"])
def test_a_step_reads_nothing_on_the_host(kind, precision, table_optimizer):
    """The loss is summed on the device and read once, after the epoch.  bf16 covers the
    autocast path, whose row gather checks ids (on the host outside a capture); a table
    optimizer, the rows pooled by the op and updated in the backward."""
    model = _model(kind, "cpu")
    if table_optimizer:
        model.table_optimizer = TableOptimizer(model.tables(), table_optimizer)
    step = TrainStep(model, torch.optim.Adam(model.dense_parameters(), lr=0.01, fused=True), 32,
                     user_input=_History() if kind == "seq" else None, precision=precision)
    user, item, label = _samples(64)
    step.begin_epoch("cpu")
    with _host_reads_forbidden(), _pretend_capturing():
        step(user[:32], item[:32], label[:32], 32)
        step(user[32:], item[32:], label[32:], 32)
    assert 0 < step.mean_loss(64) < 1


@contextlib.contextmanager
def _pretend_capturing():
    original = _checks.capturing
    _checks.capturing = lambda t: True
    try:
        yield
    finally:
        _checks.capturing = original


def test_id_checks_become_device_asserts_while_capturing(monkeypatch):
    """No host read while capturing; a bad id still stops the call (on the CPU the assert is
    synchronous and raises at once; on a GPU it fires when the graph replays)."""
    ids = torch.tensor([0, 3, 9])
    with _host_reads_forbidden(), _pretend_capturing():
        _checks.check_id_range(ids, None, 10, "item")
    with _pretend_capturing(), pytest.raises(RuntimeError, match="item id is out of range for a table with 9 rows"):
        _checks.check_id_range(ids, None, 9, "item")
    with pytest.raises(IndexError, match="item id 9 is out of range"):  # outside a capture: the exact id
        _checks.check_id_range(ids, None, 9, "item")


def test_capture_is_refused_saying_why():
    model = _model("gmf", "torch")
    plain_adam = torch.optim.Adam(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="capturable=True") as err:
        TrainStep(model, plain_adam, 32, capture=True)
    if not torch.cuda.is_available():
        assert "CUDA graphs need a CUDA device" in str(err.value)
    with pytest.raises(ValueError, match="GradScaler reads its inf check"):
        TrainStep(model, plain_adam, 32, precision="fp16", capture=True)
    with pytest.raises(ValueError, match="DDP"):
        TrainStep(model, plain_adam, 32, world=2, capture=True)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        TrainStep(model, plain_adam, 32, precision="fp8")


# ---- CUDA: the captured step against the eager one ---------------------------------------------

CUDA_BACKENDS = [b for b in ("triton", "cuda") if torch.cuda.is_available()]


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("kind", ["neumf", "seq"])
def test_captured_step_trains_like_the_eager_step(kind, backend, precision):
    """Two epochs of 7 full batches and a short one (3 warm-up steps, a capture, replays, the
    short batch eagerly), against the same epochs uncaptured.  The graph replays the same
    kernels on the same batches; the tolerance (1e-5 on the weights, 1e-5 relative on the loss)
    covers the atomic adds of the table gradients, which differ in order from run to run."""
    if backend == "cuda" and not _library.CUDA_KERNELS_BUILT:
        pytest.skip("the CUDA kernels are not built")
    samples = _samples(7 * 64 + 13, "cuda")
    user_input = _History("cuda") if kind == "seq" else None
    results = []
    for capture in (False, True):
        model = _model(kind, backend, "cuda")
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True, capturable=capture)
        step = TrainStep(model, optimizer, 64, user_input=user_input, precision=precision, capture=capture)
        losses = [train_epoch(model, optimizer, samples, 64, step=step) for _ in range(2)]
        assert (step.graph is not None) == capture
        results.append((losses, model.state_dict()))
    (eager_losses, eager_state), (graph_losses, graph_state) = results
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5)
    for name, a in eager_state.items():
        b = graph_state[name]
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), f"{name}: max abs {(a - b).abs().max():.3g}"


@needs_cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_a_replayed_step_never_synchronises(backend):
    """``torch.cuda.set_sync_debug_mode("error")`` turns any host sync into an error."""
    if backend == "cuda" and not _library.CUDA_KERNELS_BUILT:
        pytest.skip("the CUDA kernels are not built")
    model = _model("neumf", backend, "cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True, capturable=True)
    step = TrainStep(model, optimizer, 64, capture=True)
    user, item, label = _samples(64 * 8, "cuda")
    step.begin_epoch("cuda")
    for k in range(4):  # warm-up and capture
        step(user[64 * k:64 * (k + 1)], item[64 * k:64 * (k + 1)], label[64 * k:64 * (k + 1)], 64)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for k in range(4, 8):
            step(user[64 * k:64 * (k + 1)], item[64 * k:64 * (k + 1)], label[64 * k:64 * (k + 1)], 64)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert step.graph is not None and 0 < step.mean_loss(64 * 8) < 1


@needs_cuda
def test_fit_with_cuda_graphs(tmp_path):
    """The trainer's switch: the same validation metrics as the eager run, to 0.01 HR@10."""
    import dataclasses

    from neumf_fast.data import leave_one_out, synthetic
    from neumf_fast.config import TrainConfig
    from neumf_fast.train import fit

    split = leave_one_out(synthetic(0, num_users=300, num_items=200, num_interactions=20_000), num_negatives=99)
    base = TrainConfig(model="neumf", epochs=2, batch_size=256, device="cuda")
    eager = fit(base, tmp_path / "eager", progress=False, log=False, split=split)
    graphs = fit(dataclasses.replace(base, cuda_graphs=True), tmp_path / "graphs", progress=False, log=False,
                 split=split)
    assert abs(graphs["best_valid"]["hr@10"] - eager["best_valid"]["hr@10"]) <= 0.01


@needs_extension
def test_adam_on_more_threads_changes_nothing_but_the_threads():
    """The written-out step's Adam update may run on more threads than the rest of the step
    (TrainStep's optimizer_threads): an elementwise update, so bit-for-bit the same weights, and
    the step's own thread count is restored after it."""
    samples = _samples(5 * 64)
    states = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for optimizer_threads in (None, 2):
            model = _model("neumf", "cpu")
            optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
            step = TrainStep(model, optimizer, 64, optimizer_threads=optimizer_threads)
            train_epoch(model, optimizer, samples, 64, step=step)
            assert torch.get_num_threads() == 1
            states.append(model.state_dict())
    finally:
        torch.set_num_threads(threads)
    for name, a in states[0].items():
        assert torch.equal(a, states[1][name]), name
