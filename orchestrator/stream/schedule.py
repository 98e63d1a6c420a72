"""Which earlier requests a batch evaluates again: a bounded number of them, so a stream costs linearly.

Re-evaluating every earlier forget set after every request makes request k cost O(k) and a stream of n requests
O(n^2) (200 requests: 20,000 forget-set evaluations). `stream.resurgence` bounds it: after each batch, the `sample`
earlier requests measured longest ago (so every request is measured again within about applied / sample batches),
and every one of them every `full_every` applied batches and at an attack point. The choice is read from the
ledger's applied batches only, so a stream resumed after a kill evaluates what an uninterrupted one would have.
"""

from __future__ import annotations

from typing import Any, Sequence

from orchestrator.stream.config import ResurgenceSchedule


def last_measured(applied_batches: Sequence[dict[str, Any]]) -> dict[int, int]:
    """seq -> the number (1, 2, ...) of the last applied batch whose evaluation measured its forget set."""
    out: dict[int, int] = {}
    for number, batch in enumerate(applied_batches, start=1):
        for seq in ((batch.get("metrics") or {}).get("after") or {}):
            out[int(seq)] = number
    return out


def earlier_to_evaluate(applied: Sequence[int], measured: dict[int, int], batches_applied: int,
                        schedule: ResurgenceSchedule, everything: bool = False) -> list[int]:
    """The seqs (in `applied`'s order) whose forget sets the next batch evaluates again.

    `applied`: every applied request's seq, in order; `measured`: `last_measured` of the applied batches so far,
    `batches_applied` of them; `everything`: all of them (an attack point)."""
    sample, full_every = schedule.sample, schedule.full_every
    upcoming = batches_applied + 1
    if everything or sample is None or len(applied) <= sample or (full_every and upcoming % full_every == 0):
        return list(applied)
    stalest = set(sorted(applied, key=lambda seq: (measured.get(seq, 0), seq))[:sample])
    return [seq for seq in applied if seq in stalest]
