"""A trained run as files a serving stack loads without this package's training code:
``torch.export`` programs of the scoring function and its top-K variant, and the id maps.

    neumf-fast export runs/neumf --out model.pt2        # model.pt2, model.topk.pt2, model.ids.json
    neumf-fast export runs/neumf --out model.pt2 --aot  # and model.aoti.pt2 (AOTInductor, CPU)

The programs take model indices (``model.ids.json`` maps original ids to them: the position of
an id in its list) and hold the user and item halves of the model precomputed as buffers (the
math of ``neumf_fast.scoring``): a request gathers its rows and runs the rest of the tower only.

- ``model.pt2``: ``(users [U] int64, items [C] int64) -> logits [U, C]`` float32.
- ``model.topk.pt2``: ``(users [U], items [C]) -> (logits [U, k], item indices [U, k])``, best
  first, ``C >= k`` (k fixed at export).  Seen items are not excluded: pass only the candidates.

A ``SequenceNeuMF`` run (a user is the history of items they interacted with) takes the history
instead of user indices: ``histories [U, L] int64`` of item indices, any L >= 1, padded with
``history_pad`` from ``model.ids.json`` (the number of items); the history is pooled and
projected in the program, the item side is precomputed as for the other models.

Loading needs only ``torch`` (the graph is plain ATen ops; no custom op of ours).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .scoring import CatalogueScorer, add_relu, run_tower


class HistoryUserSide(nn.Module):
    """A ``SequenceNeuMF``'s user side from an id history, in plain ATen ops (the math of its
    ``user_parts``): ``(h_gmf ⊙ mf_user(pool(h)), W1_u mlp_user(pool(h)) + b1)``."""

    def __init__(self, model, w_gmf: Tensor):
        super().__init__()
        if model.history_embedding is None:
            raise ValueError("export supports SequenceNeuMF with id histories (history_items); dense user features "
                             "are not exported")
        self.pad, self.mean = model.padding_idx, model.mode == "mean"
        w1 = model.tower[0].weight
        for name, value in [("table", model.history_embedding.weight), ("mf_w", model.mf_user.weight),
                            ("mf_b", model.mf_user.bias), ("mlp_w", model.mlp_user.weight),
                            ("mlp_b", model.mlp_user.bias), ("first_w", w1[:, :model.dim]),
                            ("first_b", model.tower[0].bias), ("w_gmf", w_gmf)]:
            self.register_buffer(name, value.detach().clone().contiguous())

    def forward(self, history: Tensor) -> tuple[Tensor, Tensor]:
        keep = history != self.pad
        pooled = self.table[history].masked_fill(~keep[..., None], 0).sum(dim=1)
        if self.mean:
            pooled = pooled / keep.sum(dim=1, keepdim=True).clamp_min(1).to(pooled.dtype)
        mf = torch.nn.functional.linear(pooled, self.mf_w, self.mf_b) * self.w_gmf
        mlp = torch.nn.functional.linear(pooled, self.mlp_w, self.mlp_b)
        return mf, torch.nn.functional.linear(mlp, self.first_w, self.first_b)


class CatalogueScores(nn.Module):
    """Logits of users against candidate items from precomputed user and item halves (for a
    ``SequenceNeuMF``, the user half is computed from the history: ``HistoryUserSide``), with
    the tower of ``neumf_fast.scoring`` (``run_tower``).  Tables are gathered by rows with
    ``index_select`` (``table[indices]`` is ATen's general ``index``, 40% of a one-user request
    against the ML-1M catalogue; a gather along dim 1 is twice as slow as along dim 0).

    ``columns``: the tower on pairs as columns, the first layer's add turning the item rows into
    columns (the ``torch.export`` program: 1.2x ``score`` for one user against the catalogue, the
    rows form 1.05x), or on pairs as rows (the AOTInductor package: Inductor fuses the gather,
    add and relu of rows and ran them 3.4x ``score``, the columns form 2.0x)."""

    def __init__(self, model, k: int | None = None, *, columns: bool = True):
        super().__init__()
        from .models import SequenceNeuMF

        empty = torch.zeros(0)
        self.k, self.columns = k, columns
        self.history = None
        with torch.no_grad():
            scorer = CatalogueScorer(model.eval())
            if isinstance(model, SequenceNeuMF):
                self.history = HistoryUserSide(model, scorer.w_gmf)
                gmf_u = first_u = empty
            else:
                users = torch.arange(model.user_embedding.num_embeddings, device=model.predict.weight.device)
                gmf_u, first_u = scorer.user_side(users)
        self.has_gmf, self.has_tower = scorer.gmf_items is not None, scorer.first_items_t is not None
        buffers = {"gmf_user": gmf_u if self.has_gmf else empty,                 # h_gmf ⊙ p_u [U, f]
                   "gmf_item": scorer.gmf_items.t() if self.has_gmf else empty,   # q_i [I, f]
                   "first_user": first_u if self.has_tower else empty,            # [W1_u u + b1, 1] [U, h1 + 1]
                   "first_item": scorer.first_items_t.t() if self.has_tower else empty,  # [W1_i i, 0] [I, h1 + 1]
                   "w_out": scorer.w_out if self.has_tower else empty, "bias": scorer.bias.reshape(1)}
        buffers.update({f"tower_{i}": w for i, w in enumerate(scorer.tower)})
        self.num_layers = len(scorer.tower)
        for name, value in buffers.items():
            self.register_buffer(name, value.detach().clone().contiguous())

    def forward(self, users: Tensor, items: Tensor):
        """``users``: user indices ``[U]``, or histories ``[U, L]`` for a ``SequenceNeuMF``."""
        if self.history is not None:
            gmf_u, first_u = self.history(users)
            first_u = torch.cat([first_u, torch.ones_like(first_u[:, :1])], 1)
        else:
            gmf_u = self.gmf_user.index_select(0, users) if self.has_gmf else None
            first_u = self.first_user.index_select(0, users) if self.has_tower else None
        out = self.bias.expand(users.shape[0], items.shape[0])
        if self.has_gmf:
            out = torch.addmm(self.bias, gmf_u, self.gmf_item.index_select(0, items).t())
        if self.has_tower:
            first_i = self.first_item.index_select(0, items)  # [C, h1 + 1]
            if self.columns:
                x = add_relu(first_u.t()[:, :, None], first_i.t()[:, None, :]).reshape(first_i.shape[1], -1)
            else:
                x = torch.relu(first_u[:, None, :] + first_i[None, :, :]).view(-1, first_i.shape[1])
            layers = [getattr(self, f"tower_{i}") for i in range(self.num_layers)]
            out = out + run_tower(x, layers, self.w_out, self.columns).view(users.shape[0], -1)
        if self.k is None:
            return out
        top = out.topk(self.k, dim=1)
        return top.values, items[top.indices]


def _export(module: CatalogueScores, min_candidates: int):
    items = torch.arange(max(min_candidates, 4))
    # max=None: any batch; min_candidates: topk needs at least k columns
    dims = {"users": {0: torch.export.Dim("users", min=1)},
            "items": {0: torch.export.Dim("candidates", min=max(1, min_candidates))}}
    if module.history is not None:  # example histories: three users, five positions, one all padding
        users = torch.arange(15).reshape(3, 5) % module.history.pad
        users[2] = module.history.pad
        dims["users"][1] = torch.export.Dim("history", min=1)
    else:
        users = torch.arange(min(3, module.first_user.shape[0] or module.gmf_user.shape[0]))
    return torch.export.export(module, (users, items), dynamic_shapes=dims)


def sibling(out: Path, kind: str) -> Path:
    """``model.pt2`` -> ``model.{kind}.pt2`` (or ``model.ids.json``)."""
    stem = out.name[:-len(".pt2")] if out.name.endswith(".pt2") else out.name
    return out.with_name(f"{stem}.{kind}")


def _save(program, path: Path) -> None:
    """``torch.export.save`` into a file opened here: a path that cannot be written is an
    ``OSError`` naming it and the reason, not the zip writer's ``RuntimeError: [enforce fail ...]``."""
    with open(path, "wb") as f:
        torch.export.save(program, f)


def export_run(run, out: str | Path, *, k: int = 10, aot: bool = False) -> dict[str, Path]:
    """Writes the programs and id maps of ``run`` (a ``neumf_fast.runs.Run``); returns their paths."""
    from .models import SequenceNeuMF

    out = Path(out)
    k = min(k, run.split.num_items)
    model = run.model.float().cpu().eval()
    paths = {"score": out, "top_k": sibling(out, "topk.pt2"), "ids": sibling(out, "ids.json")}
    score_program = _export(CatalogueScores(model), 1)
    _save(score_program, paths["score"])
    _save(_export(CatalogueScores(model, k), k), paths["top_k"])
    ids = {"users": run.user_ids.tolist(), "items": run.item_ids.tolist(), "k": k}
    if isinstance(model, SequenceNeuMF):  # the programs take histories of item indices, not users
        ids["history_pad"] = model.padding_idx
    paths["ids"].write_text(json.dumps(ids))
    if aot:
        paths["aoti"] = sibling(out, "aoti.pt2")
        # the rows form: faster compiled, and free of aten._add_relu, which AOTInductor's proxy
        # executor cannot run
        rows = _export(CatalogueScores(model, columns=False), 1)
        torch._inductor.aoti_compile_and_package(rows, package_path=str(paths["aoti"]))
    return paths
