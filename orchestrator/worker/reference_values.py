"""The reference model's values, computed once per run before training; then the reference model goes.

NPO, DPO, SimNPO-style and distillation losses compare the model with the frozen model before unlearning, per
example (`UnlearningMethod.reference_values`). Computed inside the loss, they cost a second forward at every step
whose rows are not cached yet; with shards reshuffled every epoch, and random retain rows, a worker's cache rarely
hits, and under ZeRO-3 a hit needed every worker to hit at once. Here every row any worker will draw in the run
(the batch schedule is deterministic from the seed, so every worker can list every worker's rows) is computed once,
before the first step: the rows are split evenly over the workers, each computes its share, the shares are
exchanged in rounds of one batch each (so the exchange never holds more than a batch per worker), and each worker
keeps the rows its own schedule draws. The method then releases the reference model, so that no second copy of the
weights stays resident through training; the loss's lookups all hit.

Methods that read the reference beyond these values (ICU's generations, RMU's activations: `keeps_reference`) keep a
frozen copy instead (`frozen_copy`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from methods import UnlearningMethod
from methods.base import ReferenceCache, ReferenceValue
from orchestrator.data.tokenize import EncodedRow, collate
from orchestrator.worker.batching import UnlearningBatches
from orchestrator.worker.ranks import gather

ToDevice = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass
class ReferenceStats:
    """What the run's reference values cost and how well the cache served the training steps (summary.json)."""

    precomputed_rows: int = 0  # rows computed before training, over every worker (each row once)
    held_rows: int = 0  # rows this worker kept (its own schedule's)
    seconds: float = 0.0
    released: bool = False  # the reference model was dropped after the values were computed

    def with_lookups(self, cache: ReferenceCache) -> dict[str, float | int | bool]:
        lookups = cache.hits + cache.misses
        return {**asdict(self), "hits": cache.hits, "misses": cache.misses,
                "hit_rate": round(cache.hits / lookups, 6) if lookups else None}


def scheduled_rows(batches: UnlearningBatches, epochs: int) -> list[dict[str, set[int]]]:
    """For each worker, the row indices of each batch part it draws over `epochs` epochs."""
    out = []
    for rank in range(batches.world_size):
        schedule = copy.copy(batches)
        schedule.rank = rank
        drawn: dict[str, set[int]] = {part: set() for part in batches.parts}
        for epoch in range(epochs):
            for batch in schedule.epoch(epoch):
                for part, tensors in batch.items():
                    drawn[part].update(int(i) for i in tensors["index"].tolist())
        out.append(drawn)
    return out


def precompute_reference(method: UnlearningMethod, batches: UnlearningBatches, epochs: int, to_device: ToDevice,
                         rank: int) -> ReferenceStats:
    """Fill `method`'s reference cache with every value this worker's steps will look up, then release the
    reference model. Every worker must call it (the shares are exchanged)."""
    started = time.perf_counter()
    world_size = batches.world_size
    drawn = scheduled_rows(batches, epochs)
    stats = ReferenceStats()
    for value in method.reference_values:
        rows = _rows_by_index(batches, value.part)
        everyone = sorted(set().union(*(d[value.part] for d in drawn)))
        mine = drawn[rank][value.part]
        share = everyone[rank::world_size]
        per_worker = math.ceil(len(everyone) / world_size)
        share += everyone[:per_worker - len(share)]  # equal rounds on every worker (a short share repeats rows)
        stats.precomputed_rows += len(everyone)
        for start in range(0, per_worker, batches.batch_size):
            computed = _compute(method, value, [rows[i] for i in share[start:start + batches.batch_size]],
                                batches.pad_token_id, to_device)
            for entries in gather(computed, world_size):
                method.reference_cache.add(value, [(i, t) for i, t in entries if i in mine])
        stats.held_rows += sum(method.reference_cache.has(value, i) for i in mine)
    method.release_reference()
    stats.released = True
    stats.seconds = round(time.perf_counter() - started, 4)
    return stats


def settle_reference(method: UnlearningMethod, model: torch.nn.Module, batches: UnlearningBatches, epochs: int,
                     to_device: ToDevice, rank: int, deepspeed_config: dict | None) -> ReferenceStats:
    """Before the first step, with `model` (not yet trained) as `method`'s reference: compute and cache what the
    method reads of it and release it, or, for a method that keeps its reference, give it a frozen copy (an
    eval-only ZeRO-3 engine under `train.deepspeed` stage 3). Every worker must call it."""
    if method.reference is None:
        return ReferenceStats()
    if method.releases_reference:
        return precompute_reference(method, batches, epochs, to_device, rank)
    reference = frozen_copy(model)
    if deepspeed_config is not None:
        from orchestrator.worker.deepspeed_engine import sharded_reference

        reference = sharded_reference(reference, deepspeed_config)
    method.replace_reference(reference)
    return ReferenceStats()


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of `model` as the reference of a method that keeps it (`UnlearningMethod.keeps_reference`)."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def _rows_by_index(batches: UnlearningBatches, part: str) -> dict[int, EncodedRow]:
    return {row.index: row for row in getattr(batches.rows, part)}


def _compute(method: UnlearningMethod, value: ReferenceValue, rows: list[EncodedRow], pad_token_id: int,
             to_device: ToDevice) -> list[tuple[int, torch.Tensor]]:
    """`value` for `rows` from the reference forward, as (index, cached tensor) pairs on the CPU."""
    if not rows:
        return []
    scratch = ReferenceCache()
    with torch.no_grad():
        scratch.lookup(value, to_device(collate(rows, pad_token_id)), method.reference_logits)
    return scratch.entries(value, [row.index for row in rows])
