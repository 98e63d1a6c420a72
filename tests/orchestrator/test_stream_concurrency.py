"""A stream's methods run at the same time, each on its own worker group, when the cluster holds them; on a
small machine they queue (orchestrator/stream/driver.py `concurrent_groups`)."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest

from orchestrator.stream.driver import concurrent_groups
from tests.orchestrator.test_stream import ROOT, _command, _config, _env, _ledger_rows


def _shape(workers: int = 1, cpus: int = 1, gpu: bool = False) -> SimpleNamespace:
    return SimpleNamespace(workers=workers, cpus_per_worker=cpus, use_gpu=gpu)


def test_as_many_methods_at_once_as_the_cluster_holds_and_at_least_one():
    assert concurrent_groups(3, _shape(cpus=2), {"CPU": 2.0}) == 1  # a small machine: they queue
    assert concurrent_groups(3, _shape(cpus=1), {"CPU": 2.0}) == 2
    assert concurrent_groups(3, _shape(workers=2, cpus=8), {"CPU": 64.0}) == 3  # never more than the methods
    assert concurrent_groups(3, _shape(workers=8, cpus=8, gpu=True), {"CPU": 192.0, "GPU": 16.0}) == 2
    assert concurrent_groups(2, _shape(workers=8, cpus=8, gpu=True), {"CPU": 192.0, "GPU": 4.0}) == 1


@pytest.mark.slow
def test_two_methods_run_side_by_side_on_two_groups(tmp_path, stream_cache):
    config = _config(tmp_path, methods=[{"name": "ga"}, {"name": "npo"}], source="synthetic",
                     synthetic={"count": 3, "rate": 1.0, "seed": 0})
    out = tmp_path / "out"
    done = subprocess.run(_command(config, out), cwd=ROOT, env=_env(stream_cache),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 methods at a time, each on its own worker group" in done.stderr
    spans = {}
    for name in ("ga", "npo"):
        rows = _ledger_rows(out / name / "ledger.sqlite",
                            "SELECT dispatched_at, finished_at FROM batches WHERE state = 'applied'")
        assert len(rows) == 3
        spans[name] = (min(r[0] for r in rows), max(r[1] for r in rows))
    # Each method's requests were being applied while the other's were.
    assert spans["ga"][0] < spans["npo"][1] and spans["npo"][0] < spans["ga"][1]
    summary = json.loads((out / "stream_summary.json").read_text())
    assert set(summary["methods"]) == {"ga", "npo"}
