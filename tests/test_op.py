"""The registered op itself: torch.library.opcheck (schema, fake kernel, autograd
registration), numeric gradcheck of the kernel in float64, and torch.compile(fullgraph=True)
equal to eager."""

from __future__ import annotations

import os

import pytest
import torch

import neumf_fast
from neumf_fast.ops import _id_check, _library
from conftest import KERNELS, assert_close, make_case, run, saved_shapes

needs_extension = pytest.mark.skipif(_library.EXTENSION_ERROR is not None, reason=str(_library.EXTENSION_ERROR))

CASES = {
    "dense_mask_bias_sum": dict(user_ids=False, mask="empty_rows", mode="sum"),
    "ids_pad_mean": dict(user_ids=True, item_ids=True, mode="mean"),
    "ids_noproj": dict(user_ids=True, item_ids=False, project=False, h_mf=2),
    "dense_nobias_item_ids": dict(user_ids=False, item_ids=True, bias=False, mask="none"),
}


@needs_extension
@pytest.mark.parametrize("name", CASES)
def test_opcheck(name):
    case = make_case(batch=5, seq_len=4, user_dim=6, h_mlp=4, num_user_rows=9, num_item_rows=8, **CASES[name])
    torch.library.opcheck(torch.ops.neumf_fast.fused_input.default, case.args())
    # And without requires_grad (the inference path).
    torch.library.opcheck(torch.ops.neumf_fast.fused_input.default, case.to(torch.float32).args())


@needs_extension
@pytest.mark.parametrize("name", CASES)
def test_kernel_gradcheck_float64(name):
    case = make_case(batch=4, seq_len=3, user_dim=5, h_mlp=3, num_user_rows=6, num_item_rows=5,
                     dtype=torch.float64, **CASES[name])
    inputs = case.float_inputs()
    names = list(inputs)

    def fn(*tensors):
        named = dict(zip(names, tensors))
        kwargs = {**case.kwargs, **{k: v for k, v in named.items() if k in case.kwargs}}
        return neumf_fast.neumf_input(named.get("user", case.user), named.get("item", case.item), backend="cpu", **kwargs)

    assert torch.autograd.gradcheck(fn, tuple(inputs.values()), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("name", CASES)
def test_compile_fullgraph_matches_eager(backend, name):
    torch._dynamo.reset()
    case = make_case(batch=9, seq_len=5, user_dim=6, h_mlp=4, **CASES[name])
    eager = run(case, backend)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def compiled_forward(user, item, kwargs):
        return neumf_fast.neumf_input(user, item, backend=backend, **kwargs)

    gmf, mlp_in = compiled_forward(case.user, case.item, case.kwargs)
    assert_close({"gmf": gmf.detach(), "mlp_in": mlp_in.detach()},
                 {"gmf": eager["gmf"], "mlp_in": eager["mlp_in"]}, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", KERNELS)
def test_compile_inductor_forward_backward(backend):
    """The inductor backend (the default of torch.compile) keeps the op and its backward."""
    torch._dynamo.reset()
    case = make_case(batch=9, seq_len=5, user_dim=6, h_mlp=4, user_ids=True, item_ids=True, mode="mean")
    eager = run(case, backend)
    inputs = case.float_inputs()

    @torch.compile(fullgraph=True)
    def step(user, item, kwargs, up_gmf, up_mlp):
        gmf, mlp_in = neumf_fast.neumf_input(user, item, backend=backend, **kwargs)
        return (gmf * up_gmf).sum() + (mlp_in * up_mlp).sum(), gmf, mlp_in

    g = torch.Generator().manual_seed(1)
    up_gmf = torch.randn(eager["gmf"].shape, generator=g, dtype=torch.float64).float()
    up_mlp = torch.randn(eager["mlp_in"].shape, generator=g, dtype=torch.float64).float()
    loss, gmf, mlp_in = step(case.user, case.item, case.kwargs, up_gmf, up_mlp)
    grads = torch.autograd.grad(loss, list(inputs.values()))
    actual = {"gmf": gmf.detach(), "mlp_in": mlp_in.detach(), **{f"grad_{k}": g for k, g in zip(inputs, grads)}}
    assert_close(actual, eager, atol=1e-5, rtol=1e-5)


@needs_extension
@pytest.mark.parametrize("name", CASES)
def test_eager_fast_path_equals_the_registered_autograd(name):
    """Eager calls take ``FusedFunction`` (no per-call ``fill_defaults``); direct
    ``torch.ops`` calls and torch.compile take the ``register_autograd`` registration.  Both run
    the same kernels in the same order, so their outputs and gradients are bitwise equal."""
    case = make_case(batch=7, **CASES[name])
    inputs = case.float_inputs()
    results = []
    for direct in (False, True):
        for t in inputs.values():
            t.grad = None
        if direct:
            gmf, mlp_in, *_ = torch.ops.neumf_fast.fused_input(*case.args())
        else:
            gmf, mlp_in = neumf_fast.neumf_input(case.user, case.item, backend="cpu", **case.kwargs)
        (gmf.square().sum() + mlp_in.sin().sum()).backward()
        results.append([gmf.detach(), mlp_in.detach(), *(t.grad for t in inputs.values() if t.requires_grad)])
    assert len(results[0]) > 2 and all(g is not None for g in results[0])
    for a, b in zip(*results):
        assert torch.equal(a, b)


class _TensorsMade(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the shape and dtype of every tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.made.append((tuple(t.shape), t.dtype))
        return out


@pytest.mark.parametrize("backend", ["torch", *KERNELS])
@pytest.mark.parametrize("project", [True, False], ids=["proj", "noproj"])
def test_autocast_casts_the_rows_a_call_reads_not_the_tables(backend, project):
    """Under autocast an id side that reads fewer positions than its table has rows gathers its
    rows and casts them: no bf16 copy of a table, forward or backward.  The math is that of
    casting the table (padding, mean pooling, out-of-range ids as before), and the gradients
    are at least as close to the float64 truth as the table-cast path's."""
    case = make_case(batch=7, seq_len=3, user_dim=6, h_mf=2, h_mlp=3, user_ids=True, item_ids=True,
                     num_user_rows=500, num_item_rows=400, padding_idx=0, mode="mean", project=project)
    tables = {(500, 6), (400, 6)}
    with _TensorsMade() as seen, torch.autocast("cpu", dtype=torch.bfloat16):
        gathered = run(case, backend)
    assert not [s for s, dt in seen.made if s in tables and dt == torch.bfloat16], "a table was cast to bf16"
    table_cast = run(case.to(torch.bfloat16), backend)  # what the old path computed: cast tables, then the op
    truth = run(case.to(torch.float64), "torch")
    for name in ("gmf", "mlp_in"):  # the same rows, cast the same way, pooled the same way
        torch.testing.assert_close(gathered[name], table_cast[name], atol=0, rtol=0)
    for name in ("grad_user_table", "grad_item_table", *(["grad_user_weight"] if project else [])):
        assert gathered[name].dtype == torch.float32  # fp32 parameters get fp32 gradients
        err = (gathered[name].double() - truth[name]).abs().max().item()
        err_cast = (table_cast[name].double() - truth[name]).abs().max().item()
        eps = torch.finfo(torch.bfloat16).eps * max(1.0, truth[name].abs().max().item())
        assert err <= 2 * err_cast + eps, (name, err, err_cast)

    good_user = case.user.clone()
    case.user[3, 1] = 500
    message = "user id 500 is out of range for a table with 500 rows"
    # the gather checks ids without a host sync: deferred, the next call raises; sync, this one
    with torch.autocast("cpu", dtype=torch.bfloat16):
        try:
            neumf_fast.neumf_input(case.user, case.item, backend=backend, **case.kwargs)
            with pytest.raises(IndexError, match=message):
                neumf_fast.neumf_input(good_user, case.item, backend=backend, **case.kwargs)
            neumf_fast.neumf_input(good_user, case.item, backend=backend, **case.kwargs)  # reset: works again
            os.environ["NEUMF_FAST_CHECK_IDS"] = "sync"
            with pytest.raises(IndexError, match=message):
                neumf_fast.neumf_input(case.user, case.item, backend=backend, **case.kwargs)
        finally:
            os.environ.pop("NEUMF_FAST_CHECK_IDS", None)
            _id_check.reset()


def test_autocast_gather_in_sync_mode_before_any_deferred_call(monkeypatch):
    """``NEUMF_FAST_CHECK_IDS=sync`` from the start (no error buffer made yet): the gather raises
    at the call, and a good call after it works."""
    monkeypatch.setenv("NEUMF_FAST_CHECK_IDS", "sync")
    monkeypatch.setattr(_id_check, "_STATES", {})
    monkeypatch.setattr(_id_check, "_PENDING", {})
    case = make_case(batch=7, seq_len=3, user_dim=6, h_mf=2, h_mlp=3, user_ids=True, item_ids=True,
                     num_user_rows=500, num_item_rows=400, padding_idx=0)
    good = case.user.clone()
    case.user[0, 0] = 500
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(IndexError, match="user id 500 is out of range for a table with 500 rows"):
            neumf_fast.neumf_input(case.user, case.item, backend="torch", **case.kwargs)
        neumf_fast.neumf_input(good, case.item, backend="torch", **case.kwargs)


@needs_extension
@pytest.mark.parametrize("project", [True, False], ids=["weights", "no-weights"])
def test_cpu_kernel_saves_only_what_the_backward_reads(project):
    """The C++ CPU kernel's saves, as every backend's: pooled rows only with a weight, and the
    [B, h_mf] MF halves (before: the full projections, and the pooled rows with no weight too)."""
    case = make_case(batch=5, seq_len=3, user_dim=6, h_mf=2, h_mlp=3, user_ids=True, item_ids=True,
                     project=project, requires_grad=False)
    out = torch.ops.neumf_fast.fused_input(*case.args(h_mf=2, mode="sum"), True)
    assert [tuple(t.shape) for t in out[2:]] == saved_shapes(case, 2)
