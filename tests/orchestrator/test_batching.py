"""Batches: every worker takes the same number of steps, shards cover the forget set, aligned parts stay aligned."""

from __future__ import annotations

import pytest

from methods.numerics import SEQUENCES_PER_WORKER, TOKENS_PER_WORKER
from orchestrator.worker.batching import UnlearningBatches, UnlearningRows, with_global_denominators
from orchestrator.data.tokenize import EncodedRow


def rows(n, offset=0, length=5):
    return [EncodedRow(input_ids=[offset + i] * length, labels=[-100, -100] + [offset + i] * (length - 2), index=offset + i)
            for i in range(n)]


def test_shards_cover_forget_set_and_align():
    data = UnlearningRows(forget=rows(10), retain=rows(30, offset=1000), alternate=rows(10, offset=500))
    seen = []
    for rank in range(2):
        batches = UnlearningBatches(data, batch_size=2, pad_token_id=0, rank=rank, world_size=2, seed=1,
                                    parts=("forget", "retain", "alternate"))
        epoch = list(batches.epoch(0))
        assert len(epoch) == batches.steps_per_epoch() == 3
        for batch in epoch:
            forget = batch["forget"]["index"].tolist()
            assert batch["alternate"]["index"].tolist() == [500 + i for i in forget]
            assert all(r >= 1000 for r in batch["retain"]["index"].tolist())
            seen += forget
    assert set(seen) == set(range(10))


def test_uneven_shards_are_padded_by_wrapping():
    data = UnlearningRows(forget=rows(5))
    counts = [len(list(UnlearningBatches(data, 2, 0, rank, 2).epoch(0))) for rank in range(2)]
    assert counts == [2, 2]


def test_epochs_reshuffle_deterministically():
    data = UnlearningRows(forget=rows(8))
    a = UnlearningBatches(data, 8, 0, seed=3)
    order0 = next(a.epoch(0))["forget"]["index"].tolist()
    order1 = next(a.epoch(1))["forget"]["index"].tolist()
    assert order0 != order1
    assert order0 == next(UnlearningBatches(data, 8, 0, seed=3).epoch(0))["forget"]["index"].tolist()


def test_keep_filters_aligned_parts():
    data = UnlearningRows(forget=rows(4), analogous=rows(4, offset=100))
    kept = data.keep({1, 3})
    assert [r.index for r in kept.forget] == [1, 3]
    assert [r.index for r in kept.analogous] == [101, 103]


def test_errors():
    with pytest.raises(ValueError, match="forget set is empty"):
        UnlearningBatches(UnlearningRows(forget=[]), 2, 0)
    with pytest.raises(ValueError, match="needs batch parts"):
        UnlearningBatches(UnlearningRows(forget=rows(2)), 2, 0, parts=("forget", "retain"))
    with pytest.raises(ValueError, match="must align"):
        UnlearningRows(forget=rows(2), alternate=rows(3))


@pytest.mark.parametrize("world_size", [2, 3])
def test_every_worker_takes_the_same_rows_per_step(world_size):
    """Even the last, short batch of an epoch (10 rows, batch 3) has the same rows on every worker, so a mean over
    sequences would agree across splits even without the global denominators (which make it hold regardless)."""
    data = UnlearningRows(forget=rows(10))
    sizes = [[len(b["forget"]["index"]) for b in UnlearningBatches(data, 3, 0, rank, world_size).epoch(0)]
             for rank in range(world_size)]
    assert all(s == sizes[0] for s in sizes)
    assert sizes[0][-1] < 3


def test_one_worker_denominators_are_its_own_counts():
    """rows(): 5 tokens, the first 2 labels -100, so 3 labelled tokens after the shift per row."""
    data = UnlearningRows(forget=rows(3), retain=rows(4, offset=1000))
    (batch,) = UnlearningBatches(data, 3, 0, parts=("forget", "retain")).epoch(0)
    out = with_global_denominators(batch, world_size=1)
    assert out["forget"][TOKENS_PER_WORKER].item() == 9.0 and out["forget"][SEQUENCES_PER_WORKER].item() == 3.0
    assert out["retain"][TOKENS_PER_WORKER].item() == 9.0 and out["retain"][SEQUENCES_PER_WORKER].item() == 3.0
