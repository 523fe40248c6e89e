"""``FusedUserItem``: the first half of a NeuMF forward pass as one module.

Its parameters are named and shaped like the design's four ``nn.Linear`` layers
(``mf_user``, ``mlp_user``, ``mf_item``, ``mlp_item``), so a ``state_dict`` saved from the
plain-PyTorch version loads unchanged, and the ``state_dict`` is the same on every backend.
The forward is one call of the fused op with the MF and MLP weights of each side stacked.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .ops import neumf_input


class FusedUserItem(nn.Module):
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
        self.mf_user = nn.Linear(user_dim, h_mf, bias=bias, **kw)
        self.mlp_user = nn.Linear(user_dim, h_mlp, bias=bias, **kw)
        self.mf_item = nn.Linear(item_dim, h_mf, bias=bias, **kw)
        self.mlp_item = nn.Linear(item_dim, h_mlp if h_mlp_item is None else h_mlp_item, bias=bias, **kw)
        self.user_embedding = (
            nn.Embedding(num_user_ids, user_dim, padding_idx=padding_idx, **kw) if num_user_ids is not None else None
        )
        self.item_embedding = nn.Embedding(num_item_ids, item_dim, **kw) if num_item_ids is not None else None

    @staticmethod
    def _stack(mf: nn.Linear, mlp: nn.Linear) -> tuple[Tensor, Tensor | None]:
        weight = torch.cat([mf.weight, mlp.weight])
        bias = torch.cat([mf.bias, mlp.bias]) if mf.bias is not None else None
        return weight, bias

    def forward(self, user: Tensor, item: Tensor, user_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        user_weight, user_bias = self._stack(self.mf_user, self.mlp_user)
        item_weight, item_bias = self._stack(self.mf_item, self.mlp_item)
        return neumf_input(
            user, item, h_mf=self.h_mf, user_mask=user_mask,
            user_table=None if self.user_embedding is None else self.user_embedding.weight,
            padding_idx=self.padding_idx if self.user_embedding is not None else None,
            item_table=None if self.item_embedding is None else self.item_embedding.weight,
            user_weight=user_weight, user_bias=user_bias, item_weight=item_weight, item_bias=item_bias,
            mode=self.mode, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"h_mf={self.h_mf}, mode={self.mode!r}, backend={self.backend!r}"
