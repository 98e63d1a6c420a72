"""Run names and resumption: the same name resumes the same run, refuses another, and a killed driver resumes.

The slow test SIGKILLs a real `unlearn run` process (the driver, with its private Ray) after Ray Train has
registered a checkpoint, starts the same command again and checks that the workers resumed from that checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.run import state as run_state
from orchestrator.config import ConfigError, parse_config
from tests.tiny_run import tiny_run

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_name_follows_what_is_trained():
    config = parse_config({"method": {"name": "ga"}, "train": {"lr": 1e-4}})
    same = parse_config({"method": {"name": "ga"}, "train": {"lr": 1e-4, "max_failures": 2, "log_every": 3}})
    other = parse_config({"method": {"name": "ga"}, "train": {"lr": 2e-4}})
    name = run_state.default_run_name(config)
    assert name.startswith("default-ga-")
    assert run_state.default_run_name(same) == name  # how a run is carried out does not change what it trains
    assert run_state.default_run_name(other) != name
    assert run_state.default_run_name(config, target="/models/elsewhere") != name


def test_a_name_is_claimed_again_by_the_same_run_and_refused_to_another(tmp_path):
    config = parse_config({"method": {"name": "ga"}, "train": {"lr": 1e-4}})
    assert run_state.claim(tmp_path, "trial-7", config) is False  # nothing to resume yet
    (tmp_path / "ray" / "trial-7" / run_state.SNAPSHOT_FILE).write_text("{}")
    assert run_state.claim(tmp_path, "trial-7", config) is True
    with pytest.raises(ConfigError, match=r"run_name='trial-7' .* holds another run \(differing: train\.lr\)"):
        run_state.claim(tmp_path, "trial-7", config.with_overrides(**{"train.lr": 3e-4}))
    run_state.release(tmp_path, "trial-7")
    assert not (tmp_path / "ray" / "trial-7").exists()
    assert run_state.claim(tmp_path, "trial-7", config.with_overrides(**{"train.lr": 3e-4})) is False


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "-leading-dash", "x" * 129])
def test_bad_run_names_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="run_name="):
        run_state.claim(tmp_path, name, parse_config({}))
    assert not (tmp_path / "ray").exists()


def test_a_run_under_another_runs_name_is_refused_before_preparation(tmp_path, monkeypatch):
    from orchestrator.run import unlearning as run

    monkeypatch.setattr(run, "prepare", lambda *a, **k: pytest.fail("prepared despite a clashing run name"))
    monkeypatch.setattr(run, "connect_ray", lambda *a, **k: pytest.fail("started Ray despite a clashing run name"))
    first = parse_config({"method": {"name": "ga"}, "output_dir": str(tmp_path)})
    run_state.claim(tmp_path, "mine", first)
    with pytest.raises(ConfigError, match="holds another run"):
        run.run_unlearning(first.with_overrides(**{"method.name": "npo"}), run_name="mine", progress=print)


EPOCHS = 30
SMALL = tiny_run(train={"epochs": EPOCHS, "lr": 1e-4, "checkpoint_every_epochs": 1, "log_every": 1000})


@pytest.mark.slow
def test_a_killed_driver_resumes_from_its_last_checkpoint(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "run"
    env = {**os.environ, "RAY_UNLEARN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "orchestrator.cli", "run", str(config), "--output", str(out),
               "--set", "ray.num_cpus=1"]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while not list(out.glob(f"ray/*/{run_state.SNAPSHOT_FILE}")):  # Ray Train registered a checkpoint
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.1)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert not (out / "summary.json").exists(), "the first run finished before it was killed"

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["resumed_from_step"] > 0
    assert summary["train"]["steps"] == 2 * EPOCHS
    assert summary["settings"]["epochs"] == EPOCHS and summary["settings"]["lr"] == 1e-4
    assert summary["after"]["forget_rouge_l"] is not None
    assert not (out / "ray" / summary["run_name"]).exists()  # a finished run's Ray Train state is released
