"""Backend selection: auto, explicit, the environment override, and the fallback warning."""

from __future__ import annotations

import warnings

import pytest
import torch

import neumf_fast
from neumf_fast.ops import ENV_VAR, BackendUnavailable, _library, check_inputs, dispatch, select_backend
from conftest import make_case

needs_extension = pytest.mark.skipif(_library.EXTENSION_ERROR is not None, reason=str(_library.EXTENSION_ERROR))


def dims_of(case):
    kw = {"item": case.item, **case.kwargs}
    return check_inputs(case.user, kw.get("user_mask"), kw.get("user_table"), kw.get("padding_idx"), case.item,
                        kw.get("item_table"), kw.get("user_weight"), kw.get("user_bias"), kw.get("item_weight"),
                        kw.get("item_bias"), kw["h_mf"], kw["mode"])


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@needs_extension
def test_auto_picks_the_cpu_kernel_on_cpu_tensors(no_env):
    assert select_backend(dims_of(make_case())).name == "cpu"


def test_env_var_overrides_the_argument(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    assert select_backend(dims_of(make_case()), "cpu").name == "torch"


def test_unknown_backend_is_rejected(monkeypatch, no_env):
    with pytest.raises(ValueError, match="unknown backend='tpu'"):
        select_backend(dims_of(make_case()), "tpu")
    monkeypatch.setenv(ENV_VAR, "tpu")
    with pytest.raises(ValueError, match=f"unknown {ENV_VAR}='tpu'"):
        select_backend(dims_of(make_case()), "auto")


def test_explicit_backend_that_cannot_run_says_why(monkeypatch, no_env):
    monkeypatch.setattr(_library, "EXTENSION_ERROR", "the C++ extension neumf_fast._C is not built (test)")
    with pytest.raises(BackendUnavailable, match="backend 'cpu' cannot run these inputs: the C\\+\\+ extension"):
        select_backend(dims_of(make_case()), "cpu")


def test_cpu_kernel_refuses_other_devices(no_env):
    case = make_case()
    meta = case.to(torch.float32)
    meta.user, meta.item = meta.user.to("meta"), meta.item.to("meta")
    meta.kwargs = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in meta.kwargs.items()}
    with pytest.raises(BackendUnavailable, match="runs on CPU tensors, these are on meta"):
        select_backend(dims_of(meta), "cpu")


def test_missing_extension_falls_back_and_warns_once(monkeypatch, no_env):
    monkeypatch.setattr(_library, "EXTENSION_ERROR", "the C++ extension neumf_fast._C is not built (test)")
    monkeypatch.setattr(dispatch, "_warned_fallback", False)
    case = make_case()
    with pytest.warns(RuntimeWarning, match="falling back to the PyTorch reference"):
        neumf_fast.neumf_input(case.user, case.item, **case.kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neumf_fast.neumf_input(case.user, case.item, **case.kwargs)  # no second warning
    available = neumf_fast.available_backends(dims_of(case))
    assert "cpu" not in available and available[-1] == "torch"  # (Triton too, under its interpreter)
