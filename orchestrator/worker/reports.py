"""The one way a worker reports to Ray Train: metrics, and optionally a checkpoint folder.

Every worker of a group calls it the same number of times (Ray Train's rule); the metrics are what Ray Train's
callbacks see (Tune's `TuneReportCallback`, `orchestrator/observe/training_metrics.py`).
"""

from __future__ import annotations

from typing import Any


def report(metrics: dict[str, Any], checkpoint_dir: str | None = None, name: str | None = None) -> None:
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
