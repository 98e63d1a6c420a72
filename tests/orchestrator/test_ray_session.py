"""Which Ray a run joins: only one this process holds, one the user named, or a live `ray start` cluster.

The slow test is the bug this module exists for: two `unlearn run` processes on one machine, started 5 s apart,
each with its own private Ray, and both finish (before, the second joined the first one's Ray with
`address="auto"` and died when the first ended).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.run.ray_session import named_address, started_cluster_address
from tests.tiny_run import tiny_run

ROOT = Path(__file__).resolve().parents[2]


def test_the_config_address_wins_over_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert named_address("10.0.0.2:6379") == "10.0.0.2:6379"
    assert named_address(None) == "10.0.0.1:6379"


def test_an_empty_ray_address_names_nothing(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert named_address(None) is None
    monkeypatch.delenv("RAY_ADDRESS")
    assert named_address(None) is None


def test_no_address_file_means_no_started_cluster(tmp_path):
    assert started_cluster_address(str(tmp_path)) is None


def test_an_address_file_without_a_live_cluster_is_not_joined(tmp_path):
    """What a crashed `ray start` leaves behind: the file names a GCS no process on this machine talks to."""
    (tmp_path / "ray_current_cluster").write_text("127.0.0.1:1\n")
    assert started_cluster_address(str(tmp_path)) is None


@pytest.fixture
def private_ray():
    import ray

    assert not ray.is_initialized()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_an_address_file_of_a_live_cluster_is_joined(tmp_path, private_ray):
    """The file's address is trusted while this machine's raylet carries it (`--gcs-address`)."""
    address = private_ray.get_runtime_context().gcs_address
    (tmp_path / "ray_current_cluster").write_text(address)
    assert started_cluster_address(str(tmp_path)) == address


@pytest.mark.slow
def test_workers_default_to_the_cpus_ray_has_free(private_ray):
    """Inside a Tune trial the trial holds a CPU itself: workers asking for the cluster's total would never start."""
    from orchestrator.config import parse_config
    from orchestrator.run.job import default_cpus_per_worker

    assert default_cpus_per_worker(parse_config({})) == 2

    @private_ray.remote(num_cpus=1)
    class Trial:
        def ready(self) -> bool:
            return True

    trial = Trial.remote()
    assert private_ray.get(trial.ready.remote())
    deadline = time.monotonic() + 30
    while private_ray.available_resources().get("CPU", 0) != 1:  # Ray's resource view catches up asynchronously
        assert time.monotonic() < deadline, private_ray.available_resources()
        time.sleep(0.1)
    assert default_cpus_per_worker(parse_config({})) == 1
    assert default_cpus_per_worker(parse_config({"train": {"workers": 2}})) == 1  # at least one each


SMALL = tiny_run()


@pytest.mark.slow
def test_two_runs_on_one_machine_each_use_their_own_ray(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    env = {**os.environ, "RAY_UNLEARN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    runs = []
    for name in ("first", "second"):
        log = open(tmp_path / f"{name}.log", "w")
        command = [sys.executable, "-m", "orchestrator.cli", "run", str(config), "--output", str(tmp_path / name),
                   "--set", "ray.num_cpus=1"]
        runs.append((name, subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(5)
    for name, process, log in runs:
        code = process.wait(timeout=600)
        log.close()
        text = (tmp_path / f"{name}.log").read_text()
        assert code == 0, f"{name} run failed:\n{text[-3000:]}"
        assert "using a private local Ray" in text
        assert (tmp_path / name / "summary.json").is_file()


# One `unlearn` process in small: its own private Ray (connect_ray), then a one-worker Ray Train run, whose
# PlacementGroupCleaner polls the controller through Ray's state API. The two processes wait for each other after
# starting Ray and after training, so that both private Rays are alive while either trains.
TWO_RAYS_CHILD = """
import sys, time
from pathlib import Path

from orchestrator.run.ray_session import connect_ray

me, other, storage = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]


def wait_for(path):
    deadline = time.monotonic() + 300
    while not path.exists():
        if time.monotonic() > deadline:
            sys.exit(f"the other process never wrote {path}")
        time.sleep(0.2)


connect_ray(None, 1)
import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

me.with_suffix(".up").touch()
wait_for(other.with_suffix(".up"))
TorchTrainer(lambda config: time.sleep(1), scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
             run_config=RunConfig(storage_path=storage, name=me.name)).fit()
me.with_suffix(".fit").touch()
wait_for(other.with_suffix(".fit"))
ray.shutdown()
"""


@pytest.mark.slow
def test_ray_trains_helpers_find_their_own_private_ray(tmp_path):
    """Two private Rays on one machine: Ray Train's PlacementGroupCleaner (an actor of each) used to auto-detect
    "the" cluster and print `ConnectionError: Found multiple active Ray instances` in both runs' output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    # Two Ray starts at once on a busy machine: Ray's 60 s for its dashboard to come up is not always enough.
    env.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "180")
    runs = {}
    for name, other in (("first", "second"), ("second", "first")):
        log = open(tmp_path / f"{name}.log", "w")
        command = [sys.executable, "-c", TWO_RAYS_CHILD, str(tmp_path / name), str(tmp_path / other),
                   str(tmp_path / "storage")]
        runs[name] = (subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    for name, (process, log) in runs.items():
        try:
            code = process.wait(timeout=600)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
        text = (tmp_path / f"{name}.log").read_text()
        assert code == 0, f"{name} failed:\n{text[-3000:]}"
        assert "using a private local Ray" in text
        assert "multiple active Ray instances" not in text, text[-3000:]
        assert "PlacementGroupCleanerMonitor" not in text, text[-3000:]  # the thread's death notice


def test_a_private_rays_dashboard_stays_on_this_machine_unless_asked(monkeypatch):
    from orchestrator.run.ray_session import private_dashboard_host

    monkeypatch.delenv("RAY_UNLEARN_DASHBOARD_HOST", raising=False)
    assert private_dashboard_host(None) == "127.0.0.1"
    monkeypatch.setenv("RAY_UNLEARN_DASHBOARD_HOST", "0.0.0.0")
    assert private_dashboard_host(None) == "0.0.0.0"
    assert private_dashboard_host("10.0.0.5") == "10.0.0.5"  # the config's ray.dashboard_host wins
