"""Resident run workers: one Ray Train worker group that serves `run_unlearning` call after call.

A `TorchTrainer` per call pays Ray Train's start every time: a controller, a placement group, a synchronization
actor and fresh worker processes that import torch and transformers, 6-10 s on a small machine before the first
step, as much as the embedded default's whole train loop. A caller that runs many unlearning runs in one process (a
method table, a grid of its own, a notebook) can instead keep one worker group alive:

    with ResidentWorkers(workers=1) as workers:
        for config in configs:
            run_unlearning(config, workers=workers)

The workers run `resident_loop_per_worker`, a Ray Train function that takes jobs from a feed (`orchestrator/run/feed.py`)
and runs each with the same code as a `TorchTrainer` per call (`orchestrator/worker/loop.py` `unlearn_on_worker`: fresh
model, method, optimizer and evaluation per job, nothing carried over). Each call keeps its own output folder,
model, `summary.json` and resumable checkpoint (under `<output>/ray/<run name>/`, written by the workers rather than
reported to Ray Train, since one Ray Train run serves them all), so a call killed midway resumes when it is made
again under the same run name. If the worker group dies (a worker killed, a node lost), the call raises `RunError`
and the next call starts a new group.

Plain PyTorch engines only: DeepSpeed keeps process-wide state (its accelerator, ZeRO-3's parameter hooks) that
one engine per job in the same process does not undo, so `train.deepspeed` runs take a `TorchTrainer` per call.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from orchestrator.config import ConfigError
from orchestrator.run.feed import next_message, worker_env

RESULT_POLL_S = 1.0  # the driver's wait on the results queue (a result ends it at once) between checks that the
# worker group still runs: a short wait would keep the driver and the queue actor busy with empty calls
STOP_WAIT_S = 60.0


class ResidentWorkers:
    """A Ray Train worker group kept alive across `run_unlearning(config, workers=...)` calls.

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
        self.starts = 0  # how many worker groups were started (a dead one is replaced by the next call)

    # --- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker group (a no-op while one runs). Needs a connected Ray."""
        if self.alive:
            return
        import ray
        import ray.util.queue
        from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from orchestrator.observe.training_metrics import TrainingMetricsCallback

        if not ray.is_initialized():
            raise RuntimeError("ResidentWorkers.start needs a connected Ray (orchestrator.run.ray_session.connect_ray)")
        if self.cpus_per_worker is None:
            from orchestrator.run.unlearning import free_cpus_per_worker

            self.cpus_per_worker = free_cpus_per_worker(self.workers)
        self._feed = ray.util.queue.Queue(actor_options={"num_cpus": 0})
        self._results = ray.util.queue.Queue(actor_options={"num_cpus": 0})
        if self.storage_root is not None:
            self.storage_root.mkdir(parents=True, exist_ok=True)
        self._storage = Path(tempfile.mkdtemp(prefix="ray-unlearn-resident-", dir=self.storage_root))
        trainer = TorchTrainer(
            resident_loop_per_worker,
            train_loop_config={"feed": self._feed, "results": self._results},
            scaling_config=ScalingConfig(num_workers=self.workers, use_gpu=self.use_gpu,
                                         resources_per_worker={"CPU": self.cpus_per_worker}),
            run_config=RunConfig(name="resident", storage_path=str(self._storage),
                                 failure_config=FailureConfig(max_failures=0),
                                 worker_runtime_env={"env_vars": worker_env(self.use_gpu)},
                                 logging_config=LoggingConfig(log_level="WARNING"),
                                 callbacks=[TrainingMetricsCallback("resident", "resident")]),
        )
        self._error = None
        # Off the main thread Ray Train registers no SIGINT handler: Ctrl-C reaches the caller, and `close` (or the
        # process's end) takes the group down.
        self._thread = threading.Thread(target=self._fit, args=(trainer,), name="resident-workers", daemon=True)
        self._thread.start()
        self.starts += 1
        self.progress(f"resident workers: {self.workers} Ray Train worker(s) x {self.cpus_per_worker} CPU(s), "
                      "kept for every run")

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
                self._feed.put({"kind": "stop"})
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
    def check_fits(self, train: dict[str, Any]) -> None:
        """Refuse a run whose resolved train settings need another worker group than this one."""
        if train.get("deepspeed"):
            raise ConfigError("resident workers run plain PyTorch engines only (DeepSpeed keeps process-wide state "
                              "between engines): run train.deepspeed without `workers=`")
        asked = {"train.workers": (train["workers"], self.workers), "train.use_gpu": (bool(train.get("use_gpu")),
                                                                                     self.use_gpu)}
        if train.get("cpus_per_worker") is not None and self.cpus_per_worker is not None:
            asked["train.cpus_per_worker"] = (train["cpus_per_worker"], self.cpus_per_worker)
        wrong = [f"{key}={mine} (the resident workers have {theirs})" for key, (mine, theirs) in asked.items()
                 if mine != theirs]
        if wrong:
            raise ConfigError(f"the run does not fit the resident workers: {', '.join(wrong)}")

    def run(self, job: Any, checkpoint_folder: Path, report_tags: dict[str, Any],
            on_report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run one `TrainJob` on the worker group; returns rank 0's summary (as `train_loop_per_worker` does).

        `on_report`: called here, on the caller's thread, with each of the run's progress reports (the metrics a
        Ray Train callback sees), as they arrive."""
        from orchestrator.run.unlearning import RunError, _last_line

        self.check_fits(job.train)
        self.start()
        call = next(self._ids)
        self._feed.put({"kind": "job", "id": call, "job": job, "checkpoint_folder": str(checkpoint_folder),
                        "report_tags": report_tags, "forward_reports": on_report is not None})
        from ray.util.queue import Empty

        while True:
            try:
                message = self._results.get(block=True, timeout=RESULT_POLL_S)
            except Empty:
                if not self.alive:
                    error = self._error
                    self.close()
                    raise RunError(f"the resident workers stopped during the run: "
                                   f"{_last_line(error) if error else 'no error reported'}") from error
                continue
            if message.get("id") != call:  # a result of a call abandoned earlier (its caller was interrupted)
                continue
            if message["kind"] == "report":  # sent only when `on_report` was given
                on_report(message["metrics"])
                continue
            if message["kind"] == "error":
                raise RunError(f"unlearning failed: {message['error']}")
            return message["summary"]


def resident_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train function of resident workers: run job after job from the feed until told to stop."""
    import ray.train

    from orchestrator.worker.loop import prepare_worker_process, unlearn_on_worker

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    while True:
        message = next_message(config["feed"], rank, world_size)
        if message["kind"] == "idle":
            continue
        if message["kind"] == "stop":
            return None
        entered = time.time()
        job, call = message["job"], message["id"]
        forward = None
        if message.get("forward_reports"):  # rank 0's reports only (`UnlearningWorker.on_report`)
            def forward(metrics: dict[str, Any]) -> None:
                config["results"].put({"kind": "report", "id": call, "metrics": metrics})
        try:
            prepare_worker_process(job)
            summary = unlearn_on_worker(job, Path(message["checkpoint_folder"]), message["report_tags"], forward)
        except Exception as err:  # this run failed; the worker group serves the next one
            if rank == 0:
                lines = traceback.format_exception_only(type(err), err)
                config["results"].put({"kind": "error", "id": call, "error": lines[-1].strip()})
            continue
        if rank == 0:
            summary["clock"] = {"entered": entered, "left": time.time()}
            config["results"].put({"kind": "done", "id": call, "summary": summary})
