"""Benchmark rows carry the machine, library versions and thread count (pytest-benchmark's
machine_info plus ours), so a results file says where its numbers came from.

Every benchmark process sets glibc malloc as ``neumf-fast train`` does
(``neumf_fast.malloc.configure_malloc``), for every provider alike: by default a process can
settle, at random, where each megabyte-sized tensor it allocates page-faults afresh, which moved
one backward from 0.1 ms to 1 ms between two runs of the same script."""

import platform

import torch

from neumf_fast.malloc import configure_malloc

MALLOC_CONFIGURED = configure_malloc()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    machine_info["platform"] = platform.platform()
    machine_info["malloc"] = "glibc, configure_malloc()" if MALLOC_CONFIGURED else "default"
    try:
        import triton

        machine_info["triton"] = triton.__version__
    except ImportError:
        machine_info["triton"] = None
    machine_info["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
