"""``FusedUserItem``: the first half of a NeuMF forward pass as one module.

The fused op takes each side's MF and MLP weights stacked, ``[H_mf + H_mlp, D]``, so the module
keeps them stacked: ``user_weight``/``user_bias`` and ``item_weight``/``item_bias`` are its
parameters, and a call costs no concatenation (rebuilding them per call cost a copy of every
weight forward and a split of its gradient backward).  Its ``state_dict`` is still the design's
four ``nn.Linear`` layers (``mf_user.weight``, ``mlp_user.bias``, ...): the stacked parameters are
split on saving and joined on loading, so a ``state_dict`` from the plain-PyTorch version loads
unchanged, and it is the same on every backend.  ``layer.mf_user.weight`` and the like are views
of the stacked parameters, for reading and in-place edits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .ops import FusedArgs, run_fused


class StackedProjections:
    """For an ``nn.Module`` whose first stage is the design's four projections: keeps them as one
    stacked weight (and bias) per side, ``user_weight``/``item_weight`` ``[H_mf + H_mlp, D]``, the
    layout the fused op takes, while its ``state_dict`` and attribute access stay those of four
    ``nn.Linear`` layers ``mf_user``, ``mlp_user``, ``mf_item`` and ``mlp_item``."""

    def _stack_projections(self, user_dim: int, item_dim: int, h_mf: int, h_mlp_user: int, h_mlp_item: int,
                           bias: bool = True, **factory) -> None:
        self.stacked_h_mf = h_mf
        for side, (in_dim, width) in {"user": (user_dim, h_mlp_user), "item": (item_dim, h_mlp_item)}.items():
            # nn.Linear's initialisation, per projection and in the design's order (mf, then mlp)
            mf, mlp = nn.Linear(in_dim, h_mf, bias=bias, **factory), nn.Linear(in_dim, width, bias=bias, **factory)
            self.register_parameter(f"{side}_weight", nn.Parameter(torch.cat([mf.weight.detach(), mlp.weight.detach()])))
            self.register_parameter(f"{side}_bias", nn.Parameter(torch.cat([mf.bias.detach(), mlp.bias.detach()]))
                                    if bias else None)
        if hasattr(self, "register_state_dict_post_hook"):  # the public names; torch < 2.5 has private ones
            self.register_state_dict_post_hook(_split_stacked)
            self.register_load_state_dict_pre_hook(_join_stacked)
        else:  # (torch refuses one function under both names in a process: register a fresh wrapper)
            self._register_state_dict_hook(lambda *args: _split_stacked(*args))
            self._register_load_state_dict_pre_hook(lambda *args: _join_stacked(*args), with_module=True)
        self.register_load_state_dict_post_hook(_name_missing_projections)

    def stacked_parameters(self) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """``(user_weight, user_bias, item_weight, item_bias)``, read from ``_parameters``:
        ``nn.Module``'s attribute lookup costs about 0.6 µs a name, a tenth of the Python in a
        serving-size call."""
        params = self._parameters
        try:
            return params["user_weight"], params["user_bias"], params["item_weight"], params["item_bias"]
        except KeyError:  # moved elsewhere (torch.nn.utils.parametrize): the attributes know where
            return self.user_weight, self.user_bias, self.item_weight, self.item_bias

    # The design's four projections, as views of the stacked parameters
    mf_user = property(lambda self: _Projection(self, "user", "mf"))
    mlp_user = property(lambda self: _Projection(self, "user", "mlp"))
    mf_item = property(lambda self: _Projection(self, "item", "mf"))
    mlp_item = property(lambda self: _Projection(self, "item", "mlp"))


class TableOwner:
    """For an ``nn.Module`` with embedding tables (``nn.Embedding`` children).  Its
    ``table_optimizer``, a ``neumf_fast.TableOptimizer`` over ``tables()``, updates them in the
    fused op's backward (docs/training.md); ``None`` (dense) gives them a ``.grad`` like any
    parameter.  It is not a submodule: the ``state_dict`` stays the module's own, and a trainer
    saves the optimizer's state beside it (train.py)."""

    table_optimizer = None

    def tables(self) -> dict[str, nn.Parameter]:
        """The embedding tables by parameter name: what a ``TableOptimizer`` updates."""
        return {f"{name}.weight": m.weight for name, m in self.named_children() if isinstance(m, nn.Embedding)}

    def dense_parameters(self) -> list[nn.Parameter]:
        """The parameters for ``torch.optim``: all of them, less the tables a table optimizer holds."""
        held = {id(t) for t in self.tables().values()} if self.table_optimizer is not None else set()
        return [p for p in self.parameters() if id(p) not in held]


class FusedUserItem(TableOwner, StackedProjections, nn.Module):
    """Pool a user's sequence, project user and item twice (MF and MLP), form the GMF product.

    Args:
        user_dim, item_dim: widths of the pooled user vector and of the item vector.
        h_mf: width of the MF projections (the GMF product).
        h_mlp: width of each MLP projection; ``h_mlp_item`` overrides it for the item side.
        bias: whether the four projections have biases.
        num_user_ids / num_item_ids: if given, the module owns an embedding table for that side
            (``user_embedding`` / ``item_embedding``) and takes ids instead of dense vectors.
        padding_idx: the id of an empty position in the user id sequence.
        mode: ``"sum"`` or ``"mean"`` pooling.
        backend: ``"auto"``, ``"triton"``, ``"cuda"``, ``"cpu"`` or ``"torch"`` (``NEUMF_FAST_BACKEND`` overrides it).

    Forward: ``(user, item, user_mask=None) -> (gmf [B, h_mf], mlp_in [B, h_mlp + h_mlp_item])``.

    ``table_optimizer``: see ``TableOwner``.
    """

    def __init__(
        self,
        user_dim: int,
        item_dim: int,
        h_mf: int,
        h_mlp: int,
        *,
        h_mlp_item: int | None = None,
        bias: bool = True,
        num_user_ids: int | None = None,
        num_item_ids: int | None = None,
        padding_idx: int | None = None,
        mode: str = "sum",
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.h_mf, self.mode, self.backend, self.padding_idx = h_mf, mode, backend, padding_idx
        self._stack_projections(user_dim, item_dim, h_mf, h_mlp, h_mlp if h_mlp_item is None else h_mlp_item, bias, **kw)
        self.user_embedding = (
            nn.Embedding(num_user_ids, user_dim, padding_idx=padding_idx, **kw) if num_user_ids is not None else None
        )
        self.item_embedding = nn.Embedding(num_item_ids, item_dim, **kw) if num_item_ids is not None else None

    def forward(self, user: Tensor, item: Tensor, user_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        user_weight, user_bias, item_weight, item_bias = self.stacked_parameters()
        # a submodule from _modules directly: nn.Module's attribute lookup costs about 0.6 us a name
        modules = self._modules
        user_embedding, item_embedding = modules.get("user_embedding"), modules.get("item_embedding")
        return run_fused(FusedArgs(user, user_mask, None if user_embedding is None else user_embedding.weight,
                                   self.padding_idx if user_embedding is not None else None, item,
                                   None if item_embedding is None else item_embedding.weight,
                                   user_weight, user_bias, item_weight, item_bias, self.h_mf, self.mode),
                         self.backend, self.table_optimizer)

    def extra_repr(self) -> str:
        return f"h_mf={self.h_mf}, mode={self.mode!r}, backend={self.backend!r}"


class _Projection:
    """``layer.mf_user`` and friends: ``weight`` and ``bias`` as views of the stacked parameters;
    calling it applies the projection, as the ``nn.Linear`` it stands for."""

    def __init__(self, layer: StackedProjections, side: str, part: str):
        rows = slice(0, layer.stacked_h_mf) if part == "mf" else slice(layer.stacked_h_mf, None)
        self.weight = getattr(layer, f"{side}_weight")[rows]
        bias = getattr(layer, f"{side}_bias")
        self.bias = bias[rows] if bias is not None else None
        self.in_features, self.out_features = self.weight.shape[1], self.weight.shape[0]

    def __call__(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


_STATE_NAMES = [(side, part, kind) for side in ("user", "item") for part in ("mf", "mlp") for kind in ("weight", "bias")]


def _split_stacked(module: StackedProjections, state_dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: ``user_weight`` -> ``mf_user.weight`` + ``mlp_user.weight``, etc.,
    in the design's order, ahead of the embeddings."""
    ours = {k[len(prefix):]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
    for side, part, kind in _STATE_NAMES:
        stacked = ours.get(f"{side}_{kind}")
        if stacked is not None:
            rows = slice(0, module.stacked_h_mf) if part == "mf" else slice(module.stacked_h_mf, None)
            state_dict[f"{prefix}{part}_{side}.{kind}"] = stacked[rows]
    for name, value in ours.items():
        if not name.startswith(("user_weight", "user_bias", "item_weight", "item_bias")):
            state_dict[prefix + name] = value


def _join_stacked(module: StackedProjections, state_dict, prefix: str, local_metadata, strict, missing_keys,
                  unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: the design's four projections -> the stacked parameters."""
    for side in ("user", "item"):
        for kind in ("weight", "bias"):
            mf, mlp = f"{prefix}mf_{side}.{kind}", f"{prefix}mlp_{side}.{kind}"
            if mf not in state_dict or mlp not in state_dict:
                continue  # reported as missing keys by the normal loading
            a, b = state_dict.pop(mf), state_dict.pop(mlp)
            if a.shape[1:] != b.shape[1:]:
                error_msgs.append(f"{mf} {list(a.shape)} and {mlp} {list(b.shape)} do not share an input width")
                continue
            state_dict[f"{prefix}{side}_{kind}"] = torch.cat([a, b])


def _name_missing_projections(module: StackedProjections, incompatible) -> None:
    """load_state_dict post-hook: report a missing stacked parameter by the names a state_dict has."""
    for i, key in enumerate(list(incompatible.missing_keys)):
        head, _, name = key.rpartition(".")
        prefix = head + "." if head else ""
        if name in ("user_weight", "user_bias", "item_weight", "item_bias"):
            side, kind = name.split("_")
            incompatible.missing_keys[i] = f"{prefix}mf_{side}.{kind}"
            incompatible.missing_keys.append(f"{prefix}mlp_{side}.{kind}")
