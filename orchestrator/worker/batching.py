"""Batches in the methods' layout, sharded across Ray Train workers.

Each step pairs a batch of forget rows with a batch of retain rows drawn at random (open-unlearning's
ForgetRetainDataset does the same), and with the rows aligned to the forget rows (`alternate`: the same question with
an "I don't know" answer; `analogous`: ICU's nearest retained neighbour). The forget set is split evenly over the
workers, padded by wrapping as torch's DistributedSampler does, so every worker takes the same number of steps.

`group_by_length` batches forget rows of similar length together, as HF's LengthGroupedSampler does: the epoch's
shuffled order is cut into megabatches of `MEGABATCH_STEPS` global steps, each sorted by length, and the steps are
shuffled, so that a batch pads to a length close to each of its rows' own and the steps' lengths stay random.
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
MEGABATCH_STEPS = 50  # global steps per length-sorted megabatch (HF's LengthGroupedSampler's multiplier)


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
        group_by_length: bool = False,
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
        self.group_by_length = group_by_length

    @property
    def per_worker(self) -> int:
        return math.ceil(len(self.rows.forget) / self.world_size)

    def steps_per_epoch(self) -> int:
        return math.ceil(self.per_worker / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Batches of epoch `epoch`: the same global shuffle on every worker, each taking its own shard."""
        order_rng = random.Random(self.seed * 100_003 + epoch)
        order = list(range(len(self.rows.forget)))
        order_rng.shuffle(order)
        padded = (order * math.ceil(self.per_worker * self.world_size / len(order)))[: self.per_worker * self.world_size]
        if self.group_by_length:
            steps = self._length_grouped(padded, order_rng)
        else:
            shard = padded[self.rank :: self.world_size]
            steps = [shard[start : start + self.batch_size] for start in range(0, len(shard), self.batch_size)]
        retain_rng = random.Random((self.seed * 100_003 + epoch) * 1_009 + self.rank)
        for positions in steps:
            batch: Batch = {"forget": collate([self.rows.forget[i] for i in positions], self.pad_token_id)}
            if "retain" in self.parts:
                picks = [retain_rng.randrange(len(self.rows.retain)) for _ in positions]
                batch["retain"] = collate([self.rows.retain[i] for i in picks], self.pad_token_id)
            for aligned in ("alternate", "analogous"):
                if aligned in self.parts:
                    batch[aligned] = collate([getattr(self.rows, aligned)[i] for i in positions], self.pad_token_id)
            yield batch

    def _length_grouped(self, padded: list[int], rng: random.Random) -> list[list[int]]:
        """This worker's batches (forget positions) from the epoch's `padded` order, grouped by length.

        `padded` is cut into global steps of `batch_size * world_size` rows (the last may be shorter, by the same
        number of rows on every worker), in megabatches of `MEGABATCH_STEPS` steps, each sorted by its rows' length
        (longest first; a stable sort, so ties keep the shuffled order). The full steps are then shuffled with `rng`
        (the same on every worker) and the short one stays last, as without grouping. Each worker takes its own
        contiguous slice of every step, so that its batch spans the narrowest range of lengths; the slices are
        disjoint and together cover `padded`, so every row is seen once per epoch (up to the wrap padding).
        """
        lengths = [len(row.input_ids) for row in self.rows.forget]
        step_rows = self.batch_size * self.world_size
        megabatch = step_rows * MEGABATCH_STEPS
        grouped: list[int] = []
        for start in range(0, len(padded), megabatch):
            grouped += sorted(padded[start : start + megabatch], key=lambda i: -lengths[i])
        steps = [grouped[start : start + step_rows] for start in range(0, len(grouped), step_rows)]
        full = [s for s in steps if len(s) == step_rows]
        rng.shuffle(full)
        steps = full + steps[len(full) :]
        share = [len(s) // self.world_size for s in steps]
        return [s[self.rank * n : (self.rank + 1) * n] for s, n in zip(steps, share)]


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
