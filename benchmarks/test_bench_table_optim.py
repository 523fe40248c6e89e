"""Row-wise table optimizers (``neumf_fast.TableOptimizer``) against dense optimizers, on the CPU.

- ``test_epoch``: one NeuMF epoch on the ML-1M-sized synthetic set (paper defaults: factors 8,
  layers [64,32,16,8]), providers interleaved block by block (``paired.py``):
  ``trainer_dense`` (``neumf-fast train``'s step: the C++ kernel, fused dense Adam),
  ``trainer_adam`` (the same with ``--table-optimizer adam``), and at batch 256 the plain
  PyTorch loop with dense Adam (``plain_dense``) and with ``nn.Embedding(sparse=True)`` +
  ``torch.optim.SparseAdam`` (``plain_sparse_adam``).  Validation HR@10 after the epoch.
- ``test_scale_epoch``: the same, ML-20M-shaped at ``NEUMF_FAST_SCALE`` (0.01 on the CPU, 1 on a
  GPU: batch 2^20), factors 64, fp32, ``trainer_dense`` against ``trainer_adam``; on a GPU also
  ``trainer_rowwise_adagrad`` and ``trainer_sgd`` (``benchmarks/gpu_check.sh``'s ``tables`` step).
- ``test_step``: one training step on the op benchmarks' ids shape (two 100k x 64 tables, B=4096,
  a 50-id user bag with padding id 0 and one item id, the design's four ``nn.Linear``): the
  user's ``nn.EmbeddingBag`` + ``nn.Linear`` with ``torch.optim.Adagrad``; the fused op with
  ``Adagrad``; the fused op with ``rowwise_adagrad`` and with row-wise ``adam`` on its tables.
- ``test_step_fbgemm``: fbgemm's CPU TBE (``EXACT_ROWWISE_ADAGRAD`` fused into its backward) plus
  the same ``nn.Linear``s beside ``rowwise_adagrad``, when ``fbgemm-gpu-cpu`` is installed (never
  a dependency); it skips, saying so, when not.

    python -m pytest benchmarks/test_bench_table_optim.py --benchmark-json=benchmarks/results/table-optim.json
"""

from __future__ import annotations

import statistics
from time import perf_counter

import pytest
import torch
from paired import interleaved_epoch
from test_bench_cpu import make_case
from test_bench_train import DEVICE, PlainNeuMF, _tensors

from neumf_fast import FusedUserItem, TableOptimizer
from neumf_fast.config import TrainConfig
from neumf_fast.evaluate import evaluate_candidates
from neumf_fast.models import NeuMF
from neumf_fast.ops import _library
from neumf_fast.parallel import configure_threads
from neumf_fast.train import epoch_samples, train_epoch
from neumf_fast.train_step import TrainStep

pytestmark = pytest.mark.skipif(_library.EXTENSION_ERROR is not None, reason=str(_library.EXTENSION_ERROR))


class _Both:
    """Two optimizers stepped as one (the plain loop's SparseAdam for tables, Adam for the rest)."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]
        self.defaults = {}

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self):
        for o in self.optimizers:
            o.step()


def _provider(name: str, num_users: int, num_items: int, factors: int = 8, layers=(64, 32, 16, 8)):
    """(model, optimizer) as each provider trains."""
    torch.manual_seed(0)
    lr = TrainConfig().learning_rate()
    if name.startswith("trainer"):  # trainer_dense, or trainer_ and a table optimizer
        model = NeuMF(num_users, num_items, factors, layers, backend="cpu" if DEVICE == "cpu" else "auto").to(DEVICE)
        if name != "trainer_dense":
            model.table_optimizer = TableOptimizer(model.tables(), name.removeprefix("trainer_"))  # default lr
        return model, torch.optim.Adam(model.dense_parameters(), lr=lr, fused=True)
    model = PlainNeuMF(num_users, num_items, factors, layers)
    if name == "plain_dense":
        return model, torch.optim.Adam(model.parameters(), lr=lr)
    tables = [model.mf_user, model.mf_item, model.mlp_user, model.mlp_item]
    for t in tables:
        t.sparse = True
    rest = [p for n, p in model.named_parameters() if not n.startswith(("mf_", "mlp_"))]
    return model, _Both(torch.optim.SparseAdam([t.weight for t in tables], lr=lr), torch.optim.Adam(rest, lr=lr))


def _paired(benchmark, names, split, sampler, users, items, batch_size, shape: str, factors=8, layers=(64, 32, 16, 8)):
    threads = configure_threads(None, batch_size)
    runs = {}
    for name in names:
        model, optimizer = _provider(name, split.num_users, split.num_items, factors, layers)
        step = TrainStep(model, optimizer, batch_size)
        train_epoch(model, optimizer, epoch_samples(users[:20000], items[:20000], sampler, 4, 0, 99), batch_size,
                    step=step)  # warm-up
        runs[name] = (model, optimizer, step)
    begin = perf_counter()
    samples = epoch_samples(users, items, sampler, 4, 0, 0)
    sampling = perf_counter() - begin
    seconds = {}
    benchmark.pedantic(lambda: seconds.update(interleaved_epoch(runs, samples, batch_size)), rounds=1, iterations=1)
    hr = {n: evaluate_candidates(m, split, "valid", device=DEVICE)["hr@10"] for n, (m, _, _) in runs.items()}
    written_out = {n: step.written_out is not None for n, (_, _, step) in runs.items()}
    benchmark.extra_info.update(
        direction="train epoch, paired", shape=shape, dtype="float32", threads=threads, samples=len(samples[0]),
        sampling_s=round(sampling, 3),
        paired={n: {"seconds": round(sampling + seconds[n], 3), "valid_hr10": round(hr[n], 4),
                    "written_out_step": written_out[n]} for n in runs})


cpu_only = pytest.mark.skipif(DEVICE != "cpu", reason="a CPU benchmark (test_scale_epoch runs on a GPU)")


@cpu_only
@pytest.mark.parametrize("batch_size", [256, 8192])
def test_epoch(benchmark, batch_size):
    split, sampler, users, items = _tensors()
    names = ["trainer_dense", "trainer_adam"] + (["plain_dense", "plain_sparse_adam"] if batch_size == 256 else [])
    _paired(benchmark, names, split, sampler, users, items, batch_size, f"ML-1M-sized, batch {batch_size}")


def test_scale_epoch(benchmark):
    import test_bench_scale as scale

    split = scale._split()
    _, _, _, sampler, users, items = scale._setup("fused_op")
    names = ["trainer_dense", "trainer_adam"] + (["trainer_rowwise_adagrad", "trainer_sgd"] if DEVICE == "cuda" else [])
    _paired(benchmark, names, split, sampler, users, items, scale.batch_size,
            f"ML-20M x {scale.SCALE:g}, batch {scale.batch_size}", scale.FACTORS, scale.LAYERS)


STEP_SHAPE = (4096, 50, 64, 64, True)  # test_bench_cpu's ids_B4096_L50_D64_N100k
ROUNDS = 15


def _step_providers() -> dict:
    """name: a function running one training step (forward, loss, backward, optimizer)."""
    plain, user, item = make_case(*STEP_SHAPE)
    out = {}

    def make(module, optimizer):
        def step():
            optimizer.zero_grad(set_to_none=True)
            gmf, mlp_in = module(user, item)
            (gmf.sum() + mlp_in.sum()).backward()
            optimizer.step()
        return step

    out["embedding_bag_adagrad"] = make(plain, torch.optim.Adagrad(plain.parameters(), lr=0.01))
    for name in ("fused_adagrad", "fused_rowwise_adagrad", "fused_adam"):
        fused = FusedUserItem(64, 64, 64, 64, num_user_ids=100_000, num_item_ids=100_000, padding_idx=0, backend="cpu")
        fused.load_state_dict(plain.state_dict())
        if name == "fused_adagrad":
            out[name] = make(fused, torch.optim.Adagrad(fused.parameters(), lr=0.01))
            continue
        table_opt = name.removeprefix("fused_")
        fused.table_optimizer = TableOptimizer(fused.tables(), table_opt, lr=0.01)
        dense_optimizer = torch.optim.Adagrad if table_opt == "rowwise_adagrad" else torch.optim.Adam
        out[name] = make(fused, dense_optimizer(fused.dense_parameters(), lr=0.01))
    return out, user, item, plain


def _time_interleaved(benchmark, steps: dict) -> dict:
    times = {n: [] for n in steps}
    for fn in steps.values():  # warm-up
        fn()

    def rounds():
        for r in range(ROUNDS):
            for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
                begin = perf_counter()
                steps[name]()
                times[name].append(perf_counter() - begin)

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    return {n: round(statistics.median(t) * 1e3, 2) for n, t in times.items()}


@cpu_only
def test_step(benchmark):
    steps, *_ = _step_providers()
    ms = _time_interleaved(benchmark, steps)
    benchmark.extra_info.update(direction="train step, paired medians", shape="ids B=4096 L=50 D=64 H=64 N=100k",
                                dtype="float32", threads=torch.get_num_threads(), rounds=ROUNDS, ms_per_step=ms)


@cpu_only
def test_step_fbgemm(benchmark):
    fbgemm = pytest.importorskip("fbgemm_gpu", reason="fbgemm-gpu-cpu is not installed (pip install "
                                 "fbgemm-gpu-cpu==1.8.0 beside torch 2.13.0 to compare)")
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen

    steps, user, item, plain = _step_providers()
    batch, seq_len, dim = STEP_SHAPE[:3]
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(100_000, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)] * 2, optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.01, eps=1e-8, pooling_mode=PoolingMode.SUM)
    # fbgemm has no padding id: the user bags keep only their non-padding ids (offsets per bag)
    keep = user != 0
    lengths = torch.cat([keep.sum(1), torch.ones(batch, dtype=torch.int64)])
    indices = torch.cat([user[keep], item])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    linears = [plain.mf_user, plain.mlp_user, plain.mf_item, plain.mlp_item]
    dense = torch.optim.Adagrad([p for m in linears for p in m.parameters()], lr=0.01)

    def fbgemm_step():
        dense.zero_grad(set_to_none=True)
        pooled = tbe(indices, offsets)  # [B, 2 D]: the user bag, then the item row
        u, i = pooled[:, :dim], pooled[:, dim:]
        gmf = plain.mf_user(u) * plain.mf_item(i)
        mlp_in = torch.cat([plain.mlp_user(u), plain.mlp_item(i)], dim=-1)
        (gmf.sum() + mlp_in.sum()).backward()
        dense.step()

    ms = _time_interleaved(benchmark, {"fbgemm_rowwise_adagrad": fbgemm_step,
                                       "fused_rowwise_adagrad": steps["fused_rowwise_adagrad"],
                                       "fused_adam": steps["fused_adam"]})
    benchmark.extra_info.update(direction="train step, paired medians", shape="ids B=4096 L=50 D=64 H=64 N=100k",
                                dtype="float32", threads=torch.get_num_threads(), rounds=ROUNDS, ms_per_step=ms,
                                fbgemm_gpu=getattr(fbgemm, "__version__", "?"))
