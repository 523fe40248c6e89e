"""Benchmark rows carry the machine, library versions and thread count (pytest-benchmark's
machine_info plus ours), so a results file says where its numbers came from."""

import platform

import torch


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    machine_info["platform"] = platform.platform()
    try:
        import triton

        machine_info["triton"] = triton.__version__
    except ImportError:
        machine_info["triton"] = None
    machine_info["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
