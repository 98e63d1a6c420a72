"""Training metrics without touching the worker code: a Ray Train V2 callback in Train's controller.

Ray Train V2 runs a `UserCallback`'s `after_report` in the controller after every `ray.train.report` of the workers.
`TrainingMetricsCallback` forwards each progress report's numbers (loss, forget and retain terms, step, epoch, lr) to
the metrics actor (`orchestrator/observe/metrics.py`), with the wall time per step between two reports and the tokens per
second that implies. Kept apart from `orchestrator/observe/metrics.py` so that the metrics actor's process does not import
Ray Train.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping

from ray.train import UserCallback

from orchestrator.observe.metrics import finite_number, flush, record_training


def tokens_per_step(job: Any, workers: int) -> float | None:
    """Real (unpadded) tokens one global step processes: the mean row length of every batch part the method uses,
    times the rows per step. An estimate per step (batches draw rows at random), exact on average over an epoch."""
    try:
        import methods

        profile = methods.profile(job.method_name, job.method_hparams)
        rows = job.rows
        parts = [rows.forget] + [getattr(rows, p) for p, used in (
            ("retain", profile.uses_retain), ("alternate", profile.uses_alternate),
            ("analogous", profile.uses_analogous)) if used]
        per_worker = math.ceil(len(rows.forget) / workers)
        batch = min(job.train.batch_size, per_worker)
        return float(workers * batch * sum(sum(len(r.input_ids) for r in part) / len(part) for part in parts if part))
    except Exception:
        return None


class TrainingMetricsCallback(UserCallback):
    """Ray Train V2 callback (it runs in Train's controller, not in the workers) that forwards each progress
    report's numbers to the metrics actor, with the wall time per step between reports and tokens per second."""

    def __init__(self, run: str, method: str, tokens_per_step: float | None = None) -> None:
        self.run, self.method, self.tokens_per_step = run, method, tokens_per_step
        self._last: dict[str, tuple[float, float]] = {}  # per run: (time, step) of its previous report

    @classmethod
    def for_job(cls, run: str, job: Any, workers: int) -> "TrainingMetricsCallback":
        return cls(run, job.method_name, tokens_per_step(job, workers))

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        try:
            self.observe(metrics[0] if metrics else {}, time.monotonic())
        except Exception:
            return

    def observe(self, report: Mapping[str, Any], now: float) -> tuple[float | None, float | None]:
        """Record rank 0's report taken at `now` (every worker reports the same averaged metrics); returns the
        (seconds per step, tokens per second) it recorded.

        Timed between reports as the controller takes them (it polls the workers every few hundred ms, so a short
        interval is that much less exact); any report moves the clock, so a checkpoint's save is not a step's.
        A report tagged with `run`, `method` and `tokens_per_step` (resident workers serve many runs through one
        Ray Train run, `orchestrator/run/resident.py`) is recorded under its own run."""
        run, method = str(report.get("run", self.run)), str(report.get("method", self.method))
        per_step = report.get("tokens_per_step", self.tokens_per_step)
        step = report.get("step")
        step_seconds = tokens_per_second = None
        last = self._last.get(run)
        if finite_number(step) and last is not None and step > last[1]:
            step_seconds = (now - last[0]) / (step - last[1])
        if finite_number(step):
            self._last[run] = (now, float(step))
        if "loss" not in report:  # a checkpoint or the final report: no training numbers
            if report.get("final"):
                self._last.pop(run, None)
                if "run" not in report:
                    flush(2.0)  # the controller ends with the run
            return None, None
        if finite_number(per_step) and per_step and step_seconds:
            tokens_per_second = per_step / step_seconds
        numbers = {k: v for k, v in report.items() if k not in ("run", "method", "tokens_per_step")}
        record_training(run, method, numbers, step_seconds=step_seconds, tokens_per_second=tokens_per_second)
        return step_seconds, tokens_per_second
