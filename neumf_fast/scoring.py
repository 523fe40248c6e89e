"""Exact scoring of whole catalogues, and a streaming top-K over it: the one path that
full-ranking evaluation (``evaluate.evaluate_full``) and batch recommendation
(``Run.recommend_many``, ``neumf-fast recommend --all``) share.

Math (every model of ``neumf_fast.models``): the first tower layer is linear, so
``W1 @ cat(u, i) + b1 = (W1_u @ u + b1) + W1_i @ i``, and the prediction layer is linear, so
``h · cat(gmf, mlp_out) + b = (h_gmf ⊙ p_u) · q_i + h_mlp · mlp_out + b``.  The user halves are
computed once per user, the item halves once per item for the whole catalogue (and reused for
every user block); the GMF term is one ``[U, f] @ [f, I]`` matmul.  What remains per
(user, item) pair is the tower after its first layer (paper's NeuMF: ~700 multiply-adds against
~2,700 for ``forward``).

Tiling: users in blocks of ``user_block``, items in blocks of ``item_block``; a block's tower
input is ``[user_block, item_block, width]``, sized from the L2 cache (``block_sizes``) so the
tower's intermediates stay in cache between its layers.  The top-K of a user block is kept as a
running ``[user_block, k]`` (``torch.topk`` per item block and a merge), so memory is bounded by
the block sizes and ``k``, never by users × items.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import torch
from torch import Tensor

from .models import GMF, MLP, NeuMF, SequenceNeuMF

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def l2_cache_bytes() -> int:
    """The L2 cache of CPU 0 (sysfs), or 512 KiB where it cannot be read."""
    try:
        for index in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")):
            base = f"/sys/devices/system/cpu/cpu0/cache/{index}"
            if open(f"{base}/level").read().strip() == "2":
                size = open(f"{base}/size").read().strip()
                return int(size[:-1]) * (1024 if size.endswith("K") else 1024 * 1024) if size[-1] in "KM" else int(size)
    except (OSError, ValueError):
        pass
    return 512 * 1024


def block_sizes(width: int, num_items: int, itemsize: int = 4, cache: int | None = None) -> tuple[int, int]:
    """(user_block, item_block): a ``[user_block, item_block, width]`` tower input of about four
    L2 caches (the tower's next activation is half as wide, so input and output stay near cache;
    smaller blocks measured slower here, Python's per-block overhead then dominating)."""
    pairs = max(4096, 4 * (cache or l2_cache_bytes()) // max(1, width * itemsize))
    item_block = min(num_items, 1024) if num_items else 1
    return max(1, pairs // item_block), item_block


def predict_split(model) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """The prediction layer as (GMF weights ``[f]`` or None, tower weights ``[h]`` or None, bias)."""
    w, b = model.predict.weight[0], model.predict.bias[0]
    if isinstance(model, GMF):
        return w, None, b
    if isinstance(model, MLP):
        return None, w, b
    if isinstance(model, NeuMF):
        return w[:model.factors], w[model.factors:], b
    if isinstance(model, SequenceNeuMF):
        h = model.tower[-1].out_features
        return w[h:], w[:h], b
    raise TypeError(f"no catalogue scoring for {type(model).__name__}")


class CatalogueScorer:
    """Scores of users against every item of a model (or a fixed item subset), block by block.

    Args:
        model: a ``neumf_fast.models`` ranker, in eval mode.
        items: the candidate item ids ``[I]`` (default: the whole catalogue).
        precision: ``"fp32"`` or ``"bf16"`` (the tower after its first layer runs in bf16; the
            user and item halves and the final sums stay fp32).
    """

    @torch.no_grad()
    def __init__(self, model, items: Tensor | None = None, *, precision: str = "fp32",
                 user_block: int | None = None, item_block: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model, self.dtype = model, PRECISIONS[precision]
        device = model.predict.weight.device
        if items is None:
            items = torch.arange(model.item_embedding.num_embeddings, device=device)
        self.num_items = len(items)
        self.w_gmf, self.w_mlp, self.bias = predict_split(model)
        mf_i, first_i = model.item_parts(items.to(device))  # once per item, reused by every user block
        self.gmf_items = None if mf_i is None else mf_i.t().contiguous()            # [f, I]
        self.first_items = None if first_i is None else first_i.contiguous()          # [I, h1]
        width = 0 if first_i is None else first_i.shape[1]
        ub, ib = block_sizes(max(width, 1), self.num_items, torch.finfo(self.dtype).bits // 8)
        self.user_block, self.item_block = user_block or ub, item_block or ib
        self.tower = [] if self.first_items is None else \
            [(l.weight.to(self.dtype), l.bias.to(self.dtype)) for l in list(model.tower)[1:]]
        self.w_out = None if self.w_mlp is None else self.w_mlp.to(self.dtype)

    @torch.no_grad()
    def user_side(self, user, **user_kw) -> tuple[Tensor | None, Tensor | None]:
        """(``h_gmf ⊙ p_u`` ``[U, f]``, the first layer's user half with its bias ``[U, h1]``)."""
        mf_u, first_u = self.model.user_parts(user, **user_kw)
        return (None if mf_u is None else mf_u * self.w_gmf), first_u

    @torch.no_grad()
    def item_block_scores(self, gmf_u: Tensor | None, first_u: Tensor | None, sl: slice) -> Tensor:
        """``[U, len(sl)]`` fp32 logits of users (their ``user_side``) against items ``sl``."""
        out = None
        if gmf_u is not None:
            out = torch.addmm(self.bias.expand(1, 1), gmf_u, self.gmf_items[:, sl])
        if first_u is not None:
            x = (first_u[:, None, :] + self.first_items[None, sl, :]).to(self.dtype).relu_()
            x = x.view(-1, x.shape[-1])
            for w, b in self.tower:
                x = torch.addmm(b, x, w.t()).relu_()
            mlp = (x @ self.w_out).view(first_u.shape[0], -1).float()
            out = mlp + self.bias if out is None else out.add_(mlp)
        return out

    @torch.no_grad()
    def scores(self, user, **user_kw) -> Tensor:
        """``[U, I]`` logits of ``user`` (as ``forward`` takes it) against every candidate item."""
        gmf_u, first_u = self.user_side(user, **user_kw)
        return torch.cat([self.item_block_scores(gmf_u, first_u, sl)
                          for sl in _chunks(self.num_items, self.item_block)], dim=1)

    @torch.no_grad()
    def top_k(self, user, k: int, exclude: Callable[[slice], Tensor] | None = None, **user_kw) -> tuple[Tensor, Tensor]:
        """(scores, item positions) ``[U, k]`` of each user's best ``k`` candidates, best first.
        ``exclude(sl)`` gives a bool ``[U, len(sl)]`` of pairs to leave out (score ``-inf``); a
        user with fewer than ``k`` candidates left has ``-inf`` in its last columns."""
        k = min(k, self.num_items)
        gmf_u, first_u = self.user_side(user, **user_kw)
        best_s = best_i = None
        for sl in _chunks(self.num_items, self.item_block):
            s = self.item_block_scores(gmf_u, first_u, sl)
            if exclude is not None:
                s.masked_fill_(exclude(sl), float("-inf"))
            top = s.topk(min(k, s.shape[1]), dim=1)
            idx = top.indices + sl.start
            if best_s is None:
                best_s, best_i = top.values, idx
            else:  # merge the running top-K with this block's
                both = torch.cat([best_s, top.values], 1)
                merged = both.topk(min(k, both.shape[1]), dim=1)
                best_s, best_i = merged.values, torch.cat([best_i, idx], 1).gather(1, merged.indices)
        return best_s, best_i


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def user_blocks(n: int, size: int) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size``: the user blocks."""
    return _chunks(n, size)

