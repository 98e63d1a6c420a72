"""`unlearn run` as a Ray job on a `ray start` cluster, and its metrics on the node's Prometheus endpoint.

Starts a real head node (`ray start --head`, 127.0.0.1, every port free and its own `--temp-dir`, so that its
address file is not the one `unlearn` finds on this machine), submits a small run with `ray job submit`, waits for
SUCCEEDED and reads the project's series from `--metrics-export-port`. `ray stop` would stop every Ray on the
machine, other people's included: the test ends only the processes of its own cluster, found by its temp dir and
GCS port. Slow (about two minutes): run with `--run-slow`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.orchestrator.test_metrics import free_port, scrape_until
from tests.tiny_run import tiny_run

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = {"name": "jobs", **tiny_run(method={"name": "graddiff"})}
PORT_FLAGS = ("port", "dashboard-port", "metrics-export-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "node-manager-port", "object-manager-port")


def _cluster_processes(temp_dir: str, gcs_port: int) -> list[psutil.Process]:
    """Every process of the cluster started in `temp_dir`: those naming its temp dir or GCS port, and their children."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if any(temp_dir in a or a.endswith(f":{gcs_port}") or a == f"--gcs_server_port={gcs_port}" for a in args):
            found[proc.pid] = proc
            try:
                found.update({child.pid: child for child in proc.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
    found.pop(os.getpid(), None)
    return list(found.values())


def _end_cluster(temp_dir: str, gcs_port: int) -> None:
    procs = _cluster_processes(temp_dir, gcs_port)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def _job_cli(args: list[str], dashboard: str, env: dict[str, str]) -> str:
    done = subprocess.run([str(BIN / "ray"), "job", *args, "--address", dashboard], env=env, capture_output=True,
                          text=True, timeout=60)
    return done.stdout + done.stderr


@pytest.fixture
def ray_head():
    """A `ray start --head` cluster of its own; yields (dashboard URL, metrics URL, environment for its clients)."""
    temp_dir = tempfile.mkdtemp(prefix="ru-jobs-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    ports = {flag: free_port() for flag in PORT_FLAGS}
    # Token authentication on, with a token of its own: what the README asks of a cluster that others can reach.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    command = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats",
               *(f"--{flag}={port}" for flag, port in ports.items())]
    try:
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield (f"http://127.0.0.1:{ports['dashboard-port']}", f"http://127.0.0.1:{ports['metrics-export-port']}/metrics",
               env)
    finally:
        _end_cluster(temp_dir, ports["port"])
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_unlearn_run_as_a_ray_job_exports_its_metrics(ray_head, tmp_path):
    dashboard, metrics_url, env = ray_head
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    run_name = "ray-job-metrics"
    runtime_env = {"env_vars": {"RAY_UNLEARN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}}
    submit = [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--submission-id", "unlearn-test",
              "--runtime-env-json", json.dumps(runtime_env), "--",
              str(BIN / "unlearn"), "run", str(config), "--output", str(tmp_path / "run"), "--run-name", run_name]
    started = time.monotonic()
    # Without --no-wait, `ray job submit` follows the job's logs until it ends.
    submitted = subprocess.run(submit, env=env, cwd=ROOT, capture_output=True, text=True, timeout=420)
    status = _job_cli(["status", "unlearn-test"], dashboard, env)
    assert "succeeded" in status.lower(), (status, submitted.stdout[-3000:], submitted.stderr[-3000:])
    logs = _job_cli(["logs", "unlearn-test"], dashboard, env)
    assert "using the Ray cluster at" in logs  # the job's driver joined the cluster (RAY_ADDRESS), not a private Ray
    assert (tmp_path / "run" / "summary.json").is_file()
    refused = _job_cli(["status", "unlearn-test"], dashboard, {**env, "RAY_AUTH_TOKEN": "0" * 64})
    assert "Invalid authentication token" in refused, refused[-500:]  # a wrong token is turned away

    run = {"run": run_name, "method": "graddiff"}
    seen = scrape_until(metrics_url, {
        "ray_ray_unlearn_train_loss": run,
        "ray_ray_unlearn_train_forget_loss": {**run, "term": "forget_nll"},
        "ray_ray_unlearn_train_retain_loss": run,
        "ray_ray_unlearn_train_step": run,
        "ray_ray_unlearn_train_step_seconds": run,
        "ray_ray_unlearn_train_tokens_per_second": run,
        "ray_ray_unlearn_eval_forget_quality": run,
        "ray_ray_unlearn_eval_model_utility": run,
        "ray_ray_unlearn_eval_mia_auc": run,
        "ray_ray_unlearn_runs_total": run,
    })
    assert seen["ray_ray_unlearn_runs_total"] == 1.0
    assert seen["ray_ray_unlearn_train_step"] >= 1 and seen["ray_ray_unlearn_train_step_seconds"] > 0
    assert 0.0 <= seen["ray_ray_unlearn_eval_mia_auc"] <= 1.0
    print(f"ray job + scrape: {time.monotonic() - started:.0f} s")
