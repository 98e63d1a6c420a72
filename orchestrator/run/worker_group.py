"""The one place a Ray Train worker group is started: a `TorchTrainer` over a train function.

A run of its own (`orchestrator/run/unlearning.py`: one `TrainJob`, Ray Train's checkpoints and failure handling)
and a resident group (`orchestrator/run/resident.py`: task after task from a feed, for runs, sweep slots and
streams) both start their workers here, with the same worker environment, logging and CPU reservation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from orchestrator.run.feed import worker_env


def worker_group(train_fn: Callable[[dict[str, Any]], Any], train_loop_config: dict[str, Any], *, name: str,
                 storage: Path, workers: int, cpus_per_worker: int, use_gpu: bool, max_failures: int = 0,
                 checkpoints_kept: int | None = None, callbacks: Sequence[Any] | None = None):
    """A `TorchTrainer` running `train_fn` on `workers` workers of `cpus_per_worker` CPUs (and a GPU each with
    `use_gpu`), its state under `storage/name`; `fit()` it to run."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    env = worker_env(use_gpu)
    return TorchTrainer(
        train_fn,
        train_loop_config=train_loop_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=checkpoints_kept),
                             worker_runtime_env={"env_vars": env} if env else None,
                             logging_config=LoggingConfig(log_level="WARNING"),
                             callbacks=list(callbacks) if callbacks else None),
    )
