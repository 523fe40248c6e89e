"""neumf_fast: a drop-in, faster NeuMF (He et al., WWW 2017) for PyTorch."""

from . import reference
from .layers import FusedUserItem
from .models import GMF, MLP, NeuMF, SequenceNeuMF
from .ops import BACKENDS, BackendUnavailable, available_backends, neumf_input, warmup
from .table_optimizer import TableOptimizer


def load_run(path, *, backend=None, device="cpu", split=None):
    """A trained run (its directory, or a checkpoint in it) with its split: ``run.recommend``,
    ``run.score`` and ``run.test_metrics`` by original ids.  See ``neumf_fast.runs.Run``."""
    from .runs import load_run as _load_run  # the data pipeline (numpy, pandas) only when asked for

    return _load_run(path, backend=backend, device=device, split=split)


__version__ = "0.1.0"
__all__ = ["BACKENDS", "BackendUnavailable", "FusedUserItem", "GMF", "MLP", "NeuMF", "SequenceNeuMF",
           "TableOptimizer", "available_backends", "load_run", "neumf_input", "reference", "warmup"]
