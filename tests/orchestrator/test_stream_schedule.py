"""stream.resurgence: which earlier forget sets a batch evaluates again (orchestrator/stream/schedule.py)."""

from __future__ import annotations

import pytest

from orchestrator.stream.config import ResurgenceSchedule, StreamConfig
from orchestrator.stream.schedule import earlier_to_evaluate, last_measured


def _replay(schedule: ResurgenceSchedule, batches: int) -> list[dict]:
    """Applied batches of one request each, as the ledger keeps them: each measures its own request and the
    earlier ones the schedule names."""
    applied: list[dict] = []
    for number in range(1, batches + 1):
        seqs = [b["seqs"][0] for b in applied]
        earlier = earlier_to_evaluate(seqs, last_measured(applied), len(applied), schedule)
        applied.append({"seqs": [number], "metrics": {"after": {str(s): {} for s in [*earlier, number]}}})
    return applied


def test_a_short_stream_evaluates_every_earlier_request():
    assert earlier_to_evaluate([1, 2, 3], {1: 1, 2: 2, 3: 3}, 3, ResurgenceSchedule(sample=8)) == [1, 2, 3]
    everyone = list(range(1, 100))
    assert earlier_to_evaluate(everyone, {}, 99, ResurgenceSchedule(sample=None)) == everyone


def test_the_work_per_batch_is_bounded_and_every_request_is_measured_again_in_turn():
    applied = _replay(ResurgenceSchedule(sample=4, full_every=None), 200)
    sizes = [len(b["metrics"]["after"]) for b in applied]
    assert max(sizes) == 5  # its own request + 4 earlier ones, from batch 5 on
    gaps, last = [], {}
    for number, batch in enumerate(applied, start=1):
        for seq in map(int, batch["metrics"]["after"]):
            if seq in last:
                gaps.append(number - last[seq])
            last[seq] = number
    # Stalest first: a request waits about applied / sample batches, at most ~200 / 4.
    assert max(gaps) <= 200 // 4 + 1
    assert all(last[seq] > seq for seq in range(1, 150))  # each measured again after its own batch


def test_a_full_sweep_every_k_batches_and_at_an_attack_point():
    schedule = ResurgenceSchedule(sample=2, full_every=5)
    applied = list(range(1, 21))
    measured = {s: s for s in applied}
    assert earlier_to_evaluate(applied, measured, 4, schedule) == applied  # batch 5
    assert earlier_to_evaluate(applied, measured, 9, schedule) == applied  # batch 10
    assert earlier_to_evaluate(applied, measured, 10, schedule) == [1, 2]  # the stalest two
    assert earlier_to_evaluate(applied, measured, 10, schedule, everything=True) == applied


def test_the_choice_is_read_from_the_applied_batches_alone():
    """A stream resumed after a kill rebuilds `last_measured` from the ledger and chooses what it would have."""
    applied = _replay(ResurgenceSchedule(sample=3, full_every=7), 40)
    again = _replay(ResurgenceSchedule(sample=3, full_every=7), 40)
    assert applied == again
    assert last_measured(applied[:10]) == last_measured([dict(b) for b in applied[:10]])


def test_the_schedule_is_validated_at_load():
    assert StreamConfig().resurgence == ResurgenceSchedule(sample=8, full_every=50)
    with pytest.raises(ValueError, match="sample"):
        StreamConfig.model_validate({"resurgence": {"sample": 0}})
    with pytest.raises(ValueError, match="extra"):
        StreamConfig.model_validate({"resurgence": {"every": 3}})
