"""Data-parallel evaluation's bookkeeping (orchestrator/evaluation/sharding.py): shares cover every example once, in
order, and joined results are what one process computes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from orchestrator.evaluation.sharding import ExampleShards, join, sharded


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (7, 3), (3, 3)])
def test_shares_are_contiguous_and_cover_every_example_once(n, world):
    shares = [ExampleShards(rank, world).share(n) for rank in range(world)]
    covered = [i for s in shares for i in range(n)[s]]
    assert covered == list(range(n))
    assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1


@dataclass
class Scores:
    values: np.ndarray
    texts: list[str]


def test_join_concatenates_field_by_field_in_rank_order():
    parts = [Scores(np.array([1.0, 2.0]), ["a", "b"]), Scores(np.array([3.0]), ["c"])]
    joined = join(parts)
    assert joined.values.tolist() == [1.0, 2.0, 3.0] and joined.texts == ["a", "b", "c"]
    assert join([{"x": np.array([1])}, {"x": np.array([2])}])["x"].tolist() == [1, 2]
    assert join([[[1], [2]], [[3]]]) == [[1], [2], [3]]
    with pytest.raises(TypeError, match="cannot join"):
        join([1.5, 2.5])


def test_one_worker_computes_alone():
    assert sharded(None, lambda xs, ys: [x + y for x, y in zip(xs, ys)], [[1, 2], [10, 20]]) == [11, 22]
    assert sharded(ExampleShards(0, 1), lambda xs: xs, [[1, 2]]) == [1, 2]
