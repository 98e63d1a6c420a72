"""Which waiting requests the workers take next: one at a time, or coalesced.

Requests are applied in arrival order. `coalesce` joins the requests waiting when the workers become free into one
unlearning run (their forget sets together), as long as they ask for the same method and settings and at most
`max_batch` of them; with `window_s` it first waits that long after the oldest waiting request for more to arrive.
A coalesced request pays that wait in latency and shares a run with the others (one checkpoint for all of them);
one-at-a-time pays a run (and a queue wait) per request. Pure functions, no clock of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from orchestrator.stream.config import PolicyConfig


@dataclass(frozen=True)
class Waiting:
    """A received request waiting for the workers."""

    seq: int
    request_id: str
    due: float  # when it became available (monotonic seconds of the stream)
    method_key: str  # requests coalesce only with the same method and settings
    payload: Any = None


def next_batch(waiting: Sequence[Waiting], policy: PolicyConfig, now: float,
               more_may_come: bool) -> tuple[list[Waiting], float | None]:
    """The requests to dispatch now (possibly none) and, when none, how long to wait before asking again.

    `waiting` holds the due requests in order; `more_may_come`: the source may still bring requests (a window is
    worth waiting for only then).
    """
    if not waiting:
        return [], None
    first = waiting[0]
    if policy.mode == "one_at_a_time":
        return [first], None
    batch = [first]
    for candidate in waiting[1:]:
        if len(batch) >= policy.max_batch or candidate.method_key != first.method_key:
            break
        batch.append(candidate)
    full = len(batch) >= policy.max_batch or len(batch) < len(waiting)  # a different method waits behind it
    deadline = first.due + policy.window_s
    if not full and more_may_come and now < deadline:
        return [], deadline - now
    return batch, None
