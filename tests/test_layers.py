"""FusedUserItem: a drop-in for the design's four nn.Linear layers, same state_dict on every backend."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neumf_fast import FusedUserItem
from conftest import KERNELS


class DesignFirstHalf(nn.Module):
    """The design's demo, with its bugs fixed (super().__init__(), the lost torch.cat)."""

    def __init__(self, dim: int = 128):
        super().__init__()
        self.mf_user, self.mlp_user = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.mf_item, self.mlp_item = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, user, item):
        user = user.sum(dim=1)
        gmf = self.mf_user(user) * self.mf_item(item)
        return gmf, torch.cat([self.mlp_user(user), self.mlp_item(item)], dim=-1)


@pytest.mark.parametrize("backend", ["torch", *KERNELS])
def test_loads_the_design_state_dict_and_matches_it(backend):
    torch.manual_seed(0)
    design = DesignFirstHalf(128)
    fused = FusedUserItem(128, 128, h_mf=128, h_mlp=128, backend=backend)
    fused.load_state_dict(design.state_dict())  # strict: same names, same shapes
    user, item = torch.randn(16, 10, 128), torch.randn(16, 128)
    expected, actual = design(user, item), fused(user, item)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=2e-4, rtol=2e-5)  # float32, D=128 sums of 10 rows
    sum(o.sum() for o in actual).backward()
    sum(o.sum() for o in expected).backward()
    grads = {f"{side}_{kind}": getattr(fused, f"{side}_{kind}").grad for side in ("user", "item")
             for kind in ("weight", "bias")}
    for name, q in design.named_parameters():
        part_side, kind = name.split(".")
        part, side = part_side.split("_")
        stacked = grads[f"{side}_{kind}"]
        p = stacked[:128] if part == "mf" else stacked[128:]
        torch.testing.assert_close(p, q.grad, atol=2e-3, rtol=2e-5, msg=name)  # summed over 16 rows


def test_the_stacked_weights_are_the_parameters_and_the_state_dict_is_the_designs():
    """No weights are concatenated per call: the stacked [H_mf + H_mlp, D] tensors are the
    parameters themselves.  The state_dict still has the four nn.Linear layers, in their order,
    round-trips, and names a missing projection by its own name."""
    design = DesignFirstHalf(8)
    fused = FusedUserItem(8, 8, h_mf=8, h_mlp=8, num_item_ids=5)
    assert [n for n, _ in fused.named_parameters()] == ["user_weight", "user_bias", "item_weight", "item_bias",
                                                        "item_embedding.weight"]
    keys = list(fused.state_dict())
    assert keys[:8] == list(design.state_dict()) and keys[8:] == ["item_embedding.weight"]
    fused.load_state_dict({**design.state_dict(), "item_embedding.weight": torch.zeros(5, 8)})
    torch.testing.assert_close(fused.user_weight[8:], design.mlp_user.weight)
    assert fused.mf_item.weight.data_ptr() == fused.item_weight.data_ptr()  # a view, not a copy
    for key, value in fused.state_dict().items():
        torch.testing.assert_close(value, design.state_dict().get(key, torch.zeros(5, 8)), msg=key)
    wrapper = nn.Sequential(fused)
    result = wrapper.load_state_dict({k: v for k, v in wrapper.state_dict().items() if "mlp_item.weight" not in k},
                                     strict=False)
    assert set(result.missing_keys) == {"0.mf_item.weight", "0.mlp_item.weight"}, result
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"0.mf_item.weight\""):
        wrapper.load_state_dict({k: v for k, v in wrapper.state_dict().items() if "mf_item.weight" not in k})


@pytest.mark.parametrize("backend", KERNELS)
def test_state_dict_is_the_same_on_every_backend(backend):
    kw = dict(h_mlp_item=5, num_user_ids=30, num_item_ids=20, padding_idx=0, mode="mean")
    a = FusedUserItem(8, 6, 3, 4, backend="torch", **kw)
    b = FusedUserItem(8, 6, 3, 4, backend=backend, **kw)
    assert a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(a.state_dict())
    users, items = torch.randint(0, 30, (11, 7)), torch.randint(0, 20, (11,))
    for x, y in zip(a(users, items), b(users, items)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_the_state_dict_hooks_work_with_older_torch_names(monkeypatch):
    """torch < 2.5 has only the private hook registrations: the same state_dict either way."""
    monkeypatch.delattr(nn.Module, "register_state_dict_post_hook")
    design = DesignFirstHalf(8)
    fused = FusedUserItem(8, 8, h_mf=8, h_mlp=8)
    fused.load_state_dict(design.state_dict())
    assert list(fused.state_dict()) == list(design.state_dict())
    torch.testing.assert_close(fused.item_weight[:8], design.mf_item.weight)


GPU_KERNELS = [b for b in ("triton", "cuda") if torch.cuda.is_available()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("backend", GPU_KERNELS)
def test_the_module_replays_in_a_cuda_graph(backend, ids):
    """Serving: the forward captured once, new requests copied into the captured inputs, each
    replay equal to an eager call on them (the id checks are device asserts while capturing)."""
    from neumf_fast.ops import _library

    if backend == "cuda" and not _library.CUDA_KERNELS_BUILT:
        pytest.skip("the CUDA kernels are not built")
    torch.manual_seed(0)
    kw = dict(num_user_ids=50, num_item_ids=40, padding_idx=0) if ids else {}
    layer = FusedUserItem(16, 16, 8, 12, backend=backend, **kw).cuda().eval()
    new = lambda: ((torch.randint(0, 50, (16, 5)), torch.randint(0, 40, (16,))) if ids
                   else (torch.randn(16, 5, 16), torch.randn(16, 16)))
    user, item = (t.cuda() for t in new())
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            layer(user, item)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            gmf, mlp_in = layer(user, item)
        for _ in range(3):
            next_user, next_item = (t.cuda() for t in new())
            user.copy_(next_user)
            item.copy_(next_item)
            graph.replay()
            expected = layer(next_user, next_item)
            torch.testing.assert_close((gmf, mlp_in), expected, atol=1e-6, rtol=1e-6)  # the same kernels
