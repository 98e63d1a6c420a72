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


# --- train.group_by_length ---------------------------------------------------------------------------------------
def mixed_rows(n, offset=0, seed=0):
    """Rows of lengths 3..40 in no order (row i's tokens are all i, so the index is readable from them)."""
    import random

    lengths = [random.Random(seed * 7919 + i).randint(3, 40) for i in range(n)]
    return [EncodedRow(input_ids=[offset + i] * k, labels=[-100] + [offset + i] * (k - 1), index=offset + i)
            for i, k in enumerate(lengths)]


def grouped(data, batch_size, rank=0, world_size=1, seed=0, parts=("forget",)):
    return UnlearningBatches(data, batch_size, 0, rank, world_size, seed, parts, group_by_length=True)


def padded_positions(batches) -> int:
    return sum(int((1 - part["attention_mask"]).sum()) for b in batches for part in b.values())


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("n", [37, 1000])  # one short megabatch; several, the last one short
def test_grouping_takes_every_row_once_per_epoch_in_disjoint_shards(world_size, n):
    data = UnlearningRows(forget=mixed_rows(n))
    per_rank = [[b["forget"]["index"].tolist() for b in grouped(data, 4, rank, world_size, seed=2).epoch(1)]
                for rank in range(world_size)]
    steps = UnlearningBatches(data, 4, 0, 0, world_size).steps_per_epoch()
    assert all(len(batches) == steps for batches in per_rank)
    # every step, the same number of rows on every worker (the last step's short batch included)
    assert all(len({len(r[k]) for r in per_rank}) == 1 for k in range(steps))
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert set(seen) == set(range(n))
    assert len(seen) == -(-n // world_size) * world_size  # only the wrap padding (under world_size rows) repeats
    if n % world_size == 0:
        shards = [{i for batch in batches for i in batch} for batches in per_rank]
        assert len(seen) == n and (world_size == 1 or not shards[0] & shards[1])


def test_grouped_shards_are_disjoint_but_for_the_wrap():
    """41 rows over 2 workers: 21 each, the one wrapped row the only one on both."""
    data = UnlearningRows(forget=mixed_rows(41))
    shards = [[i for b in grouped(data, 4, rank, 2).epoch(0) for i in b["forget"]["index"].tolist()]
              for rank in range(2)]
    assert [len(s) for s in shards] == [21, 21]
    assert len(set(shards[0]) & set(shards[1])) <= 1 and set(shards[0]) | set(shards[1]) == set(range(41))


def test_grouping_is_deterministic_from_seed_and_epoch():
    data = UnlearningRows(forget=mixed_rows(300), retain=mixed_rows(50, offset=1000))
    order = lambda seed, epoch: [b["forget"]["index"].tolist() for b in  # noqa: E731
                                 grouped(data, 4, seed=seed, parts=("forget", "retain")).epoch(epoch)]
    assert order(3, 0) == order(3, 0)
    assert order(3, 0) != order(3, 1) and order(3, 0) != order(4, 0)


@pytest.mark.parametrize("world_size", [1, 2])
def test_grouping_lowers_padding_on_rows_of_mixed_lengths(world_size):
    """Lengths 3..40: padded positions (summed over the workers) drop to under a quarter, and no batch spans more
    than a few tokens of length."""
    data = UnlearningRows(forget=mixed_rows(400))
    ranks = range(world_size)
    plain = sum(padded_positions(UnlearningBatches(data, 8, 0, r, world_size).epoch(0)) for r in ranks)
    by_length = sum(padded_positions(grouped(data, 8, r, world_size).epoch(0)) for r in ranks)
    assert by_length < plain / 4
    lengths = [b["forget"]["attention_mask"].sum(1) for r in ranks for b in grouped(data, 8, r, world_size).epoch(0)]
    assert max(int(k.max() - k.min()) for k in lengths) <= 10


def test_grouped_aligned_parts_follow_their_forget_rows():
    data = UnlearningRows(forget=mixed_rows(60), alternate=mixed_rows(60, offset=500, seed=1),
                          analogous=mixed_rows(60, offset=900, seed=2))
    for rank in range(2):
        for batch in grouped(data, 3, rank, 2, parts=("forget", "alternate", "analogous")).epoch(0):
            forget = batch["forget"]["index"].tolist()
            assert batch["alternate"]["index"].tolist() == [500 + i for i in forget]
            assert batch["analogous"]["index"].tolist() == [900 + i for i in forget]


def test_grouped_steps_are_in_random_length_order():
    """The megabatches are sorted, the steps are not: the longest batch is not always first (HF's sampler would put
    it there; here it is shuffled like the rest)."""
    data = UnlearningRows(forget=mixed_rows(2000))
    widths = [b["forget"]["input_ids"].shape[1] for b in grouped(data, 4).epoch(0)]
    assert widths != sorted(widths, reverse=True) and widths != sorted(widths)


def test_grouping_off_keeps_the_plain_order():
    """Without grouping the batches are what they were before the option: the seeded shuffle, sharded by stride."""
    import random

    data = UnlearningRows(forget=mixed_rows(50))
    order = list(range(50))
    random.Random(5 * 100_003 + 2).shuffle(order)
    for rank in range(2):
        shard = order[rank::2]
        batches = [b["forget"]["index"].tolist()
                   for b in UnlearningBatches(data, 4, 0, rank, 2, seed=5, group_by_length=False).epoch(2)]
        assert batches == [shard[i : i + 4] for i in range(0, 25, 4)]
