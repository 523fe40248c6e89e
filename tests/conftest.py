"""Shared helpers: input builders and comparisons that print what differs."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Callable

import pytest
import torch

# torch.compile's on-disk caches (/tmp/torchinductor_$USER) are shared by every checkout and run
# on a machine, and their keys do not cover a custom op's fake kernel: a graph compiled against
# an earlier build of our op was reused with that build's saved-tensor shapes (seen 2026-12-04,
# test_op's inductor test failing on a shape assertion).  The suite compiles into its own cache.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="neumf_fast-tests-inductor-"))

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors only in its interpreter; set before Triton is imported.
    # "auto" never picks Triton for CPU tensors, so only tests that ask for it are affected.
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("NEUMF_FAST_TRITON_AUTOTUNE", "0")  # one Triton config: tests check math, not speed

import neumf_fast  # noqa: E402
from neumf_fast.ops import FusedArgs, _library  # noqa: E402
from neumf_fast.ops._autograd import Kernels, run_kernels  # noqa: E402
from neumf_fast.ops.dispatch import unavailable_reasons  # noqa: E402

# Backends under test against the reference.  "torch" *is* the reference, so parity is
# asserted for the kernels; a kernel that is not built is reported as skipped with the reason.
KERNEL_BACKENDS = ["cpu"]


def backend_param(name: str):
    reason = None
    if name == "cpu" and _library.EXTENSION_ERROR is not None:
        reason = _library.EXTENSION_ERROR
    return pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=str(reason)), id=name)


KERNELS = [backend_param(n) for n in KERNEL_BACKENDS]


# --- The parity matrix's targets: a kernel backend on the device it runs on --------------------
# tests/test_parity.py runs every case on each of them through the ``backend`` fixture; the
# backend files (tests/test_triton.py, tests/test_cuda.py) pick theirs by indirect
# parametrisation.  A target that cannot run here is skipped with its backend's own reasons.
ON_GPU = torch.cuda.is_available()
NO_GPU = "no GPU here (torch.cuda.is_available() is False)"
TARGET_NAMES = ["cpu", "triton-interpret", "cuda-emu", "triton-cuda", "cuda"]
SLOW_TARGETS = {"triton-interpret", "cuda-emu"}  # a Python program or an OS thread per CUDA thread


def target_reasons(name: str, dtype: torch.dtype = torch.float32) -> list[str]:
    """Why target ``name`` cannot run a call in ``dtype`` here (empty when it can)."""
    if name == "cpu":
        return unavailable_reasons("cpu", "cpu", dtype)
    if name == "triton-interpret":  # on a GPU, TRITON_INTERPRET is not set: the backend says so
        return unavailable_reasons("triton", "cpu", dtype)
    if name == "cuda-emu":  # every dtype the CUDA kernels take, float64 included
        return ["on a GPU the CUDA kernels themselves run (target cuda), not the emulator"] if ON_GPU else []
    return unavailable_reasons(name.removesuffix("-cuda"), "cuda", dtype) if ON_GPU else [NO_GPU]


@dataclasses.dataclass(frozen=True)
class Target:
    """What a parity case runs on.  ``op`` is what ``run`` calls (a backend name of
    ``neumf_input``, or a callable with its signature); ``kernels`` the raw forward
    ``(*FusedArgs, save)`` and backward below autograd; ``device`` where the case's tensors go."""

    name: str
    device: str
    op: str | Callable
    kernels: Kernels
    update: Callable  # its table_update_ (neumf_fast/ops/table_update.py)

    @property
    def slow(self) -> bool:
        return self.name in SLOW_TARGETS

    def require(self, dtype: torch.dtype) -> None:
        """Skip, with this target's own reasons, a case it cannot run in ``dtype``."""
        reasons = target_reasons(self.name, dtype)
        if reasons:
            pytest.skip(f"{self.name}: " + "; ".join(reasons))

    def shape(self, batch: int, seq_len: int) -> tuple[int, int]:
        """``(batch, seq_len)`` of a case on this target.  The interpreter and the emulator take
        3 to 10 s for one batch-1000 case at 1 or 2 positions, and 20 to 45 s at 33 (measured on
        this 2-core VM under load, 2026-12-06), so there a batch of 1000 keeps sequences of at
        most 2 positions and a longer one runs at batch 37."""
        return (37, seq_len) if self.slow and batch >= 1000 and seq_len > 2 else (batch, seq_len)


def make_target(name: str, request) -> Target:
    if name == "cuda-emu":  # outside the dispatcher: its ops are neumf_fast_emu's, with no autograd of their own
        ops = request.getfixturevalue("emulated_library")
        kernels = Kernels(ops.fused_input, ops.fused_input_backward, None)
        return Target(name, "cpu", lambda user, item, **kw: run_kernels(kernels, Case(user, item, kw).args()), kernels,
                      ops.table_update_)
    if name.startswith("triton"):
        from neumf_fast.ops import triton_backend

        return Target(name, "cuda" if name == "triton-cuda" else "cpu", "triton", triton_backend.KERNELS,
                      triton_backend.table_update_)
    return Target(name, name, name, _library.KERNELS, torch.ops.neumf_fast.table_update_)


# the emulator builds first (about a minute): its cases are in the full loop, not the quick one
TARGETS = [pytest.param(n, id=n, marks=[pytest.mark.skipif(bool(target_reasons(n)), reason="; ".join(target_reasons(n))),
                                        *([pytest.mark.slow] if n == "cuda-emu" else [])])
           for n in TARGET_NAMES]


@pytest.fixture(params=TARGETS)
def backend(request) -> Target:
    """Each kernel target in turn (``TARGETS``); ``parametrize("backend", [...], indirect=True)``
    narrows a test to some of them."""
    name = request.param
    reasons = target_reasons(name)
    if reasons:  # an indirect parametrisation carries no skip mark
        pytest.skip(f"{name}: " + "; ".join(reasons))
    return make_target(name, request)


@pytest.fixture(scope="session")
def emulated_library(tmp_path_factory):
    """The CUDA sources built for the CPU emulator (tests/cuda_emu), as ``torch.ops.neumf_fast_emu``."""
    from cuda_emu.build import build

    build(tmp_path_factory.mktemp("cuda_emu"), sanitize=os.environ.get("NEUMF_EMU_ASAN") == "1")
    return torch.ops.neumf_fast_emu


@dataclasses.dataclass
class Case:
    """One call of the op: its keyword arguments and which of them are differentiable."""

    user: torch.Tensor
    item: torch.Tensor
    kwargs: dict

    def args(self, **overrides) -> FusedArgs:
        """The call as the op's arguments (``FusedArgs``), with ``overrides`` by name: the one
        place a test turns a case into what ``torch.ops.neumf_fast`` takes."""
        kw = {name: self.kwargs.get(name) for name in FusedArgs._fields}
        kw.update(user=self.user, item=self.item, **overrides)
        return FusedArgs(**kw)

    def float_inputs(self) -> dict[str, torch.Tensor]:
        named = {"user": self.user, "item": self.item, **self.kwargs}
        return {k: v for k, v in named.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}

    def on(self, device) -> "Case":
        """The same call with every tensor moved to device (leaves stay leaves)."""
        move = lambda t: (t.detach().to(device).requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t)
        return Case(move(self.user), move(self.item), {k: move(v) for k, v in self.kwargs.items()})

    def to(self, dtype: torch.dtype) -> "Case":
        """The same call with every float input cast to dtype (ids and masks unchanged)."""
        cast = lambda t: t.detach().to(dtype).requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        return Case(cast(self.user), cast(self.item), {k: cast(v) for k, v in self.kwargs.items()})


def make_case(
    *,
    batch: int = 7,
    seq_len: int = 10,
    user_dim: int = 37,
    item_dim: int | None = None,
    h_mf: int = 3,
    h_mlp: int = 5,
    h_mlp_item: int | None = None,
    user_ids: bool = False,
    item_ids: bool = False,
    project: bool = True,
    bias: bool = True,
    mask: str = "random",  # "none" | "random" | "empty_rows" (random plus fully masked rows) | "all"
    mode: str = "sum",
    num_user_rows: int = 50,
    num_item_rows: int = 40,
    padding_idx: int | None = 0,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    requires_grad: bool = True,
) -> Case:
    g = torch.Generator().manual_seed(seed)
    item_dim = user_dim if item_dim is None else item_dim
    h_mlp_item = h_mlp if h_mlp_item is None else h_mlp_item
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)
    keep = torch.rand(batch, seq_len, generator=g) > 0.3
    if mask == "none":
        keep = None
    elif mask == "empty_rows" and batch:
        keep[:: max(1, batch // 3)] = False
    elif mask == "all":  # every position of every row masked: pooled zeros, never NaN
        keep[:] = False
    kwargs: dict = {"h_mf": h_mf, "mode": mode}
    if user_ids:
        ids = torch.randint(0, num_user_rows, (batch, seq_len), generator=g)
        if keep is not None:
            ids[~keep] = padding_idx
            kwargs["padding_idx"] = padding_idx
        user = ids
        kwargs["user_table"] = rand(num_user_rows, user_dim)
    else:
        user = rand(batch, seq_len, user_dim)
        if keep is not None:
            kwargs["user_mask"] = keep
    if item_ids:
        item = torch.randint(0, num_item_rows, (batch,), generator=g)
        kwargs["item_table"] = rand(num_item_rows, item_dim)
    else:
        item = rand(batch, item_dim)
    if project:
        kwargs["user_weight"] = rand(h_mf + h_mlp, user_dim)
        kwargs["item_weight"] = rand(h_mf + h_mlp_item, item_dim)
        if bias:
            kwargs["user_bias"] = rand(h_mf + h_mlp)
            kwargs["item_bias"] = rand(h_mf + h_mlp_item)
    return Case(user, item, kwargs)


def popular_id_case(device):
    """One user id at nine positions of ten (a popular item in every history), one item id
    everywhere: in the CUDA kernels' sorted sum the run crosses many of the 128-position chunks,
    whole chunks included; fp32 with D % 4 == 0, so their atomic scatter takes float4 atomics."""
    case = make_case(batch=300, seq_len=4, user_dim=8, h_mf=2, h_mlp=4, user_ids=True, item_ids=True,
                     num_user_rows=7, num_item_rows=5, project=True).on(device)
    popular = torch.rand(case.user.shape, generator=torch.Generator().manual_seed(1)) < 0.9
    case.user[popular.to(case.user.device)] = 3
    case.item.fill_(2)
    return case


def call(case: Case, op):
    """``(gmf, mlp_in)`` of one call on ``op``: a backend name of ``neumf_input``, or a callable
    with its signature (``Target.op``)."""
    if callable(op):
        return op(case.user, case.item, **case.kwargs)
    return neumf_fast.neumf_input(case.user, case.item, backend=op, **case.kwargs)


def run(case: Case, backend, seed: int = 1, backward: bool = True):
    """Forward and backward of one call: the outputs, then the gradient of every float input
    under fixed random upstream gradients.  ``backend`` names a backend of ``neumf_input``, or
    is a callable with its signature (an op under test outside the dispatcher).  With
    ``backward=False``, the outputs of an inference call (under ``no_grad``: nothing saved)."""
    if not backward:
        with torch.no_grad():
            gmf, mlp_in = call(case, backend)
        return {"gmf": gmf, "mlp_in": mlp_in}
    gmf, mlp_in = call(case, backend)
    inputs = case.float_inputs()
    g = torch.Generator().manual_seed(seed)
    up_gmf = torch.randn(gmf.shape, generator=g, dtype=torch.float64).to(gmf.device, gmf.dtype)
    up_mlp = torch.randn(mlp_in.shape, generator=g, dtype=torch.float64).to(mlp_in.device, mlp_in.dtype)
    grads = torch.autograd.grad((gmf, mlp_in), list(inputs.values()), (up_gmf, up_mlp), allow_unused=True)
    out = {"gmf": gmf.detach(), "mlp_in": mlp_in.detach()}
    out.update({f"grad_{k}": (g if g is not None else torch.zeros_like(v)) for (k, v), g in zip(inputs.items(), grads)})
    return out


def assert_backward_ignores_autocast(case: Case, backend, device) -> None:
    """A float32 call of ``backend`` (as ``call`` takes it) whose backward runs inside
    ``torch.autocast`` (bf16), as when a user calls backward in the autocast region, gets the
    float32 gradients it gets outside it: a kernel's own GEMMs on its saved fp32 tensors must not
    be turned low precision by autocast.  Bit for bit, except a table gradient, which the GPU
    kernels (and the emulator) scatter by atomics in an order that varies run to run: it must
    agree to 1e-6 normwise (8 float32 ulps; one bf16 rounding is 3.9e-3)."""
    case = case.on(device)
    gmf, mlp_in = call(case, backend)
    inputs = case.float_inputs()
    g = torch.Generator().manual_seed(1)
    up = (torch.randn(gmf.shape, generator=g).to(device), torch.randn(mlp_in.shape, generator=g).to(device))
    outside = torch.autograd.grad((gmf, mlp_in), list(inputs.values()), up, retain_graph=True)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        inside = torch.autograd.grad((gmf, mlp_in), list(inputs.values()), up)
    for name, a, b in zip(inputs, outside, inside):
        assert a.dtype == b.dtype == torch.float32, name
        if name.endswith("_table"):
            assert_close({name: b}, {name: a}, atol=1e-6, rtol=1e-6)
        else:
            assert torch.equal(a, b), describe_diff(name, b, a)


def describe_diff(name: str, actual: torch.Tensor, expected: torch.Tensor) -> str:
    diff = (actual.double() - expected.double()).abs()
    if diff.numel() == 0:
        return f"{name}: empty"
    idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    rel = diff / expected.double().abs().clamp_min(1e-12)
    return (f"{name}: max abs err {diff.max().item():.3e} at {idx} "
            f"(actual {actual[idx].item():.6g}, expected {expected[idx].item():.6g}), max rel err {rel.max().item():.3e}")


def assert_close(actual: dict, expected: dict, *, atol: float, rtol: float) -> None:
    """Entrywise ``|a - e| <= atol * max(1, max|e|) + rtol * |e|`` for every named tensor.

    atol is normwise (scaled by the tensor's largest entry): a gradient reduced over many rows
    can cancel to a small entry whose rounding error is set by the size of its terms, not its own."""
    assert actual.keys() == expected.keys()
    failures = []
    for name in expected:
        a, e = actual[name], expected[name]
        assert a.shape == e.shape and a.dtype == e.dtype, f"{name}: {a.dtype}{list(a.shape)} vs {e.dtype}{list(e.shape)}"
        scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
        if not torch.allclose(a.double(), e.double(), atol=atol * scale, rtol=rtol):
            failures.append(describe_diff(name, a, e))
    assert not failures, "\n".join(failures)


def assert_flash_attention_rule(low: Case, backend, backward: bool = True) -> None:
    """bf16/fp16 tolerance (flash-attention's rule, see tests/test_parity.py): the backend's max
    error against the float64 truth of the same rounded inputs is at most 2x the error of the
    PyTorch reference computed in that dtype, plus one eps of the dtype times the largest
    magnitude.  ``backward=False``: the outputs of an inference call only."""
    dtype = next(iter(low.float_inputs().values())).dtype
    truth = run(low.to(torch.float64), "torch", backward=backward)
    torch_low = run(low, "torch", backward=backward)
    kernel = run(low, backend, backward=backward)
    eps = torch.finfo(dtype).eps
    failures = []
    for name, exact in truth.items():
        assert kernel[name].dtype == dtype, name
        err_kernel = (kernel[name].double() - exact).abs().max().item() if exact.numel() else 0.0
        err_torch = (torch_low[name].double() - exact).abs().max().item() if exact.numel() else 0.0
        floor = eps * max(1.0, exact.abs().max().item() if exact.numel() else 0.0)
        if not err_kernel <= 2 * err_torch + floor:  # a NaN error fails too
            failures.append(f"{describe_diff(name, kernel[name], exact)}; torch {dtype} err {err_torch:.3e}")
    assert not failures, "\n".join(failures)


def tiny_run(out, *, num_users: int, num_items: int, num_interactions: int, model: str = "neumf"):
    """A trained run in ``out``: one epoch of a small NeuMF (or ``model``) on synthetic events
    written as a CSV (original ids, a split, a trained-ish model), loaded with ``neumf_fast.load_run``."""
    from neumf_fast.data import synthetic
    from neumf_fast.config import TrainConfig
    from neumf_fast.train import fit

    data = synthetic(0, num_users=num_users, num_items=num_items, num_interactions=num_interactions)
    csv = out.parent / f"{out.name}-events.csv"
    csv.write_text("user,item,timestamp\n" + "\n".join(
        f"{u},{i},{t}" for u, i, t in zip(data.user_ids[data.user], data.item_ids[data.item], data.timestamp)) + "\n")
    fit(TrainConfig(model=model, dataset=str(csv), epochs=1, batch_size=512, factors=4, layers=(16, 8, 4), neg=2,
                    history_len=40), out,
        progress=False, log=False)
    return neumf_fast.load_run(out)


def saved_shapes(case, h_mf: int) -> list[tuple[int, ...]]:
    """The shapes a forward with ``save=True`` must return after ``(gmf, mlp_in)``: what every
    backward reads and nothing more (csrc/ops.h: check_fused_backward): each side's pooled rows
    ``[B, D]`` only with a weight, ``(0,)`` without; each side's MF half ``[B, h_mf]``."""
    kw, batch = case.kwargs, case.user.shape[0]
    user_dim = kw["user_table"].shape[1] if kw.get("user_table") is not None else case.user.shape[-1]
    item_dim = kw["item_table"].shape[1] if kw.get("item_table") is not None else case.item.shape[-1]
    return [(batch, user_dim) if kw.get("user_weight") is not None else (0,),
            (batch, item_dim) if kw.get("item_weight") is not None else (0,), (batch, h_mf), (batch, h_mf)]
