"""Resident worker groups: one Ray Train worker group that serves task after task, for every driver.

A `TorchTrainer` per call pays Ray Train's start every time: a controller, a placement group, a synchronization
actor and fresh worker processes that import torch and transformers, 6-10 s on a small machine before the first
step, as much as the embedded default's whole train loop. A caller that runs many unlearning runs in one process (a
method table, a sweep slot, a notebook) keeps one worker group alive instead:

    with ResidentWorkers(workers=1) as workers:
        for config in configs:
            run_unlearning(config, workers=workers)

and a request stream keeps its model resident on one (`orchestrator/stream/worker.py`). The workers run
`resident_loop_per_worker`, a Ray Train function that takes `Task`s from a feed (`orchestrator/run/feed.py`) and
runs each on every rank with the same worker code as a `TorchTrainer` per call (`orchestrator/worker/`). A run's
task (`UnlearnTask`) builds a fresh model, method, optimizer and evaluation, nothing carried over; it keeps its own
output folder, model, `summary.json` and resumable checkpoint (under `<output>/ray/<run name>/`, written by the
workers rather than reported to Ray Train, since one Ray Train run serves them all), so a call killed midway resumes
when it is made again under the same run name. If the worker group dies (a worker killed, a node lost), the call
raises `RunError` and the next call starts a new group.

Runs under `train.deepspeed` build their engine over the model they load and close it when they end
(`DeepSpeedStepEngine.close`: ZeRO's hooks off, its buffers freed), so the next run's engine starts as in a fresh
process: the same losses to the last digit (measured: two ZeRO-3 engines one after the other in one pair of gloo
processes). A stream keeps its engine across requests instead (`orchestrator/stream/worker.py`).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator.config import sharded_checkpoints
from orchestrator.errors import ConfigError, RunError, last_line
from orchestrator.run.feed import (Forward, Idle, ResultMessage, Stop, Task, TaskDone, TaskFailed, TaskReport,
                                   WorkerSlot, WorkerTask, next_message)
from orchestrator.run.job import free_cpus_per_worker
from orchestrator.run.worker_group import worker_group
from orchestrator.worker.entry import prepare_worker_process, unlearn_on_worker
from orchestrator.worker.job import TrainJob, WorkerSettings, WorkerSummary

RESULT_POLL_S = 1.0  # the driver's wait on the results queue (a result ends it at once) between checks that the
# worker group still runs: a short wait would keep the driver and the queue actor busy with empty calls
STOP_WAIT_S = 60.0


@dataclass(frozen=True)
class UnlearnTask:
    """One unlearning run on a resident group: the same worker code as a `TorchTrainer` of its own."""

    job: TrainJob
    checkpoint_folder: str
    report_tags: dict[str, Any]

    def run(self, slot: WorkerSlot, forward: Forward | None) -> WorkerSummary | None:
        entered = time.time()
        prepare_worker_process(self.job.train.threads, bool(self.job.train.deepspeed))
        summary = unlearn_on_worker(self.job, Path(self.checkpoint_folder), self.report_tags, forward)
        if summary is not None:
            summary.clock = {"entered": entered, "left": time.time()}
        return summary


class ResidentWorkers:
    """A Ray Train worker group kept alive across calls.

    `workers`, `cpus_per_worker` and `use_gpu` fix its shape; a config asking for another shape is refused. CPUs
    per worker default to the CPUs Ray has free when the group starts, shared by the workers. Started by the first
    call (or `start()`), stopped by `close()` or the end of a `with` block. `storage_root`: where the group's own
    Ray Train state goes (a folder of its own under it, removed by `close()`); default: the system's temp folder.
    """

    def __init__(self, workers: int = 1, cpus_per_worker: int | None = None, use_gpu: bool = False,
                 progress: Callable[[str], None] = print, storage_root: str | Path | None = None) -> None:
        if workers < 1:
            raise ConfigError(f"resident workers: workers={workers} must be >= 1")
        if cpus_per_worker is not None and cpus_per_worker < 1:
            raise ConfigError(f"resident workers: cpus_per_worker={cpus_per_worker} must be >= 1")
        self.workers, self.cpus_per_worker, self.use_gpu = workers, cpus_per_worker, use_gpu
        self.progress = progress
        self.storage_root = Path(storage_root) if storage_root is not None else None
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._storage: Path | None = None
        self._feed = self._results = None
        self._forwards: dict[int, Forward] = {}
        self.starts = 0  # how many worker groups were started (a dead one is replaced by the next call)

    # --- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker group (a no-op while one runs). Needs a connected Ray."""
        if self.alive:
            return
        import ray
        import ray.util.queue

        from orchestrator.observe.training_metrics import TrainingMetricsCallback

        if not ray.is_initialized():
            raise RuntimeError("ResidentWorkers.start needs a connected Ray (orchestrator.run.ray_session.connect_ray)")
        self.fix_shape()
        self._feed = ray.util.queue.Queue(actor_options={"num_cpus": 0})
        self._results = ray.util.queue.Queue(actor_options={"num_cpus": 0})
        if self.storage_root is not None:
            self.storage_root.mkdir(parents=True, exist_ok=True)
        self._storage = Path(tempfile.mkdtemp(prefix="ray-unlearn-resident-", dir=self.storage_root))
        trainer = worker_group(
            resident_loop_per_worker, {"feed": self._feed, "results": self._results}, name="resident",
            storage=self._storage, workers=self.workers, cpus_per_worker=self.cpus_per_worker, use_gpu=self.use_gpu,
            callbacks=[TrainingMetricsCallback("resident", "resident")])
        self._error = None
        self._forwards.clear()
        # Off the main thread Ray Train registers no SIGINT handler: Ctrl-C reaches the caller, and `close` (or the
        # process's end) takes the group down.
        self._thread = threading.Thread(target=self._fit, args=(trainer,), name="resident-workers", daemon=True)
        self._thread.start()
        self.starts += 1
        self.progress(f"resident workers: {self.workers} Ray Train worker(s) x {self.cpus_per_worker} CPU(s), "
                      "kept for every run")

    def fix_shape(self) -> int:
        """The group's CPUs per worker, fixed now if the caller left them open (the CPUs Ray has free). Called by a
        run before its first baseline task: Ray's free-CPU count lags a finished task, so reading it after one would
        give the group fewer CPUs than the run's job asks for."""
        if self.cpus_per_worker is None:
            self.cpus_per_worker = free_cpus_per_worker(self.workers)
        return self.cpus_per_worker

    def _fit(self, trainer) -> None:
        try:
            trainer.fit()
        except BaseException as err:  # the worker group died: the call waiting on it raises, the next one restarts
            self._error = err

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop the worker group and remove its Ray Train state (the runs' outputs are theirs and stay)."""
        if self.alive and self._feed is not None:
            try:
                self._feed.put(Stop())
            except Exception:
                pass
            self._thread.join(timeout=STOP_WAIT_S)
        self._thread = None
        for queue in (self._feed, self._results):
            if queue is not None:
                try:
                    queue.shutdown()
                except Exception:
                    pass
        self._feed = self._results = None
        if self._storage is not None:
            shutil.rmtree(self._storage, ignore_errors=True)
            self._storage = None

    def __enter__(self) -> "ResidentWorkers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- calls --------------------------------------------------------------------------------------------
    def check_fits(self, train: WorkerSettings) -> None:
        """Refuse a run whose train settings need another worker group than this one, or checkpoints of a DeepSpeed
        run (a resident run's checkpoint is rank 0's files; a DeepSpeed run's state is sharded across its ranks)."""
        if sharded_checkpoints(train.deepspeed, train.checkpoint_every_epochs, train.max_failures):
            raise ConfigError("resident workers keep a run's checkpoint as rank 0's files, and a DeepSpeed run's "
                              "state is sharded across its workers: drop train.checkpoint_every_epochs and "
                              "train.max_failures, or give the run a TorchTrainer of its own (no `workers=`; "
                              "sweep.trial_workers: per_trial)")
        asked = {"train.workers": (train.workers, self.workers), "train.use_gpu": (train.use_gpu, self.use_gpu)}
        if self.cpus_per_worker is not None:
            asked["train.cpus_per_worker"] = (train.cpus_per_worker, self.cpus_per_worker)
        wrong = [f"{key}={mine} (the resident workers have {theirs})" for key, (mine, theirs) in asked.items()
                 if mine != theirs]
        if wrong:
            raise ConfigError(f"the run does not fit the resident workers: {', '.join(wrong)}")

    def submit(self, task: WorkerTask, on_report: Forward | None = None) -> int:
        """Hand `task` to the group (started if need be); returns the call's number for `result`.

        `on_report`: called on the thread that waits in `result`, with each progress report the task forwards."""
        self.start()
        call = next(self._ids)
        if on_report is not None:
            self._forwards[call] = on_report
        self._feed.put(Task(call, task, forward_reports=on_report is not None))
        return call

    def result(self, call: int, timeout: float = RESULT_POLL_S) -> tuple[bool, Any]:
        """(True, rank 0's result) once call `call` is done, (False, None) if it is not within `timeout` s.

        Raises `RunError` when the task failed (the group serves the next) or the group died (the next call starts
        another)."""
        from ray.util.queue import Empty

        deadline = time.monotonic() + timeout
        while True:
            try:
                message: ResultMessage = self._results.get(block=True, timeout=max(0.0, deadline - time.monotonic()))
            except Empty:
                if not self.alive:
                    error = self._error
                    self.close()
                    raise RunError(f"the resident workers stopped during the run: "
                                   f"{last_line(error) if error else 'no error reported'}") from error
                return False, None
            if message.call != call:  # a result of a call abandoned earlier (its caller was interrupted)
                continue
            if isinstance(message, TaskReport):  # sent only when `on_report` was given
                self._forwards[call](message.metrics)
                continue
            self._forwards.pop(call, None)
            if isinstance(message, TaskFailed):
                raise RunError(f"unlearning failed: {message.error}")
            return True, message.result

    def run(self, task: WorkerTask, on_report: Forward | None = None) -> Any:
        """`task` on the group, waited for; returns rank 0's result."""
        call = self.submit(task, on_report)
        while True:
            done, result = self.result(call)
            if done:
                return result


def resident_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train function of resident workers: run task after task from the feed until told to stop."""
    import ray.train

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    results = config["results"]
    slot = WorkerSlot()
    while True:
        message = next_message(config["feed"], rank, world_size)
        if isinstance(message, Idle):
            continue
        if isinstance(message, Stop):
            return None
        call = message.call
        forward = _forwarder(results, call) if message.forward_reports and rank == 0 else None
        try:
            result = message.task.run(slot, forward)
        except Exception as err:  # this task failed; the worker group serves the next one
            if rank == 0:
                lines = traceback.format_exception_only(type(err), err)
                results.put(TaskFailed(call, lines[-1].strip()))
            continue
        if rank == 0:
            results.put(TaskDone(call, result))


def _forwarder(results: Any, call: int) -> Forward:
    """Rank 0's way to hand the driver a progress report of call `call` (`UnlearningWorker.on_report`)."""
    def forward(metrics: dict[str, Any]) -> None:
        results.put(TaskReport(call, metrics))

    return forward
