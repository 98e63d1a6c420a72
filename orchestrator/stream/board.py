"""A stream as it runs, in one live table (at a terminal, `orchestrator/observe/progress.py`): requests by outcome, the
queue, the latency of the last request and the median so far, and the drift of model utility from the original's."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("applied", "failed", "rolled_back", "quarantined")


@dataclass
class StreamBoard:
    """One method's stream. `record` is called from the stream's loop thread, `table` from rich's refresh thread:
    the one only assigns and appends, the other only reads."""

    stream: str
    method: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    queued: int = 0
    running: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, arrival to outcome, this session's requests
    drift: float | None = None  # model utility now minus the original model's
    started: float = field(default_factory=time.monotonic)

    def count_from(self, ledger: Any) -> None:
        """Outcomes already in the ledger (a resumed stream), and what waits there."""
        for state in OUTCOMES:
            self.counts[state] = len(ledger.requests(state))
        self.queued = len(ledger.requests("received"))

    def record(self, state: str, latency_s: float | None = None, drift: float | None = None) -> None:
        if state in self.counts:
            self.counts[state] += 1
        if latency_s is not None:
            self.latencies.append(float(latency_s))
        if drift is not None:
            self.drift = float(drift)

    def table(self):
        from orchestrator.observe.progress import facts_table, seconds
        from orchestrator.stream.drift import percentile

        latencies, c = list(self.latencies), self.counts
        return facts_table(f"stream {self.stream!r}, method {self.method}", [
            ("requests", f"{c['applied']} applied · {c['failed']} failed · {c['rolled_back']} rolled back · "
                         f"{c['quarantined']} quarantined"),
            ("waiting", f"{self.queued} queued · {self.running} running"),
            ("latency", f"last {seconds(latencies[-1]) if latencies else '-'} · p50 "
                        f"{seconds(percentile(latencies, 50)) if latencies else '-'}"),
            ("drift", "-" if self.drift is None else f"{self.drift:+.4f} (model utility against the original's)"),
            ("elapsed", seconds(time.monotonic() - self.started))])
