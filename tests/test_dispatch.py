"""Backend selection: auto, explicit, the environment override, and the fallback warning."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import neumf_fast
from neumf_fast.ops import ENV_VAR, BackendUnavailable, _library, check_inputs, dispatch, select_backend
from conftest import make_case

needs_extension = pytest.mark.skipif(_library.EXTENSION_ERROR is not None, reason=str(_library.EXTENSION_ERROR))


def dims_of(case):
    return check_inputs(case.args())


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


# ---- "auto" by measurement, and the selection cache ----------------------------------------------


@pytest.fixture
def fresh_selection(monkeypatch, no_env):
    monkeypatch.setattr(dispatch, "_selected", {})


def _cuda_dims(batch: int, ids: bool, dtype=torch.float32):
    return dispatch.CallKind(batch, ids, ids, dtype, torch.device("cuda:0"))


def test_the_auto_table_is_read_by_gpu_name_class_and_dtype(tmp_path):
    path = tmp_path / "auto_table.json"
    path.write_text('{"choices": {"Fake GPU": {"serving float32": "cuda", "ids bfloat16": "triton"}}}')
    table = dispatch.AutoTable(path)
    table._names[0] = "Fake GPU"  # what torch.cuda.get_device_name(0) would say
    assert table.choice(_cuda_dims(16, ids=False)) == "cuda"
    assert table.choice(_cuda_dims(4096, ids=True, dtype=torch.bfloat16)) == "triton"
    assert table.choice(_cuda_dims(4096, ids=False)) is None  # not measured: the preference decides
    table._names[0] = "Another GPU"
    assert table.choice(_cuda_dims(16, ids=False)) is None
    assert table.choice(dims_of(make_case())) is None  # CPU tensors: nothing to choose between


@needs_extension
def test_auto_takes_a_measured_backend_that_can_run_and_else_the_preference(monkeypatch, fresh_selection):
    dims = dims_of(make_case())
    monkeypatch.setattr(dispatch.AUTO_TABLE, "choice", lambda d: "torch")
    assert select_backend(dims).name == "torch"  # the measurement outranks PREFERENCE
    monkeypatch.setattr(dispatch, "_selected", {})
    monkeypatch.setattr(dispatch.AUTO_TABLE, "choice", lambda d: "cuda")  # measured, but cannot run on the CPU
    assert select_backend(dims).name == "cpu"


def test_the_package_ships_a_readable_auto_table(tmp_path):
    """The committed auto_table.json is the one read, and every entry is one "auto" can use: a
    kernel backend per "<shape class> <dtype>", from a named result file; a missing file is no
    measurement at all."""
    path = dispatch.AutoTable.PATH
    assert path.is_file(), f"{path} is not shipped"
    committed = json.loads(path.read_text())
    assert {"source", "choices"} <= set(committed), sorted(committed)
    assert dispatch.AutoTable().table == committed["choices"]
    assert dispatch.AUTO_TABLE.table == committed["choices"]
    classes = {"serving", "ids", "dense"}
    dtypes = {"float32", "bfloat16", "float16", "float64"}
    for gpu, by_class in committed["choices"].items():
        for key, backend in by_class.items():
            shape_class, _, dtype = key.partition(" ")
            assert shape_class in classes and dtype in dtypes, f"{gpu}: unknown entry {key!r}"
            assert backend in ("cuda", "triton"), f"{gpu} {key}: {backend!r} is not a GPU kernel backend"
    if committed["choices"]:  # each GPU's measurement names the gpu_check.sh run it came from
        assert set(committed["source"] or {}) == set(committed["choices"]), committed["source"]
    else:
        assert committed["source"] is None, "a source but no choices"
    assert dispatch.AutoTable(tmp_path / "missing.json").table == {}


@needs_extension
def test_a_selection_is_checked_once_then_cached(monkeypatch, fresh_selection):
    calls = []
    backend = dispatch.BACKENDS["cpu"]
    original = backend._reasons
    monkeypatch.setattr(backend, "_reasons", lambda d: calls.append(d) or original(d))
    dims = dims_of(make_case())
    assert select_backend(dims, "cpu").name == "cpu" and select_backend(dims, "cpu").name == "cpu"
    assert len(calls) == 1
    monkeypatch.setenv(ENV_VAR, "torch")  # the environment still decides on every call
    assert select_backend(dims, "cpu").name == "torch"
    monkeypatch.setattr(_library, "EXTENSION_ERROR", "not built (test)")  # nor does the cache hide a change
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(BackendUnavailable, match="not built"):
        select_backend(dims, "cpu")


def _choose_auto():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("choose_auto", Path(__file__).parent.parent / "benchmarks/choose_auto.py")
    choose_auto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(choose_auto)
    return choose_auto


def _row(provider, direction, batch, ids, median, dtype="float32", shape=None):
    return {"extra_info": dict(provider=provider, direction=direction, batch=batch, ids=ids, dtype=dtype,
                               shape=shape or f"B{batch}{'_ids' if ids else ''}"),
            "stats": {"median": median}}


def test_choose_auto_compares_kernels_shape_by_shape():
    """The dense class holds the design shape and B=65536: Triton is 1.1x faster at the small
    one, CUDA 2.5x at the large one, so CUDA takes the class (geometric means 1.05 against
    1.58).  Taking the lowest time of any row, as before, crowned Triton for its small shape."""
    rows = [_row("triton", "forward+backward", 4096, False, 0.10), _row("cuda", "forward+backward", 4096, False, 0.11),
            _row("triton", "forward+backward", 65536, False, 5.0), _row("cuda", "forward+backward", 65536, False, 2.0)]
    why = []
    assert _choose_auto().choose(rows, why) == {"dense float32": "cuda"}
    assert "cuda 1.05" in why[0] and "triton 1.58" in why[0]
    # a shape where one kernel did not finish is left out of the comparison, not counted as a win
    rows.append(_row("triton", "forward+backward", 8192, False, 0.01))
    assert _choose_auto().choose(rows) == {"dense float32": "cuda"}


def test_choose_auto_picks_the_fastest_kernel_per_class(tmp_path):
    choose_auto = _choose_auto()
    row = _row
    rows = [row("triton", "forward", 16, False, 3.0), row("cuda", "forward", 16, False, 2.0),
            row("triton", "forward+backward", 16, False, 1.0),  # serving is chosen on the forward
            row("eager", "forward", 16, False, 0.5),  # a baseline is not a backend
            row("triton", "forward+backward", 65536, True, 5.0), row("cuda", "forward+backward", 65536, True, 6.0),
            row("triton", "forward", 65536, True, 9.0),
            row("triton", "forward+backward", 65536, False, 1.0, "bfloat16")]  # only one kernel timed: no entry
    why = []
    assert choose_auto.choose(rows, why) == {"serving float32": "cuda", "ids float32": "triton"}
    assert any(line.startswith("dense bfloat16: no entry, only triton") for line in why)
    assert [dispatch.shape_class(_cuda_dims(b, ids)) for b, ids in [(16, False), (256, True), (257, False), (4096, True)]] \
        == ["serving", "serving", "dense", "ids"]
    # gpu_check.sh times each kernel in its own process: the files are read as one run, and an
    # empty one (a step that ran out of time) is left out, saying so
    runs = []
    for name, provider in [("cuda", "cuda"), ("triton", "triton")]:
        runs.append(tmp_path / f"kernels_{name}.json")
        runs[-1].write_text(json.dumps({"machine_info": {"cuda_device": "Fake GPU"}, "datetime": "now",
                                        "benchmarks": [r for r in rows if r["extra_info"]["provider"] == provider]}))
    (tmp_path / "kernels_empty.json").write_text("")
    out = tmp_path / "auto_table.json"
    choose_auto.main([*map(str, runs), str(tmp_path / "kernels_empty.json"), "--out", str(out)])
    assert dispatch.AutoTable(out).table == {"Fake GPU": {"serving float32": "cuda", "ids float32": "triton"}}
    assert "kernels_empty.json" not in json.loads(out.read_text())["source"]["Fake GPU"]
    other = tmp_path / "other_gpu.json"
    other.write_text(json.dumps({"machine_info": {"cuda_device": "Other GPU"}, "benchmarks": rows}))
    with pytest.raises(SystemExit, match="one GPU"):
        choose_auto.main([str(runs[0]), str(other), "--out", str(out)])
    # the rows test_bench_gpu.py appends as each benchmark ends (JSONL) read as one run too
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps({**r, "extra_info": {**r["extra_info"], "device": "Row GPU"}}) + "\n"
                                 for r in rows))
    choose_auto.main([str(rows_file), "--out", str(out)])
    assert dispatch.AutoTable(out).table["Row GPU"] == {"serving float32": "cuda", "ids float32": "triton"}


# ---- "auto" where nothing is measured: the CUDA kernels for eager calls, Triton under torch.compile ----


@pytest.fixture
def both_gpu_kernels_can_run(monkeypatch, fresh_selection):
    """CUDA dims on a machine with no GPU: both GPU backends say they can run, and the auto
    table has no measurement (a GPU run may have filled the shipped one)."""
    for name in ("cuda", "triton"):
        monkeypatch.setattr(dispatch.BACKENDS[name], "_reasons", lambda dims: [])
    monkeypatch.setattr(dispatch.AUTO_TABLE, "choice", lambda dims: None)


@pytest.mark.parametrize("batch,ids", [(16, False), (4096, False), (65536, True)], ids=["serving", "dense", "ids"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_auto_takes_the_cuda_kernels_for_eager_calls_where_nothing_is_measured(both_gpu_kernels_can_run, batch, ids,
                                                                               dtype):
    """Built ahead of time, the CUDA kernels run a new shape at its first call; Triton would
    compile it there first.  (The old order took Triton.)"""
    assert select_backend(_cuda_dims(batch, ids, dtype)).name == "cuda"


def test_auto_takes_triton_under_torch_compile_where_nothing_is_measured(both_gpu_kernels_can_run):
    """While torch.compile traces a call, Triton's kernels compile with Inductor's and launch
    from its wrapper, so the reasons for the CUDA kernels in eager mode do not hold.  The
    selection is made in a real trace (dynamo, fullgraph) and cached apart from the eager one."""
    dims = _cuda_dims(4096, ids=True)
    seen = []

    @torch.compile(fullgraph=True, backend="eager")
    def traced(x):
        seen.append(select_backend(dims).name)
        return x + 1

    assert select_backend(dims).name == "cuda"  # an eager selection first: it must not leak into the trace
    traced(torch.ones(2))
    assert seen == ["triton"]
    assert select_backend(dims).name == "cuda"  # nor the traced one into eager calls


def test_auto_falls_back_along_each_order(monkeypatch, both_gpu_kernels_can_run):
    dims = _cuda_dims(4096, ids=False)
    monkeypatch.setattr(dispatch.BACKENDS["cuda"], "_reasons", lambda d: ["the CUDA kernels are not built (test)"])
    assert select_backend(dims).name == "triton"
    monkeypatch.setattr(dispatch, "_selected", {})
    monkeypatch.setattr(dispatch.BACKENDS["cuda"], "_reasons", lambda d: [])
    monkeypatch.setattr(dispatch.BACKENDS["triton"], "_reasons", lambda d: ["Triton is not installed (test)"])
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert select_backend(dims).name == "cuda"


@pytest.mark.parametrize("compiling", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("measured", ["cuda", "triton"])
def test_a_measurement_outranks_both_orders(monkeypatch, both_gpu_kernels_can_run, compiling, measured):
    monkeypatch.setattr(dispatch.AUTO_TABLE, "choice", lambda d: measured)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    assert select_backend(_cuda_dims(65536, ids=True)).name == measured


def test_available_backends_lists_auto_s_order(both_gpu_kernels_can_run):
    dims = _cuda_dims(4096, ids=False)
    assert neumf_fast.available_backends(dims) == ["cuda", "triton", "torch"]
    assert neumf_fast.available_backends(dims, compiled=True) == ["triton", "cuda", "torch"]
    assert dispatch.available_backends(dims)[0] == select_backend(dims).name


@pytest.mark.parametrize("env", [None, "torch"])
@pytest.mark.parametrize("batch", [3, 300], ids=["serving", "large"])
@pytest.mark.parametrize("user_ids,item_ids", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_call_s_kind_selects_as_its_checked_dims(monkeypatch, env, batch, user_ids, item_ids, dtype):
    """``kind_of`` reads a call's metadata without validating it; the selection it makes is the
    one that the validated ``FusedDims`` make, for every shape class, id side, dtype and
    environment override, and a call of another dtype makes its own."""
    monkeypatch.setattr(dispatch, "_selected", {})
    if env is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, env)
    case = make_case(batch=batch, seq_len=2, user_ids=user_ids, item_ids=item_ids, dtype=dtype)
    dims, kind = dims_of(case), dispatch.kind_of(case.args())
    assert kind == (dims.batch, dims.user_ids, dims.item_ids, dims.dtype, dims.device)
    chosen = select_backend(kind)
    assert len(dispatch._selected) == 1 and select_backend(dims) is chosen and len(dispatch._selected) == 1
    other = make_case(batch=batch, seq_len=2, user_ids=user_ids, item_ids=item_ids,
                      dtype=torch.float64 if dtype == torch.float32 else torch.float32)
    select_backend(dispatch.kind_of(other.args()))
    assert len(dispatch._selected) == 2


@pytest.mark.parametrize("bad", [lambda a: a._replace(user=None), lambda a: a._replace(item=3),
                                 lambda a: a._replace(user=a.user[0, 0]), lambda a: a._replace(user_table=None)])
def test_a_call_too_malformed_to_read_gets_the_checks_error(bad):
    args = bad(make_case(batch=3, seq_len=2, user_ids=True).args())
    with pytest.raises((TypeError, ValueError), match="neumf_fast: (user|item)"):
        dispatch.kind_of(args)
