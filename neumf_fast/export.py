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

Loading needs only ``torch`` (the graph is plain ATen ops; no custom op of ours).  GMF, MLP and
NeuMF runs are exported; ``SequenceNeuMF`` (a history as the user) is not yet.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .scoring import CatalogueScorer


class CatalogueScores(nn.Module):
    """Logits of users against candidate items from precomputed user and item halves."""

    def __init__(self, model, k: int | None = None):
        super().__init__()
        with torch.no_grad():
            scorer = CatalogueScorer(model.eval())
            users = torch.arange(model.user_embedding.num_embeddings, device=model.predict.weight.device)
            gmf_u, first_u = scorer.user_side(users)
        self.k = k
        self.has_gmf, self.has_tower = gmf_u is not None, first_u is not None
        empty = torch.zeros(0)
        self.register_buffer("gmf_user", gmf_u.detach().contiguous() if self.has_gmf else empty)      # h_gmf ⊙ p_u
        self.register_buffer("gmf_item", scorer.gmf_items.t().contiguous() if self.has_gmf else empty)  # q_i
        self.register_buffer("first_user", first_u.detach().contiguous() if self.has_tower else empty)  # W1_u u + b1
        self.register_buffer("first_item", scorer.first_items if self.has_tower else empty)             # W1_i i
        self.tower = nn.ModuleList(nn.Linear(w.shape[1], w.shape[0]) for w, _ in scorer.tower)
        with torch.no_grad():
            for layer, (w, b) in zip(self.tower, scorer.tower):
                layer.weight.copy_(w), layer.bias.copy_(b)
        self.register_buffer("w_out", scorer.w_out.detach().clone() if self.has_tower else empty)
        self.register_buffer("bias", scorer.bias.detach().clone().reshape(1))

    def forward(self, users: Tensor, items: Tensor):
        out = self.bias.expand(users.shape[0], items.shape[0])
        if self.has_gmf:
            out = out + self.gmf_user[users] @ self.gmf_item[items].t()
        if self.has_tower:
            x = torch.relu(self.first_user[users][:, None, :] + self.first_item[items][None, :, :])
            for layer in self.tower:
                x = torch.relu(layer(x))
            out = out + x @ self.w_out
        if self.k is None:
            return out
        top = out.topk(self.k, dim=1)
        return top.values, items[top.indices]


def _export(module: CatalogueScores, min_candidates: int):
    users, items = torch.arange(min(3, module.first_user.shape[0] or module.gmf_user.shape[0])), torch.arange(
        max(min_candidates, 4))
    # max=None: any batch; min_candidates: topk needs at least k columns
    dims = {"users": {0: torch.export.Dim("users", min=1)},
            "items": {0: torch.export.Dim("candidates", min=max(1, min_candidates))}}
    return torch.export.export(module, (users, items), dynamic_shapes=dims)


def sibling(out: Path, kind: str) -> Path:
    """``model.pt2`` -> ``model.{kind}.pt2`` (or ``model.ids.json``)."""
    stem = out.name[:-len(".pt2")] if out.name.endswith(".pt2") else out.name
    return out.with_name(f"{stem}.{kind}")


def export_run(run, out: str | Path, *, k: int = 10, aot: bool = False) -> dict[str, Path]:
    """Writes the programs and id maps of ``run`` (a ``neumf_fast.runs.Run``); returns their paths."""
    from .models import SequenceNeuMF

    if isinstance(run.model, SequenceNeuMF):
        raise ValueError("export supports GMF, MLP and NeuMF runs; a SequenceNeuMF run (histories as users) is not "
                         "exported yet")
    out = Path(out)
    k = min(k, run.split.num_items)
    model = run.model.float().cpu().eval()
    paths = {"score": out, "top_k": sibling(out, "topk.pt2"), "ids": sibling(out, "ids.json")}
    score_program = _export(CatalogueScores(model), 1)
    torch.export.save(score_program, paths["score"])
    torch.export.save(_export(CatalogueScores(model, k), k), paths["top_k"])
    ids = {"users": run.user_ids.tolist(), "items": run.item_ids.tolist(), "k": k}
    paths["ids"].write_text(json.dumps(ids))
    if aot:
        paths["aoti"] = sibling(out, "aoti.pt2")
        torch._inductor.aoti_compile_and_package(score_program, package_path=str(paths["aoti"]))
    return paths
