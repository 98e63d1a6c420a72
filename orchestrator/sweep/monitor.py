"""A sweep as it runs: one Tune callback keeps the trial counts and the best trade-off so far current in the
project's metrics (`orchestrator/observe/metrics.py`, `ray_unlearn_sweep_*`, for the Ray dashboard), in a live table at the
terminal (`SweepBoard`) and in one line per finished trial; Tune's own reporter is silenced (`driver.py`)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ray import tune

from orchestrator.observe.metrics import finite_number, record_sweep
from orchestrator.observe.progress import facts_table, figure, seconds


@dataclass
class SweepBoard:
    """What the live table shows: the study's trials by state, the best trade-off so far, the time it has taken."""

    study: str
    total: int | None = None  # trials the study will run (None: not known, e.g. a restored study)
    done: int = 0
    running: int = 0
    failed: int = 0
    pending: int = 0
    best: dict[str, Any] | None = None  # score, efficacy, utility, trial (its label)
    started: float = field(default_factory=time.monotonic)

    def update(self, trials: list) -> None:
        """Counts and best from Tune's own trial states (a restored study's finished trials included)."""
        status = [getattr(t, "status", "PENDING") for t in trials]
        self.done = status.count("TERMINATED")
        self.failed = status.count("ERROR")
        self.running = status.count("RUNNING")
        known = len(status) - self.done - self.failed - self.running
        self.pending = known + max(0, (self.total or 0) - len(status))
        for trial in trials:
            result = getattr(trial, "last_result", None) or {}
            score = result.get("score")
            if finite_number(score) and (self.best is None or score > self.best["score"]):
                self.best = {"score": float(score), "efficacy": result.get("rouge_efficacy"),
                             "utility": result.get("utility"), "trial": trial_label(trial)}

    def table(self):
        best = self.best
        total = f"/{self.total}" if self.total else ""
        return facts_table(f"sweep study {self.study!r}", [
            ("trials", f"{self.done}{total} done · {self.running} running · {self.failed} failed · "
                       f"{self.pending} pending"),
            ("best", "-" if best is None else f"{best['score']:.3f} (efficacy {figure(best['efficacy'])}, utility "
                                              f"{figure(best['utility'])}): {best['trial']}"),
            ("elapsed", seconds(time.monotonic() - self.started))])


# Study name -> (its board, where its trial lines go), in the driver process. Looked up, not held by the callback:
# Tune pickles the callback with the study (`tuner.pkl`) and `Tuner.restore` brings back a copy, which must still
# reach this session's board and lines.
_WATCHING: dict[str, tuple[SweepBoard, Callable[[str], None] | None]] = {}


@contextlib.contextmanager
def watch(board: SweepBoard, line: Callable[[str], None] | None) -> Iterator[SweepBoard]:
    """While the study runs, its callback keeps `board` current and gives `line` one line per finished trial."""
    _WATCHING[board.study] = (board, line)
    try:
        yield board
    finally:
        _WATCHING.pop(board.study, None)


class SweepMetricsCallback(tune.Callback):
    """Counts trials running / done / failed and the best `score` (and forget quality, model utility) reported.

    While the study is watched (`watch`), keeps its board current at every step of Tune's loop and writes one line
    per finished (or failed) trial."""

    def __init__(self, sweep: str) -> None:
        self.sweep = sweep
        self.running: set[str] = set()
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.best: dict[str, float] = {}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        board, _ = _WATCHING.get(self.sweep, (None, None))
        if board is not None:
            board.update(trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._send()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        changed = False
        for key in ("score", "forget_quality", "model_utility"):
            value = result.get(key)
            if finite_number(value) and value > self.best.get(key, float("-inf")):
                self.best[key] = float(value)
                changed = True
        if changed:
            self._send()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.done.add(trial.trial_id)
        self._send()
        self._line(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.failed.add(trial.trial_id)
        self._send()
        self._line(trial, "failed (Tune's error report names its file)")

    def _send(self) -> None:
        record_sweep(self.sweep, done=len(self.done), running=len(self.running), failed=len(self.failed),
                     best_tradeoff=self.best.get("score"), best_forget_quality=self.best.get("forget_quality"),
                     best_model_utility=self.best.get("model_utility"))

    def _line(self, trial: Any, failure: str | None) -> None:
        board, line = _WATCHING.get(self.sweep, (None, None))
        if line is not None:
            line(trial_line(trial, failure, len(self.done), len(self.failed), board.total if board else None,
                            self.best.get("score")))


def trial_label(trial: Any) -> str:
    """`npo lr=0.0001 beta=0.1 seed 0 (trial id)`: a trial by its cell and seed."""
    config = getattr(trial, "config", None) or {}
    cell = config.get("cell") or {}
    params = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in (cell.get("params") or {}).items())
    parts = [cell.get("method", "?"), params, f"seed {config['seed']}" if "seed" in config else ""]
    return " ".join(p for p in parts if p) + f" ({trial.trial_id})"


def trial_line(trial: Any, failure: str | None, done: int, failed: int, total: int | None,
               best: float | None) -> str:
    """The one line a finished trial gets: what it was, how it scored, and where the study stands."""
    result = getattr(trial, "last_result", None) or {}
    if failure is not None:
        outcome = failure
    elif finite_number(result.get("score")):
        outcome = (f"score {result['score']:.3f} (efficacy {figure(result.get('rouge_efficacy'))}, utility "
                   f"{figure(result.get('utility'))}) in {seconds(result.get('seconds'))}")
    else:  # no final report: ASHA stopped it
        outcome = f"stopped early at step {result.get('step', '?')}"
    count = f"{done}{f'/{total}' if total else ''} done" + (f", {failed} failed" if failed else "")
    return f"trial {trial_label(trial)}: {outcome}; {count}, best {figure(best)}"
