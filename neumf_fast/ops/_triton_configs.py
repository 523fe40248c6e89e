"""The Triton kernels' launch configurations: block sizes and warps from a rule on the widths
and dtype (Liger-Kernel's ``calculate_settings`` is the model), never from the batch size, and
the dots' precision.  Plain Python: the launchers call these on every call (cached)."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def _block(n: int) -> int:
    # tl.dot needs every dimension >= 16
    return max(16, 1 << (max(1, n) - 1).bit_length())  # plain ints: triton's helpers cost µs a call


def _floor_pow2(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


@functools.lru_cache(maxsize=None)
def _forward_config(dim: int, block_mf: int, block_mlp: int, proj: bool, seq_len_1: bool, fp32: bool) -> tuple:
    """(BLOCK_B, BLOCK_K, num_warps, NUM_STAGES) of the forward, from the widths and dtype alone
    (not the batch size: a ragged batch reuses the kernel).  BLOCK_K keeps the two weight tiles
    of a D step at <= 8192 values (4096 in fp32, whose IEEE dots hold both operands in
    registers); BLOCK_B keeps the fp32 values a row holds live (the user side's MF half while
    the item side runs, the side's MF and MLP accumulators, one pooled tile) at <= 48 registers
    a thread (32 in fp32).  That leaves room for addresses and the pipelined loads: no spills at
    any shipped shape on sm_80 or sm_90 (tests/test_gpu_offline.py checks the SASS)."""
    return _config(dim, block_mf, block_mlp, proj, fp32, 2 * block_mf + block_mlp) + (1 if seq_len_1 else 2,)


@functools.lru_cache(maxsize=None)
def _backward_config(dim: int, width: int, proj: bool, fp32: bool) -> tuple:
    """(BLOCK_B, BLOCK_K, BLOCK_H, num_warps) of the backward rows kernel, which tiles both the
    D and the H = H_mf + H_mlp reductions and reads [d_mf | d_mlp] per tile: a [BLOCK_B,
    BLOCK_H] operand, a [BLOCK_H, BLOCK_K] weight tile and a [BLOCK_B, BLOCK_K] accumulator.
    With no projection D = H and one tile is both.  BLOCK_B x BLOCK_K x BLOCK_H = 32 x 32 x 16
    (16 x 32 x 16 in fp32, whose IEEE dots hold their operands in registers) at 4 warps is the
    largest that spills nowhere on sm_80 or sm_90 (64-wide tiles or 8 warps spill: measured with
    tests/triton_aot.py); the kernel is bound by its gathers and scatters, not the dots."""
    return 16 if fp32 else 32, max(16, min(32, _block(dim if proj else width))), 16, 4


def _config(dim, block_mf, block_mlp, proj, fp32, live):
    width = block_mf + block_mlp
    num_warps = 4 if width <= 128 else 8
    block_k = max(16, min(64, _block(dim), _floor_pow2((4096 if fp32 else 8192) // width))) if proj else 16
    live += block_k if proj else 0
    block_b = max(16, min(64, _floor_pow2((32 if fp32 else 48) * 32 * num_warps // live)))
    return block_b, block_k, num_warps


def _precision() -> str:
    """fp32 dots in IEEE precision unless the user opted in to TF32, as for torch.matmul."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
