"""The models: backend parity, state_dict portability, scoring = forward, pretraining, init."""

from __future__ import annotations

import pytest
import torch

from neumf_fast import models
from neumf_fast.models import GMF, MLP, NeuMF, SequenceNeuMF

from conftest import KERNELS, describe_diff

NUM_USERS, NUM_ITEMS = 37, 53


def _build(name: str, backend: str):
    torch.manual_seed(0)
    if name == "gmf":
        return GMF(NUM_USERS, NUM_ITEMS, 8, backend=backend)
    if name == "mlp":
        return MLP(NUM_USERS, NUM_ITEMS, (16, 8, 4), backend=backend)
    if name == "neumf":
        return NeuMF(NUM_USERS, NUM_ITEMS, 8, (16, 8, 4), backend=backend)
    if name == "seq_ids":
        return SequenceNeuMF(NUM_ITEMS, 8, history_items=NUM_ITEMS, backend=backend)
    return SequenceNeuMF(NUM_ITEMS, 8, user_dim=5, backend=backend)


def _user(name: str, batch: int, g: torch.Generator):
    if name == "seq_ids":  # histories with padding (id NUM_ITEMS), one all-padding row
        hist = torch.randint(0, NUM_ITEMS + 1, (batch, 6), generator=g)
        hist[0] = NUM_ITEMS
        return hist, {}
    if name == "seq_dense":
        mask = torch.rand(batch, 6, generator=g) > 0.3
        mask[0] = False
        return torch.randn(batch, 6, 5, generator=g), {"user_mask": mask}
    return torch.randint(0, NUM_USERS, (batch,), generator=g), {}


MODEL_NAMES = ["gmf", "mlp", "neumf", "seq_ids", "seq_dense"]


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("batch", [1, 37])
def test_backend_parity_forward_backward(name, backend, batch):
    # fp32 on both sides, same parameters: the op's own fp32 tolerance (tests/test_parity.py)
    # carried through at most four small layers.
    g = torch.Generator().manual_seed(1)
    user, kw = _user(name, batch, g)
    item = torch.randint(0, NUM_ITEMS, (batch,), generator=g)
    results = {}
    for b in ("torch", backend):
        model = _build(name, b)
        logits = model(user, item, **kw)
        logits.square().sum().backward()
        results[b] = (logits.detach(), {n: p.grad for n, p in model.named_parameters()})
    ref, ours = results["torch"], results[backend]
    torch.testing.assert_close(ours[0], ref[0], atol=1e-6, rtol=1e-5, msg=lambda m: describe_diff("logits", ours[0], ref[0]) + "\n" + m)
    assert ours[1].keys() == ref[1].keys()
    for n in ref[1]:
        torch.testing.assert_close(ours[1][n], ref[1][n], atol=1e-6, rtol=1e-5, msg=lambda m: f"grad of {n}: {m}")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_is_the_same_on_every_backend(name):
    a, b = _build(name, "torch"), _build(name, "auto")
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    torch.manual_seed(5)
    for p in a.parameters():
        torch.nn.init.normal_(p)
    b.load_state_dict(a.state_dict())
    g = torch.Generator().manual_seed(2)
    user, kw = _user(name, 9, g)
    item = torch.randint(0, NUM_ITEMS, (9,), generator=g)
    torch.testing.assert_close(b(user, item, **kw), a(user, item, **kw), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shared", [False, True], ids=["per_user_candidates", "shared_candidates"])
def test_score_equals_forward(name, shared):
    """score() computes the user side once and splits the first tower layer; it must give the
    same logits as forward() on every (user, candidate) pair (fp32 reassociation: 1e-5)."""
    model = _build(name, "auto")
    torch.manual_seed(3)
    for p in model.parameters():  # away from the tiny paper init, so every term matters
        torch.nn.init.normal_(p, std=0.5)
    g = torch.Generator().manual_seed(4)
    user, kw = _user(name, 5, g)
    cands = torch.randint(0, NUM_ITEMS, (7,) if shared else (5, 7), generator=g)
    scores = model.score(user, cands, **kw)
    assert scores.shape == (5, 7)
    for c in range(7):
        item = cands[c].expand(5) if shared else cands[:, c]
        with torch.no_grad():
            expected = model(user, item, **kw)
        torch.testing.assert_close(scores[:, c], expected, atol=1e-5, rtol=1e-5)


def test_score_rejects_mismatched_candidates():
    model = _build("gmf", "auto")
    with pytest.raises(ValueError, match=r"items must be \[num_candidates\] or \[3, num_candidates\]"):
        model.score(torch.arange(3), torch.zeros(4, 2, dtype=torch.long))


def test_pretrained_neumf_is_the_alpha_mix_of_gmf_and_mlp():
    torch.manual_seed(0)
    gmf, mlp = GMF(NUM_USERS, NUM_ITEMS, 8), MLP(NUM_USERS, NUM_ITEMS, (16, 8, 4))
    for p in [*gmf.parameters(), *mlp.parameters()]:
        torch.nn.init.normal_(p, std=0.3)
    alpha = 0.3
    model = NeuMF.from_pretrained(gmf, mlp, alpha)
    user, item = torch.arange(NUM_USERS), torch.arange(NUM_USERS) % NUM_ITEMS
    with torch.no_grad():
        expected = alpha * gmf(user, item) + (1 - alpha) * mlp(user, item)
        torch.testing.assert_close(model(user, item), expected, atol=1e-5, rtol=1e-5)
    assert model.factors == 8 and model.layers_spec == [16, 8, 4]


def test_pretraining_rejects_mismatched_models():
    with pytest.raises(ValueError, match="different numbers of users or items"):
        NeuMF.from_pretrained(GMF(10, 5), MLP(11, 5))


def test_paper_initialisation():
    torch.manual_seed(0)
    model = NeuMF(2000, 1000, 8, (64, 32, 16, 8))
    std = model.user_embedding.weight.std().item()
    assert abs(std - 0.01) < 0.001, std  # N(0, 0.01)
    w = model.tower[0].weight
    bound = (6 / (w.shape[0] + w.shape[1])) ** 0.5  # Glorot uniform
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert model.tower[0].bias.abs().max() == 0
    p = model.predict.weight
    assert p.abs().max() <= (3 / p.shape[1]) ** 0.5  # LeCun uniform


def test_bad_configurations_raise():
    with pytest.raises(ValueError, match="even first one"):
        MLP(3, 3, (15, 8))
    with pytest.raises(ValueError, match="exactly one of history_items"):
        SequenceNeuMF(5, 4)
    with pytest.raises(ValueError, match="tower_mult"):
        SequenceNeuMF(5, 4, history_items=5, tower_mult=(3, 1))
    with pytest.raises(ValueError, match="padding id, not user_mask"):
        model = SequenceNeuMF(5, 4, history_items=5)
        model(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool))
    assert set(models.MODELS) == {"gmf", "mlp", "neumf", "seq"}


def test_ids_out_of_range_are_an_index_error():
    model = _build("neumf", "auto")
    with pytest.raises(IndexError, match="out of range"):
        model(torch.tensor([NUM_USERS]), torch.tensor([0]))


@pytest.mark.parametrize("name", ["neumf", "seq_ids", "seq_dense"])
def test_autocast_runs_the_low_precision_path_with_fp32_gradients(name):
    """SequenceNeuMF projects inside the op: the kernel's own GEMM must stay fp32 under autocast
    (the C++ kernel once had autocast turn it bf16 and failed with a dtype error)."""
    model = _build(name, "auto")
    g = torch.Generator().manual_seed(0)
    (user, kw), item = _user(name, 9, g), torch.arange(9) % NUM_ITEMS
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(user, item, **kw)
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        torch.testing.assert_close(logits.float(), model(user, item, **kw), atol=2e-2, rtol=2e-2)  # bf16: 8-bit mantissa


def test_sequence_neumf_keeps_its_projections_stacked_and_its_state_dict_as_four_linears():
    """SequenceNeuMF's first stage holds each side's MF and MLP weights stacked, as the fused op
    takes them (no concatenation per call); its checkpoints keep the four nn.Linear entries."""
    torch.manual_seed(0)
    model = SequenceNeuMF(30, 8, history_items=30)
    names = dict(model.named_parameters())
    assert names["user_weight"].shape == (16, 8) and "mf_user.weight" not in names
    state = model.state_dict()
    assert {"mf_user.weight", "mlp_user.bias", "mf_item.weight", "mlp_item.bias"} <= set(state)
    assert "user_weight" not in state
    other = SequenceNeuMF(30, 8, history_items=30)
    other.load_state_dict(state)
    history, items = torch.randint(0, 31, (5, 4)), torch.randint(0, 30, (5,))
    torch.testing.assert_close(other(history, items), model(history, items), atol=0, rtol=0)
    torch.testing.assert_close(model.mlp_user(torch.ones(1, 8)), torch.nn.functional.linear(
        torch.ones(1, 8), state["mlp_user.weight"], state["mlp_user.bias"]))
