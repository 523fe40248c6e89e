"""Providers timed interleaved, block by block, over the same samples: on a VM whose speed drifts
by 30-60% over tens of seconds, providers timed one after the other can land in different
phases; interleaved, each phase slows them alike, so their ratios hold."""

from __future__ import annotations

import math
from time import perf_counter

from neumf_fast.train import train_epoch


def interleaved_epoch(runs: dict, samples, batch_size: int, blocks: int = 40) -> dict[str, float]:
    """Seconds each run (``name: (model, optimizer, TrainStep)``) spent training on ``samples``,
    cut into ``blocks`` blocks of whole batches that the runs take in turn (who goes first
    alternates)."""
    steps = math.ceil(len(samples[0]) / batch_size)
    bounds = [round(k * steps / blocks) * batch_size for k in range(blocks + 1)]
    seconds = dict.fromkeys(runs, 0.0)
    order = list(runs)
    for k in range(blocks):
        block = tuple(t[bounds[k]:bounds[k + 1]] for t in samples)
        for name in (order if k % 2 == 0 else order[::-1]):
            model, optimizer, step = runs[name]
            begin = perf_counter()
            train_epoch(model, optimizer, block, batch_size, step=step)
            seconds[name] += perf_counter() - begin
    return seconds
