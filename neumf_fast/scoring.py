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

Tiling: a ``top_k`` call takes ``user_block`` users and splits them into tiles of
``user_tile`` users, which ``threads`` worker threads take in turn, each on one core (``_map``).
A tile runs through the tower ``item_block`` items at a time, pairs as columns: ``[width + 1,
user_tile * item_block]`` activations of about one L2 cache (``block_sizes``), with a row of ones
that carries the next layer's bias.  A tile keeps its row of scores ``[user_tile, I]`` and takes
one ``torch.topk`` of it, so memory is bounded by the tiles (``user_block x I`` scores at most),
never by users × items.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
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


# Tower pairs in one tile: its widest activation (``[width + 1, pairs]`` fp32) about one L2 cache,
# so the next layer reads it from cache.  Larger tiles measured no faster on one core; smaller
# ones pay Python's per-op dispatch, which the worker threads also share through the GIL.
TILE_L2_CACHES = 1
# Tiles per worker in one ``top_k`` call: more than one, so a worker slowed by another process on
# its core takes fewer of them (the pool hands out tiles as workers free up).
TILES_PER_WORKER = 4


def block_sizes(width: int, num_items: int, itemsize: int = 4, cache: int | None = None) -> tuple[int, int]:
    """(user_tile, item_block): a tile of ``user_tile x item_block`` pairs whose tower input
    ``[width + 1, pairs]`` is about ``TILE_L2_CACHES`` L2 caches."""
    pairs = max(4096, int(TILE_L2_CACHES * (cache or l2_cache_bytes())) // max(1, (width + 1) * itemsize))
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


HAS_ADD_RELU = hasattr(torch.ops.aten, "_add_relu")


def add_relu(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``relu(a + b)`` (broadcast) in one pass.  ATen's ``_add_relu`` (a CPU kernel, kept for
    the JIT's add+relu fusion) is the fast path; it computes exactly ``(a + b).clamp_min(0)``,
    so the fallback (two passes) gives the same numbers."""
    if a.device.type == "cpu" and HAS_ADD_RELU:
        return torch.ops.aten._add_relu(a, b) if out is None else torch.ops.aten._add_relu.out(a, b, out=out)
    return (a + b).relu_() if out is None else torch.add(a, b, out=out).relu_()


def tower_columns(model, dtype: torch.dtype) -> tuple[list[Tensor], Tensor]:
    """The tower after its first layer and the prediction's tower weights, for activations with
    pairs as columns and a last row of ones: each layer ``(W, b)`` becomes ``[[W, b], [0, 1]]``,
    so ``relu(layer @ x)`` is the layer's output with a last row of ones again (relu(1) = 1) and
    no bias is copied or added; the prediction's weights get a 0 against that row."""
    layers = []
    for layer in list(model.tower)[1:]:
        w, b = layer.weight.detach(), layer.bias.detach()
        ones = torch.zeros(1, w.shape[1] + 1, dtype=w.dtype, device=w.device)
        ones[0, -1] = 1
        layers.append(torch.cat([torch.cat([w, b[:, None]], 1), ones]).to(dtype))
    _, w_mlp, _ = predict_split(model)
    return layers, torch.cat([w_mlp.detach(), w_mlp.new_zeros(1)]).to(dtype)


def run_tower(x: Tensor, layers: list[Tensor], w_out: Tensor, columns: bool = True) -> Tensor:
    """``[pairs]``: the prediction's tower term of the first layer's output ``x`` through
    ``tower_columns``'s layers: ``x`` is ``[h1 + 1, pairs]`` with a last row of ones, or with
    ``columns=False`` ``[pairs, h1 + 1]`` with a last column of ones (the same weights serve
    both).  Pairs as columns make each GEMM ``[out, width] @ [width, pairs]``, which MKL runs
    faster than ``[pairs, width] @ [width, out]`` at these widths; Inductor compiles the rows
    form better (``export.CatalogueScores``)."""
    for w in layers:
        x = (torch.mm(w, x) if columns else torch.mm(x, w.t())).relu_()
    return w_out @ x if columns else x @ w_out


class CatalogueScorer:
    """Scores of users against every item of a model (or a fixed item subset), tile by tile.

    Args:
        model: a ``neumf_fast.models`` ranker, in eval mode.
        items: the candidate item ids ``[I]`` (default: the whole catalogue).
        precision: ``"fp32"`` or ``"bf16"`` (the tower after its first layer runs in bf16; the
            user and item halves and the final sums stay fp32).
        user_block: users a ``top_k`` call takes (``Run.iter_recommendations`` passes that many);
            default ``TILES_PER_WORKER`` tiles per thread.
        item_block: items a tile takes; default from the L2 cache (``block_sizes``).
        threads: worker threads of ``top_k`` and ``scores`` on the CPU (default: torch's
            intra-op threads when the scorer is made); each runs its tiles on one core.
    """

    @torch.no_grad()
    def __init__(self, model, items: Tensor | None = None, *, precision: str = "fp32",
                 user_block: int | None = None, item_block: int | None = None, threads: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.model, self.dtype = model, PRECISIONS[precision]
        device = model.predict.weight.device
        if items is None:
            items = torch.arange(model.item_embedding.num_embeddings, device=device)
        self.num_items = len(items)
        self.w_gmf, self.w_mlp, self.bias = (None if t is None else t.detach() for t in predict_split(model))
        mf_i, first_i = model.item_parts(items.to(device))  # once per item, reused by every user block
        self.gmf_items = None if mf_i is None else mf_i.t().contiguous()  # [f, I]
        # [h1 + 1, I]: a last row of zeros, against user_side's ones, gives the tower's row of ones
        self.first_items_t = None if first_i is None else torch.cat([first_i.t(), first_i.new_zeros(1, self.num_items)])
        self.tower, self.w_out = ([], None) if first_i is None else tower_columns(model, self.dtype)
        width = 0 if first_i is None else first_i.shape[1]
        tile, ib = block_sizes(max(width, 1), self.num_items, torch.finfo(self.dtype).bits // 8)
        self.threads = 1 if device.type != "cpu" else threads or torch.get_num_threads()
        self.item_block = item_block or ib
        self.user_block = user_block or tile * self.threads * TILES_PER_WORKER
        self.user_tile = max(1, min(tile, -(-self.user_block // self.threads)))

    @torch.no_grad()
    def user_side(self, user, **user_kw) -> tuple[Tensor | None, Tensor | None]:
        """(``h_gmf ⊙ p_u`` ``[U, f]``, the first layer's user half with its bias and a last
        column of ones ``[U, h1 + 1]``)."""
        mf_u, first_u = self.model.user_parts(user, **user_kw)
        if first_u is not None:
            first_u = torch.cat([first_u, first_u.new_ones(first_u.shape[0], 1)], 1)
        return (None if mf_u is None else mf_u * self.w_gmf), first_u

    def _tower_columns(self, first_u: Tensor, sl: slice) -> Tensor:
        """``[U * len(sl)]``: the tower term of users (``user_side``) x items ``sl``, user-major."""
        users, n = first_u.shape[0], sl.stop - sl.start
        x = torch.empty(first_u.shape[1], users, n, dtype=self.dtype, device=first_u.device)
        add_relu(first_u.t()[:, :, None], self.first_items_t[:, None, sl], out=x)
        return run_tower(x.view(x.shape[0], -1), self.tower, self.w_out)

    @torch.no_grad()
    def item_block_scores(self, gmf_u: Tensor | None, first_u: Tensor | None, sl: slice) -> Tensor:
        """``[U, len(sl)]`` fp32 logits of users (their ``user_side``) against items ``sl``."""
        out = None
        if gmf_u is not None:
            out = torch.addmm(self.bias.expand(1, 1), gmf_u, self.gmf_items[:, sl])
        if first_u is not None:
            mlp = self._tower_columns(first_u, sl).view(first_u.shape[0], -1).float()
            out = mlp + self.bias if out is None else out.add_(mlp)
        return out

    def _rows(self, gmf_u: Tensor | None, first_u: Tensor | None, rows: slice) -> Tensor:
        """``[len(rows), I]`` logits of the users ``rows`` of a ``user_side``."""
        gmf_u = None if gmf_u is None else gmf_u[rows]
        first_u = None if first_u is None else first_u[rows]
        return torch.cat([self.item_block_scores(gmf_u, first_u, sl)
                          for sl in _chunks(self.num_items, self.item_block)], dim=1)

    def _map(self, fn: Callable[[slice], object], num_users: int) -> list:
        """``fn`` over the user tiles of ``range(num_users)``, in order, on ``threads`` workers.

        Each worker runs torch ops on one thread (``torch.set_num_threads(1)`` for the call, put
        back after): a tile's ops are small enough that splitting each across cores costs more
        in OpenMP's fork and join (and, with another process on a core, its spinning barrier)
        than it gains, while tiles are independent.  Rows never change tile, so the scores are
        those of one thread."""
        tiles = list(_chunks(num_users, self.user_tile)) or [slice(0, 0)]

        def run(rows):
            with torch.no_grad():  # grad mode is per thread
                return fn(rows)

        workers = min(self.threads, len(tiles))
        if workers == 1:
            return [run(rows) for rows in tiles]
        previous = torch.get_num_threads()
        torch.set_num_threads(1)  # new threads take it as theirs when they first run an op
        try:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(run, tiles))
        finally:
            torch.set_num_threads(previous)

    @torch.no_grad()
    def scores(self, user, **user_kw) -> Tensor:
        """``[U, I]`` logits of ``user`` (as ``forward`` takes it) against every candidate item."""
        gmf_u, first_u = self.user_side(user, **user_kw)
        num_users = (gmf_u if gmf_u is not None else first_u).shape[0]
        return torch.cat(self._map(lambda rows: self._rows(gmf_u, first_u, rows), num_users))

    @torch.no_grad()
    def top_k(self, user, k: int, exclude: Callable[[slice], Tensor] | None = None, **user_kw) -> tuple[Tensor, Tensor]:
        """(scores, item positions) ``[U, k]`` of each user's best ``k`` candidates, best first.
        ``exclude(sl)`` gives a bool ``[U, len(sl)]`` of pairs to leave out (score ``-inf``); a
        user with fewer than ``k`` candidates left has ``-inf`` in its last columns."""
        k = min(k, self.num_items)
        gmf_u, first_u = self.user_side(user, **user_kw)
        num_users = (gmf_u if gmf_u is not None else first_u).shape[0]
        excluded = None if exclude is None else exclude(slice(0, self.num_items))

        def tile(rows):  # a tile's whole row of scores ([user_tile, I]), then one topk
            s = self._rows(gmf_u, first_u, rows)
            if excluded is not None:
                s.masked_fill_(excluded[rows], float("-inf"))
            return s.topk(k, dim=1)

        tops = self._map(tile, num_users)
        return torch.cat([t.values for t in tops]), torch.cat([t.indices for t in tops])


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def user_blocks(n: int, size: int) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size``: the user blocks."""
    return _chunks(n, size)

