"""A built-in synthetic implicit-feedback dataset shaped like MovieLens-1M, so the main job runs
with no download.

Generative model (deterministic given ``seed``):
- each user has a low-rank taste vector ``u`` and each item a vector ``v`` (rank ``rank``);
- items have a long-tailed popularity ``pop_i = -popularity · log(1 + r_i)`` for a random
  popularity rank ``r_i`` (a Zipf-like head and tail);
- user ``u`` interacts with ``n_u`` distinct items drawn without replacement with probability
  proportional to ``exp(taste · u·v/√rank + pop_i)`` (the Gumbel top-k trick), where ``n_u``
  follows a log-normal like ML-1M's (at least 20 per user, about 1M in all);
- timestamps are a per-user random walk over about three years, in a random order of the user's
  items, so the held-out (latest) item is a fresh draw from the same preferences.

Ranking by popularity alone therefore gets part of the way, and a model that learns the low-rank
tastes does clearly better.
"""

from __future__ import annotations

import numpy as np

from .interactions import Interactions

ML1M_USERS, ML1M_ITEMS, ML1M_INTERACTIONS = 6040, 3706, 1_000_209


def synthetic(
    seed: int = 0,
    num_users: int = ML1M_USERS,
    num_items: int = ML1M_ITEMS,
    num_interactions: int = ML1M_INTERACTIONS,
    *,
    rank: int = 16,
    taste: float = 2.0,
    popularity: float = 0.9,
    min_per_user: int = 20,
    device=None,
) -> Interactions:
    """The synthetic dataset; about ``num_interactions`` positives (exact count depends on clipping).

    ``device`` (e.g. ``"cuda"``) draws the per-user item samples with torch on that device
    (Gumbel noise from a torch generator, top-k instead of a full sort), which is what makes the
    ML-20M-sized set practical to generate.  It is deterministic too, but a different dataset
    from the default numpy path for the same seed.
    """
    rng = np.random.default_rng(seed)
    min_per_user = min(min_per_user, num_items)
    # ML-1M's per-user counts are roughly log-normal (median ~96, mean ~166, min 20)
    raw = rng.lognormal(mean=0.0, sigma=0.9, size=num_users)
    counts = np.clip(np.round(raw * num_interactions / raw.sum()), min_per_user, max(min_per_user, num_items // 2)).astype(np.int64)
    user_vec = rng.standard_normal((num_users, rank), dtype=np.float32)
    item_vec = rng.standard_normal((num_items, rank), dtype=np.float32)
    pop = (-popularity * np.log1p(rng.permutation(num_items))).astype(np.float32)
    users, items = [], []
    chunk = max(1, (1 << 24) // num_items)
    if device is not None:
        import torch

        gen = torch.Generator(device=device).manual_seed(seed)
        u_vec, i_vec = torch.from_numpy(user_vec).to(device), torch.from_numpy(item_vec).to(device)
        pop_t = torch.from_numpy(pop).to(device)
    for start in range(0, num_users, chunk):
        stop = min(num_users, start + chunk)
        k = int(counts[start:stop].max())
        if device is None:
            logits = taste * (user_vec[start:stop] @ item_vec.T) / np.sqrt(rank) + pop
            gumbel = -np.log(-np.log(rng.random(logits.shape, dtype=np.float32) + 1e-20) + 1e-20)
            order = np.argsort(-(logits + gumbel), axis=1)[:, :k]
        else:
            logits = taste * (u_vec[start:stop] @ i_vec.T) / float(np.sqrt(rank)) + pop_t
            noise = torch.rand(logits.shape, generator=gen, device=device)
            gumbel = -torch.log(-torch.log(noise + 1e-20) + 1e-20)
            order = (logits + gumbel).topk(k, dim=1).indices.cpu().numpy()
        take = np.arange(k)[None, :] < counts[start:stop, None]  # row u keeps its first counts[u] draws
        users.append(np.repeat(np.arange(start, stop, dtype=np.int64), counts[start:stop]))
        items.append(order[take].astype(np.int64))
    user = np.concatenate(users)
    item = np.concatenate(items)
    # per-user timestamps: a start within ~3 years, then exponential gaps, in a random order
    start_time = 956_703_932 + rng.integers(0, 3 * 365 * 86400, num_users)
    gaps = rng.exponential(3600.0, len(user)).astype(np.int64) + 1
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    csum = np.cumsum(gaps)
    within = csum - np.repeat(csum[offsets] - gaps[offsets], counts)
    perm = np.argsort(rng.random(len(user)) + np.repeat(np.arange(num_users), counts))  # shuffle within user
    timestamp = np.repeat(start_time, counts) + within[perm]
    return Interactions(user, item, timestamp.astype(np.int64), np.arange(num_users, dtype=np.int64),
                        np.arange(num_items, dtype=np.int64), name=f"synthetic(seed={seed})")
