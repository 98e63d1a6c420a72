"""A worker's whole run, from process set-up to its summary: what `unlearn run`, sweeps and resident groups call.

`train_loop_per_worker` is the Ray Train function of a `TorchTrainer` that serves one run; resident worker groups
(`orchestrator/run/resident.py`) call `prepare_worker_process` and `unlearn_on_worker` per run instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from orchestrator.worker.job import TrainJob, WorkerSummary
from orchestrator.worker.loop import UnlearningWorker


def train_loop_per_worker(config: dict[str, Any]) -> WorkerSummary | None:
    """Ray Train entry point: `config["job"]` is a `TrainJob`; rank 0 returns the run's summary."""
    entered = time.time()  # wall clock, for the driver's view of Ray Train's start and finish
    job: TrainJob = config["job"]
    prepare_worker_process(job.train.threads, bool(job.train.deepspeed))
    summary = unlearn_on_worker(job)
    if summary is not None:
        summary.clock = {"entered": entered, "left": time.time()}
    return summary


def prepare_worker_process(threads: int | None, deepspeed: bool = False) -> None:
    """Once per worker process (and per task, for resident workers): quiet logs and warnings, set the threads."""
    from orchestrator.models.loading import quiet_progress_bars
    from orchestrator.run.ray_internals import quiet_ray_train_reports

    quiet_ray_train_reports()
    quiet_progress_bars()
    if deepspeed:
        import warnings

        # DeepSpeed 0.19 calls all_gather_into_tensor / reduce_scatter_tensor, deprecated in torch 2.13: once per
        # collective, hundreds per step.
        warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    if threads:
        torch.set_num_threads(threads)


def unlearn_on_worker(job: TrainJob, checkpoint_folder: Path | None = None,
                      report_tags: dict[str, Any] | None = None,
                      on_report: Callable[[dict[str, Any]], None] | None = None) -> WorkerSummary | None:
    """One worker's whole run (set-up, train, evaluate, export, finish); rank 0 returns the run's summary.

    `checkpoint_folder`: resident workers' own resumable checkpoint for this run (else Ray Train's);
    `report_tags`: added to every report, so that a resident worker group's callbacks know whose it is;
    `on_report`: rank 0 also hands it every report (untagged), for the resident run's caller."""
    started = time.perf_counter()
    worker = UnlearningWorker(job, checkpoint_folder, report_tags, on_report)
    try:
        worker.setup()
        set_up = time.perf_counter()
        worker.train()
        trained = time.perf_counter()
        evaluation = worker.evaluate()  # before the export, which may merge LoRA adapters into the trained module
        evaluated = time.perf_counter()
        worker.export()
        exported = time.perf_counter()
        # "train_loop" keeps its earlier meaning (set-up included: loading the model is part of training it).
        timings = {"worker_setup": set_up - started, "train_loop": trained - started,
                   "evaluate": evaluated - trained, "export": exported - evaluated}
        return worker.finish({k: round(v, 3) for k, v in timings.items()}, evaluation)
    finally:
        if hasattr(worker, "engine"):  # a resident worker builds the next run's engine in this same process
            worker.engine.close()
