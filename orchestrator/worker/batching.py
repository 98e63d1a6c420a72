"""Batches in the methods' layout, sharded across Ray Train workers.

Each step pairs a batch of forget rows with a batch of retain rows drawn at random (open-unlearning's
ForgetRetainDataset does the same), and with the rows aligned to the forget rows (`alternate`: the same question with
an "I don't know" answer; `analogous`: ICU's nearest retained neighbour). The forget set is split evenly over the
workers, padded by wrapping as torch's DistributedSampler does, so every worker takes the same number of steps.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Iterator

import torch.distributed as dist

from methods import Batch
from methods.numerics import batch_counts, with_denominators
from orchestrator.data.tokenize import EncodedRow, collate


# Each part's rows are numbered from its own base, so that a row's `index` names one example across every part of a
# run: the methods' reference cache is keyed by it, and ICU's refinement keeps forget rows by it.
ROW_ID_BASE = {"forget": 0, "retain": 1_000_000, "analogous": 2_000_000, "holdout": 3_000_000,
               "early_stop": 4_000_000}


@dataclass
class UnlearningRows:
    """Tokenised rows of every batch part; `alternate[i]` and `analogous[i]` belong to `forget[i]`."""

    forget: list[EncodedRow]
    retain: list[EncodedRow] = field(default_factory=list)
    alternate: list[EncodedRow] = field(default_factory=list)
    analogous: list[EncodedRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("alternate", "analogous"):
            part = getattr(self, name)
            if part and len(part) != len(self.forget):
                raise ValueError(f"{name} rows ({len(part)}) must align with forget rows ({len(self.forget)})")

    def keep(self, forget_indices: set[int]) -> "UnlearningRows":
        """The rows whose forget `index` is in `forget_indices` (ICU's refined forget set)."""
        positions = [i for i, row in enumerate(self.forget) if row.index in forget_indices]
        return UnlearningRows(
            forget=[self.forget[i] for i in positions],
            retain=self.retain,
            alternate=[self.alternate[i] for i in positions] if self.alternate else [],
            analogous=[self.analogous[i] for i in positions] if self.analogous else [],
        )


class UnlearningBatches:
    """Per-epoch batch iterator for one worker."""

    def __init__(
        self,
        rows: UnlearningRows,
        batch_size: int,
        pad_token_id: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        parts: tuple[str, ...] = ("forget",),
    ) -> None:
        if not rows.forget:
            raise ValueError("the forget set is empty")
        missing = [p for p in parts if not getattr(rows, p)]
        if missing:
            raise ValueError(f"the method needs batch parts {missing} but no rows were prepared for them")
        self.rows = rows
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.parts = parts

    @property
    def per_worker(self) -> int:
        return math.ceil(len(self.rows.forget) / self.world_size)

    def steps_per_epoch(self) -> int:
        return math.ceil(self.per_worker / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Batches of epoch `epoch`: the same global shuffle on every worker, each taking its own shard."""
        order = list(range(len(self.rows.forget)))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        padded = (order * math.ceil(self.per_worker * self.world_size / len(order)))[: self.per_worker * self.world_size]
        shard = padded[self.rank :: self.world_size]
        retain_rng = random.Random((self.seed * 100_003 + epoch) * 1_009 + self.rank)
        for start in range(0, len(shard), self.batch_size):
            positions = shard[start : start + self.batch_size]
            batch: Batch = {"forget": collate([self.rows.forget[i] for i in positions], self.pad_token_id)}
            if "retain" in self.parts:
                picks = [retain_rng.randrange(len(self.rows.retain)) for _ in positions]
                batch["retain"] = collate([self.rows.retain[i] for i in picks], self.pad_token_id)
            for aligned in ("alternate", "analogous"):
                if aligned in self.parts:
                    batch[aligned] = collate([getattr(self.rows, aligned)[i] for i in positions], self.pad_token_id)
            yield batch


def with_global_denominators(batch: Batch, world_size: int) -> Batch:
    """`batch` (this worker's, on its device) with the global batch's per-worker denominators in every part.

    One all-reduce of every part's (labelled tokens, rows) counts; the methods then divide their sums by
    `global count / world_size` (methods/numerics.py), so that the engine's average of the workers' gradients, and the
    loop's average of their logged values, are those of the global batch however its rows and tokens are split.
    Every worker must call it at every step (a collective when world_size > 1).
    """
    counts = batch_counts(batch)
    if world_size > 1:
        dist.all_reduce(counts)
    return with_denominators(batch, counts, world_size)
