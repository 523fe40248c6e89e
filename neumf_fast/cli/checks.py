"""Checks every command makes before any work: a flag that cannot work here is one
``UsageError`` line naming the problem and the fix."""

from __future__ import annotations

import os
from pathlib import Path


class UsageError(ValueError):
    """A flag that cannot work here: reported as one line, before any work starts."""


def check_device(text: str) -> str:
    """``text`` as a device this torch can use, or a ``UsageError`` saying why not."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if torch.version.cuda is None and not torch.cuda.is_available():
            raise UsageError(f"--device {text}: this torch ({torch.__version__}) is built without CUDA; use --device cpu, "
                             "or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                             "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1})")
    elif device.type != "cpu":
        raise UsageError(f"--device {text}: neumf-fast runs on cpu or cuda")
    return text


def check_backend(backend: str | None, device: str, precision: str = "fp32") -> None:
    """A ``UsageError`` when the named backend cannot run on ``device`` (checked before any work)."""
    import torch

    from ..ops.dispatch import ENV_VAR, unavailable_reasons

    name = os.environ.get(ENV_VAR) or backend
    if name is None:
        return
    source = f"{ENV_VAR}={name}" if os.environ.get(ENV_VAR) else f"--backend {name}"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32
    reasons = unavailable_reasons(name, device, dtype)
    if reasons:
        raise UsageError(f"{source} cannot run on {device}: {'; '.join(reasons)}. Use --backend auto")


def check_dataset(spec: str) -> None:
    from ..data import DATASETS

    if spec not in DATASETS and not Path(spec).exists():
        raise UsageError(f"--dataset {spec!r}: no such file or directory, and not one of {', '.join(DATASETS)}")
