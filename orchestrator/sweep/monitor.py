"""A sweep on the Ray dashboard: a Tune callback that keeps the trial counts and the best trade-off so far current
in the project's metrics (`orchestrator/metrics.py`, `ray_unlearn_sweep_*`), as trials start, report and end."""

from __future__ import annotations

from typing import Any

from ray import tune

from orchestrator.metrics import record_sweep


class SweepMetricsCallback(tune.Callback):
    """Counts trials running / done / failed and the best `score` (and forget quality, model utility) reported."""

    def __init__(self, sweep: str) -> None:
        self.sweep = sweep
        self.running: set[str] = set()
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.best: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._send()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        changed = False
        for key in ("score", "forget_quality", "model_utility"):
            value = result.get(key)
            if isinstance(value, (int, float)) and value == value and value > self.best.get(key, float("-inf")):
                self.best[key] = float(value)
                changed = True
        if changed:
            self._send()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.done.add(trial.trial_id)
        self._send()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.failed.add(trial.trial_id)
        self._send()

    def _send(self) -> None:
        record_sweep(self.sweep, done=len(self.done), running=len(self.running), failed=len(self.failed),
                     best_tradeoff=self.best.get("score"), best_forget_quality=self.best.get("forget_quality"),
                     best_model_utility=self.best.get("model_utility"))
