"""The fused op alone on the design's shapes (B=16 and B=4096, L=10, D=H=128, plus the id
path): its parity with the reference and its speed against eager PyTorch.  (The main job,
NeuMF training, is ``neumf-fast train``; see the README.)

    python -m neumf_fast.demo
"""

from __future__ import annotations

import argparse
import time

import torch

import neumf_fast
from neumf_fast import reference
from neumf_fast.ops import FusedArgs, kind_of, select_backend


def _inputs(batch, seq_len, dim, ids, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = lambda *s: (torch.randn(*s, generator=g) * 0.1).requires_grad_()
    kw = dict(h_mf=dim, user_weight=p(2 * dim, dim), user_bias=p(2 * dim), item_weight=p(2 * dim, dim),
              item_bias=p(2 * dim))
    if ids:
        kw.update(user_table=p(100_000, dim), item_table=p(100_000, dim), padding_idx=0)
        return torch.randint(0, 100_000, (batch, seq_len), generator=g), torch.randint(0, 100_000, (batch,), generator=g), kw
    return p(batch, seq_len, dim), p(batch, dim), kw


def _fwd_bwd(fn, user, item, kw):
    leaves = [t for t in (user, item, *kw.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
    gmf, mlp_in = fn(user, item, **kw)
    grads = torch.autograd.grad((gmf, mlp_in), leaves, (torch.ones_like(gmf), torch.ones_like(mlp_in)))
    return [gmf, mlp_in, *grads]


def _median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto", help="auto | triton | cpu | torch (NEUMF_FAST_BACKEND overrides)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    shapes = [("design demo", 16, 10, 128, False), ("training batch", 4096, 10, 128, False),
              ("id path, 100k x 64 tables", 4096, 50, 64, True)]
    print(f"neumf_fast {neumf_fast.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'shape':<28}{'backend':<9}{'max err':>10}{'eager ms':>10}{'ours ms':>10}{'speed-up':>10}")
    for name, batch, seq_len, dim, ids in shapes:
        user, item, kw = _inputs(batch, seq_len, dim, ids)
        call = FusedArgs(user, None, kw.get("user_table"), kw.get("padding_idx"), item, kw.get("item_table"),
                         kw["user_weight"], kw["user_bias"], kw["item_weight"], kw["item_bias"], dim, "sum")
        chosen = select_backend(kind_of(call), args.backend).name
        ours = lambda u, i, **k: neumf_fast.neumf_input(u, i, backend=args.backend, **k)
        expected, actual = _fwd_bwd(reference.neumf_input, user, item, kw), _fwd_bwd(ours, user, item, kw)
        err = max(((a - e).abs().max() / e.abs().max().clamp_min(1)).item() for a, e in zip(actual, expected))
        eager = _median_ms(lambda: _fwd_bwd(reference.neumf_input, user, item, kw), args.repeats)
        fused = _median_ms(lambda: _fwd_bwd(ours, user, item, kw), args.repeats)
        print(f"{name:<28}{chosen:<9}{err:>10.1e}{eager:>10.3f}{fused:>10.3f}{eager / fused:>9.2f}x")
    print("(forward + backward, float32; max err is relative to each output's largest entry)")


if __name__ == "__main__":
    main()
