"""neumf_fast: a drop-in, faster NeuMF (He et al., WWW 2017) for PyTorch."""

from . import reference
from .layers import FusedUserItem
from .models import GMF, MLP, NeuMF, SequenceNeuMF
from .ops import BACKENDS, BackendUnavailable, available_backends, neumf_input

__version__ = "0.1.0"
__all__ = ["BACKENDS", "BackendUnavailable", "FusedUserItem", "GMF", "MLP", "NeuMF", "SequenceNeuMF",
           "available_backends", "neumf_input", "reference"]
