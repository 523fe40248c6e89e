"""Cores and processes: torch's thread counts for training, and the ``torch.distributed`` process
group that ``neumf-fast train --nproc N`` (torchrun) runs in."""

from __future__ import annotations

import os

import torch

# The paper's model is small: at batch 256 its GEMMs are [256 x 64] by [64 x 32], so a second
# thread gains little (0.93 -> 0.83 ms per step on the 2-core machine) while two processes each
# running 2 threads on 2 cores fall to 3.4 ms per step (OpenMP threads spin on shared cores).
# Large batches do use more cores (batch 8192: 5.6 -> 3.7 ms per step with 2 threads).
SMALL_BATCH = 1024


def core_share() -> int:
    """The cores this process may use, shared among the local ranks of a multi-process run."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def configure_threads(threads: int | None, batch_size: int) -> int:
    """Sets torch's intra-op threads for training (and 1 inter-op thread: the model has no
    independent branches worth running concurrently); returns the number chosen.

    ``None`` (auto): 1 thread for batches up to ``SMALL_BATCH``; otherwise ``core_share()``."""
    if threads is None:
        threads = 1 if batch_size <= SMALL_BATCH else core_share()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already started in this process
        pass
    return threads


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(device: str) -> str:
    """Joins the process group torchrun describes (WORLD_SIZE > 1); returns this rank's device."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return device
