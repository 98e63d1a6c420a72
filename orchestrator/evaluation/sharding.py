"""Data-parallel evaluation: each worker scores and generates its share of the examples, and every worker then
holds every example's result, in order.

The per-example passes (answer likelihoods, alternative likelihoods, greedy generations, gradient norms) are where
an evaluation's time goes; the metrics derived from them (means, AUCs, the KS test, ROUGE) need every example at
once, so the results are gathered and every rank derives the same metrics from the same full lists. Shares are
contiguous runs of the examples, so that a batch holds neighbouring examples on N workers as on one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class ExampleShards:
    """This worker's place among `world_size` workers evaluating one model together."""

    rank: int
    world_size: int
    evaluated: int = field(default=0)  # examples this worker ran a per-example pass on (counted, for the summary)

    def share(self, n: int) -> slice:
        """This worker's contiguous share of `n` items (the first `n % world_size` workers take one more)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def run(self, compute: Callable[..., Any], aligned: Sequence[Sequence[Any]], **kwargs: Any) -> Any:
        """`compute(*aligned, **kwargs)` on every sequence of `aligned` cut to this worker's share, the workers'
        results gathered and joined in order: what `compute` on the whole sequences returns."""
        n = len(aligned[0])
        if n < self.world_size:  # a share would be empty: every worker computes the few examples itself
            self.evaluated += n
            return compute(*aligned, **kwargs)
        mine = self.share(n)
        self.evaluated += mine.stop - mine.start
        local = compute(*(list(seq)[mine] for seq in aligned), **kwargs)
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, local)
        return join(gathered)


def join(parts: list[Any]) -> Any:
    """Concatenate per-example results in order: lists, numpy arrays, dicts and dataclasses of them field by field."""
    first = parts[0]
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return type(first)(**{f.name: join([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(first)})
    if isinstance(first, dict):
        return {key: join([p[key] for p in parts]) for key in first}
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, (list, tuple)):
        return type(first)(item for part in parts for item in part)
    raise TypeError(f"cannot join per-example results of type {type(first).__name__}")


def sharded(shards: ExampleShards | None, compute: Callable[..., Any], aligned: Sequence[Sequence[Any]],
            **kwargs: Any) -> Any:
    """`compute` over `aligned` on this worker alone (no shards) or shared among the workers."""
    if shards is None or shards.world_size == 1:
        return compute(*aligned, **kwargs)
    return shards.run(compute, aligned, **kwargs)
