"""Offsets past 2^31 elements are indexed with 64-bit arithmetic: a tiny D and a huge B*L
(or a table with more than 2^31 elements), with the only non-zero values at the far end.
Each test needs a few GiB and is skipped, saying so, where the memory is not there.  They run
for the C++ CPU kernel (marked slow) and, on a GPU, for the CUDA kernels."""

from __future__ import annotations

import pytest
import torch

import neumf_fast
from neumf_fast.ops import _library

PAST_INT32 = 2**31 + 2**16

DEVICES = [
    pytest.param("cpu", marks=[pytest.mark.slow, pytest.mark.skipif(_library.EXTENSION_ERROR is not None,
                                                                    reason=str(_library.EXTENSION_ERROR))]),
    pytest.param("cuda", marks=pytest.mark.skipif(not (torch.cuda.is_available() and _library.CUDA_KERNELS_BUILT),
                                                  reason="needs a GPU and the CUDA kernels built")),
]


def _available_gib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0] / 2**30
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 2**20


def need_gib(gib: float, device: str = "cpu"):
    if _available_gib(device) < gib:
        pytest.skip(f"needs {gib} GiB of free {device} memory, {_available_gib(device):.1f} GiB available")


@pytest.mark.parametrize("device", DEVICES)
def test_dense_sequence_past_int32_forward_and_backward(device):
    need_gib(12, device)
    seq_len = 2**16
    batch = PAST_INT32 // seq_len  # B*L*D = 2^31 + 2^16 elements
    user = torch.zeros(batch, seq_len, 1, dtype=torch.bfloat16, device=device)
    user[-1, -1, 0] = 1.0   # element 2^31 + 2^16 - 1
    user[-1, 0, 0] = 2.0
    user[0, 0, 0] = 5.0
    user.requires_grad_()
    item = torch.ones(batch, 1, dtype=torch.bfloat16, device=device)
    gmf, mlp_in = neumf_fast.neumf_input(user, item, h_mf=1, backend=device)
    assert mlp_in.shape == (batch, 0)
    assert gmf[-1, 0].item() == 3.0 and gmf[0, 0].item() == 5.0 and gmf[1:-1].count_nonzero() == 0
    upstream = torch.zeros_like(gmf)
    upstream[-1, 0] = 4.0
    (grad_user,) = torch.autograd.grad(gmf, user, upstream)
    del user
    assert grad_user[-1, -1, 0].item() == 4.0 and grad_user[-1, 0, 0].item() == 4.0
    assert grad_user[0].count_nonzero() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_table_past_int32_forward(device):
    need_gib(7, device)
    rows = PAST_INT32
    table = torch.zeros(rows, 1, dtype=torch.bfloat16, device=device)
    table[-1, 0] = 3.0
    table[2**31, 0] = 2.0
    ids = torch.tensor([[rows - 1, 2**31], [0, rows - 1]], device=device)
    item = torch.ones(2, 1, dtype=torch.bfloat16, device=device)
    gmf, _ = neumf_fast.neumf_input(ids, item, user_table=table, h_mf=1, backend=device)
    assert gmf[:, 0].tolist() == [5.0, 3.0]
