"""Resident run workers: one Ray Train worker group serves run after run, each as a TorchTrainer per call would.

The slow tests run real Ray Train on a tiny problem: the same config through a TorchTrainer of its own and through
resident workers gives the same losses and metrics; a second run reuses the group; a worker killed midway takes the
group down, the call says so, and the same call made again starts a new group and resumes from its checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.run import state as run_state
from orchestrator.config import ConfigError, parse_config
from orchestrator.run.resident import ResidentWorkers
from orchestrator.worker.job import WorkerSettings
from tests.tiny_run import tiny_run

EPOCHS = 4
SMALL = tiny_run(train={"epochs": EPOCHS, "lr": 1e-4, "log_every": 1}, ray={"num_cpus": 2})


def _config(output: Path, **overrides):
    return parse_config(SMALL).with_overrides(output_dir=str(output), **overrides)


def _losses(result) -> list[float]:
    return [h["loss"] for h in result.history]


def test_a_run_that_does_not_fit_the_group_is_refused_before_any_work(tmp_path, monkeypatch):
    from orchestrator.run import unlearning as run

    monkeypatch.setattr(run, "prepare", lambda *a, **k: pytest.fail("prepared a run that cannot be served"))
    monkeypatch.setattr(run, "connect_ray", lambda *a, **k: pytest.fail("started Ray for a run that cannot be served"))
    workers = ResidentWorkers(workers=1, cpus_per_worker=1)
    with pytest.raises(ConfigError, match=r"train\.workers=2 \(the resident workers have 1\)"):
        run.run_unlearning(_config(tmp_path, **{"train.workers": 2}), workers=workers, progress=print)
    with pytest.raises(ConfigError, match=r"train\.cpus_per_worker=2 \(the resident workers have 1\)"):
        run.run_unlearning(_config(tmp_path, **{"train.cpus_per_worker": 2}), workers=workers, progress=print)
    with pytest.raises(ValueError, match="callbacks or workers, not both"):
        run.run_unlearning(_config(tmp_path), workers=workers, callbacks=[object()], progress=print)
    with pytest.raises(ValueError, match="on_report is for resident workers"):
        run.run_unlearning(_config(tmp_path), on_report=print, progress=print)
    workers.check_fits(WorkerSettings(workers=1, deepspeed="cluster/deepspeed/zero3.json"))  # its own engine
    with pytest.raises(ConfigError, match="a DeepSpeed run's state is sharded across its workers"):
        workers.check_fits(WorkerSettings(workers=1, deepspeed="cluster/deepspeed/zero3.json", max_failures=1))
    with pytest.raises(ConfigError, match="workers=0 must be >= 1"):
        ResidentWorkers(workers=0)
    assert not workers.alive


def test_a_checkpoint_of_one_mode_is_not_resumed_by_the_other(tmp_path):
    config = _config(tmp_path)
    run_state.claim(tmp_path, "r", config)
    (tmp_path / "ray" / "r" / run_state.SNAPSHOT_FILE).write_text("{}")
    run_state.check_resumable(tmp_path, "r", resident=False)
    with pytest.raises(ConfigError, match="checkpointed by a TorchTrainer of its own"):
        run_state.check_resumable(tmp_path, "r", resident=True)
    (tmp_path / "ray" / "r" / run_state.SNAPSHOT_FILE).unlink()
    run_state.resident_checkpoint(tmp_path, "r").mkdir()
    assert run_state.claim(tmp_path, "r", config) is True  # something to resume
    run_state.check_resumable(tmp_path, "r", resident=True)
    with pytest.raises(ConfigError, match="checkpointed by resident workers"):
        run_state.check_resumable(tmp_path, "r", resident=False)


@pytest.mark.slow
def test_resident_workers_serve_runs_as_a_trainer_per_call_does(tmp_path):
    from orchestrator.run.ray_session import connect_ray
    from orchestrator.run.unlearning import RunError, run_unlearning

    connect_ray(None, 2, progress=print)
    alone = run_unlearning(_config(tmp_path / "alone"), progress=print)
    reports: list[dict] = []
    with ResidentWorkers(workers=1, storage_root=tmp_path / "group-state") as workers:
        first = run_unlearning(_config(tmp_path / "first"), workers=workers, on_report=reports.append,
                               progress=print)
        second = run_unlearning(_config(tmp_path / "second", **{"method.name": "npo"}), workers=workers,
                                progress=print)
        again = run_unlearning(_config(tmp_path / "again"), workers=workers, progress=print)
        # A run that fails on the workers fails alone: the group serves the next one.
        with pytest.raises(RunError, match="unlearning failed: .*no-such-model"):
            run_unlearning(_config(tmp_path / "broken"), target=tmp_path / "no-such-model", before={},
                           workers=workers, progress=print)
        assert workers.alive
        damaged = run_state.resident_checkpoint(tmp_path / "damaged", "d")  # a checkpoint damaged from outside
        run_state.claim(tmp_path / "damaged", "d", _config(tmp_path / "damaged"))
        damaged.mkdir()
        (damaged / "train_state.pt").write_bytes(b"PK\x03\x04 cut short")
        with pytest.raises(RunError, match=r"checkpoint .*resident_checkpoint cannot be read .* remove it"):
            run_unlearning(_config(tmp_path / "damaged"), run_name="d", workers=workers, progress=print)
        assert (damaged / "train_state.pt").is_file()  # refused, not removed
        assert run_unlearning(_config(tmp_path / "after-failure"), workers=workers, progress=print).after
        assert workers.starts == 1 and workers.alive
    assert not workers.alive
    assert list((tmp_path / "group-state").iterdir()) == []  # the group's own Ray Train state went with it

    # The caller saw every progress report of its run, on its own thread, without the group's tags.
    progress_reports = [r for r in reports if "loss" in r]
    assert [r["step"] for r in progress_reports] == [h["step"] for h in first.history]
    assert [r["loss"] for r in progress_reports] == pytest.approx(_losses(first))
    assert not any({"run", "method"} & set(r) for r in reports)

    # Nothing carries over from one run to the next: the same config gives the same run either way.
    assert first.settings["cpus_per_worker"] == alone.settings["cpus_per_worker"] == 2
    assert len(_losses(first)) == EPOCHS * 2
    for a, b, c in zip(_losses(first), _losses(alone), _losses(again), strict=True):
        assert a == pytest.approx(b, rel=1e-6) and c == pytest.approx(b, rel=1e-6)
    assert first.after.keys() == alone.after.keys()
    for key, value in alone.after.items():
        assert first.after[key] == (value if value is None else pytest.approx(value, rel=1e-6, abs=1e-9)), key
    assert second.method == "npo" and _losses(second) != _losses(first)
    for result in (first, second):
        out = Path(result.output_dir)
        assert json.loads((out / "summary.json").read_text())["after"] == result.after
        assert list((out / "model").glob("*.safetensors"))
        assert not (out / "ray" / result.run_name).exists()  # a finished run's state is released
    # The first run started the group; the later ones wait only for the feed's round trip.
    assert second.timings["ray_train_start"] < 5 and again.timings["ray_train_start"] < 5


@pytest.mark.slow
def test_two_resident_workers_share_each_run(tmp_path):
    """Rank 0 reads the feed and broadcasts each job: both workers train every run, on their shards."""
    from orchestrator.run.ray_session import connect_ray
    from orchestrator.run.unlearning import run_unlearning

    connect_ray(None, 2, progress=print)
    overrides = {"train.workers": 2, "train.cpus_per_worker": 1}
    with ResidentWorkers(workers=2, cpus_per_worker=1) as workers:
        runs = [run_unlearning(_config(tmp_path / name, **{**overrides, "method.name": name}), workers=workers,
                               progress=print) for name in ("ga", "npo")]
        assert workers.starts == 1
    for result in runs:
        assert result.world_size == 2 and result.settings["cpus_per_worker"] == 1
        assert result.train["steps"] == EPOCHS  # 2 forget rows over 2 workers: 1 step an epoch
        assert result.after["forget_rouge_l"] is not None
    assert runs[1].timings["ray_train_start"] < 5


@pytest.mark.slow
def test_a_killed_worker_takes_the_group_down_and_the_run_made_again_resumes(tmp_path, monkeypatch):
    from orchestrator.run import unlearning as run
    from orchestrator.run.ray_session import connect_ray

    from orchestrator.run import resident
    from tests.faults import killing_resident_loop

    marker = tmp_path / "killed"
    # The worker SIGKILLs itself after step 3 (the epoch-1 checkpoint is written); the restarted group runs through.
    monkeypatch.setattr(resident, "resident_loop_per_worker", killing_resident_loop(3, 0, str(marker)))
    connect_ray(None, 2, progress=print)
    config = _config(tmp_path / "run", **{"train.checkpoint_every_epochs": 1})
    with ResidentWorkers(workers=1) as workers:
        with pytest.raises(run.RunError, match="resident workers stopped during the run"):
            run.run_unlearning(config, run_name="killed", workers=workers, progress=print)
        assert marker.is_file() and not workers.alive
        assert run_state.resident_checkpoint(tmp_path / "run", "killed").is_dir()
        messages: list[str] = []
        result = run.run_unlearning(config, run_name="killed", workers=workers, progress=messages.append)
        assert workers.starts == 2
    assert any(m.startswith("resuming") for m in messages)
    assert result.train["resumed_from_step"] == 2 and result.train["steps"] == 2 * EPOCHS
    assert not (tmp_path / "run" / "ray" / "killed").exists()


# A cache of their own for these real-pipeline tests, and no Ray left behind (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("isolated_cache_and_ray")
