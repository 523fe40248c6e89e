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
    for (name, p), (_, q) in zip(fused.named_parameters(), design.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=2e-3, rtol=2e-5, msg=name)  # summed over 16 rows


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
