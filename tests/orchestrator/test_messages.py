"""The contracts across the Ray boundary are typed: a misspelt or missing field fails where the message is built,
not as a silent `None` on the other side."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.config import TrainConfig, parse_config
from orchestrator.run.feed import Idle, Stop, Task, TaskDone, next_message
from orchestrator.stream.worker import ApplyBatch, BatchResult, ServeModel
from orchestrator.worker.batching import UnlearningRows
from orchestrator.worker.job import TrainJob, WorkerSettings, WorkerSummary


def test_worker_settings_hold_exactly_the_train_config_and_the_threads():
    """A new `train:` key must reach the workers: the settings' fields are TrainConfig's, plus the threads."""
    assert set(WorkerSettings.names()) == set(TrainConfig.model_fields) | {"threads"}


def test_worker_settings_refuse_a_misspelt_field():
    with pytest.raises(TypeError, match="lrr"):
        WorkerSettings(lrr=1e-4)
    settings = WorkerSettings(lr=1e-4)
    with pytest.raises(AttributeError):
        settings.epoch  # noqa: B018 - the field is `epochs`
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.lr = 1.0  # type: ignore[misc]


def test_the_resolved_train_config_builds_settings():
    from orchestrator.run.job import worker_settings

    settings = worker_settings(parse_config({"method": {"name": "npo"}, "train": {"cpus_per_worker": 3}}))
    assert settings.cpus_per_worker == settings.threads == 3
    assert settings.lr > 0 and settings.epochs >= 1  # from NPO's recipe


def test_a_train_job_without_its_settings_fails_where_it_is_built():
    with pytest.raises(TypeError, match="train"):
        TrainJob(target_dir="t", method_name="ga", method_hparams={}, rows=UnlearningRows(forget=[]),  # type: ignore
                 pad_token_id=0)


def test_a_worker_summary_names_every_field():
    with pytest.raises(TypeError, match="evaluation"):
        WorkerSummary(history=[], world_size=1, timings={}, zero_stage=None, parameters={}, steps=0,  # type: ignore
                      epochs_run=0, early_stop=None, resumed_from_step=None, kept_forget_indices=None,
                      reference_cache={}, device="cpu", dtype="float32", threads=1)


def test_stream_messages_are_typed():
    with pytest.raises(TypeError, match="measure_baseline"):
        ServeModel(key="k", base_dir="b", dtype="float32", use_gpu=False, threads=1, evaluation=None)  # type: ignore
    with pytest.raises(TypeError, match="checkpoint_dir"):
        ApplyBatch(key="k", batch=1, request_ids=[], job=None, current=[], earlier=[],  # type: ignore
                   excluded_ids=[], baseline_utility=0.5)
    result = BatchResult(1, "applied", None, "/c", {}, {}, {}, {})
    with pytest.raises(AttributeError):
        result.checkpoint_path  # noqa: B018 - the field is `checkpoint`


class _Feed:
    def __init__(self, message):
        self.message = message

    def get(self, block: bool, timeout: float):
        return self.message


def test_the_worker_feed_refuses_an_untyped_message():
    assert isinstance(next_message(_Feed(Stop()), rank=0, world_size=1), Stop)
    assert isinstance(next_message(_Feed(Idle()), rank=0, world_size=1), Idle)
    task = Task(call=3, task=None)  # type: ignore[arg-type]
    assert next_message(_Feed(task), rank=0, world_size=1) is task
    with pytest.raises(TypeError, match="unexpected message"):
        next_message(_Feed({"kind": "stop"}), rank=0, world_size=1)
    with pytest.raises(TypeError):
        TaskDone(call=1)  # type: ignore[call-arg]


def test_a_feed_gone_with_its_owner_stops_the_group():
    """A sweep's trial actor owns its slot's feed; when Tune ends the actor, the workers stop instead of dying on
    the dead queue with a traceback."""
    from ray.exceptions import ActorDiedError

    class DeadFeed:
        def get(self, block: bool, timeout: float):
            raise ActorDiedError()

    assert isinstance(next_message(DeadFeed(), rank=0, world_size=1), Stop)
