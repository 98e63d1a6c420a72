"""Real sweeps on a small embedded problem: real Ray Tune, real Ray Train runs, the real tiny Llama.

Slow (a few minutes on 2 cores): run with `--run-slow`. One module-wide cache, so the tiny models are built once.
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

from tests.test_end_to_end import SMALL

ROOT = Path(__file__).resolve().parents[2]


def small_sweep(folder: Path, methods: dict, max_concurrent: int) -> dict:
    return {**SMALL, "name": "sweep-test", "eval": {"max_per_split": 24, "max_new_tokens": 16},
            "train": {**SMALL["train"], "epochs": 1},
            "sweep": {"methods": methods, "seeds": [0], "include_default": False, "max_concurrent": max_concurrent,
                      "output_dir": str(folder)}}




def trial_points(folder: Path) -> dict[str, dict]:
    """Each trial's efficacy/utility recomputed from its own run's summary.json (not from what Tune was told)."""
    from orchestrator.sweep.analysis import trial_metrics

    out = {}
    for path in sorted((folder / "trials").glob("*/summary.json")):
        run = json.loads(path.read_text())
        out[path.parent.name] = {**trial_metrics(run["before"], run["after"]), "method": run["method"],
                                 "hyperparameters": run["hyperparameters"], "lr": run["settings"]["lr"]}
    return out


def tune_intervals(folder: Path, study: str = "all") -> dict[str, tuple[float, float]]:
    """(start, end) wall-clock seconds of each trial, from its last Tune result."""
    out = {}
    for path in (folder / "tune" / study).glob("*/result.json"):
        last = json.loads(path.read_text().strip().splitlines()[-1])
        out[path.parent.name] = (last["timestamp"] - last["time_total_s"], last["timestamp"])
    return out


@pytest.mark.slow
def test_small_sweep_in_both_trial_modes_agrees_with_the_trials_own_metrics_and_across_modes(tmp_path):
    """The same 4-trial sweep on resident slots (`auto`) and with a TorchTrainer per trial: each summary and front
    agree with its trials' own run summaries, and the two modes give every cell the same metrics."""
    by_mode = {mode: check_small_sweep(tmp_path / mode, mode) for mode in ("auto", "per_trial")}
    assert by_mode["auto"].keys() == by_mode["per_trial"].keys()
    for cell, metrics in by_mode["auto"].items():
        other = by_mode["per_trial"][cell]
        for key, value in metrics.items():
            assert other[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (cell, key)


def check_small_sweep(folder: Path, trial_workers: str) -> dict:
    """Run the small sweep in `trial_workers` mode, check it, and return each cell's metrics."""
    from orchestrator.config import parse_config
    from orchestrator.sweep import analysis
    from orchestrator.sweep.driver import run_sweep

    raw = small_sweep(folder, {"ga": {"space": {"lr": {"grid": [1e-4, 3e-4]}}},
                               "undial": {"space": {"gamma": {"grid": [3.0, 30.0]}}}}, 2)
    config = parse_config({**raw, "sweep": {**raw["sweep"], "trial_workers": trial_workers}})
    result = run_sweep(config, progress=lambda m: None)
    summary = json.loads((folder / "sweep_summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary, default=str))
    assert summary["status"] == {"complete": 4}
    if trial_workers == "auto":  # resident slots: a worker group per reused trial actor, not one per trial
        assert summary["timing"]["trial_workers"] == "resident"
        slots = {t["slot"] for t in summary["trials"]}
        # Two slots; Tune may retire an actor rather than cache it (then a third actor starts its own group).
        assert 2 <= len(slots) <= 3 and {t["slot_group_starts"] for t in summary["trials"]} == {1}
        assert summary["timing"]["worker_groups"] == len(slots) < 4
        assert not (folder / "resident").exists()  # the slots' Ray Train state is removed with the sweep's end
    else:
        assert summary["timing"]["trial_workers"] == "per_trial" and summary["timing"]["worker_groups"] == 4
        assert all(t["slot"] is None for t in summary["trials"])

    own = trial_points(folder)
    assert set(own) == {t["trial_id"] for t in summary["trials"]}
    for t in summary["trials"]:
        mine = own[t["trial_id"]]
        assert t["method"] == mine["method"]
        for key in ("rouge_efficacy", "utility", "score", "forget_quality"):
            assert t[key] == pytest.approx(mine[key]), (t["trial_id"], key)
        if t["method"] == "undial":
            assert mine["hyperparameters"]["gamma"] == t["params"]["gamma"]
        else:
            assert mine["lr"] == t["params"]["lr"]
        assert t["timings"]["train_loop"] > 0 and t["timings"]["evaluate"] > 0

    ids = sorted(own)
    points = [(own[i]["rouge_efficacy"], own[i]["utility"]) for i in ids]
    assert sorted(summary["pareto"]["rouge_efficacy"]["all"]) == sorted(ids[i] for i in analysis.pareto_front(points))
    for method in ("ga", "undial"):
        mine = [(own[i]["rouge_efficacy"], own[i]["utility"]) for i in ids if own[i]["method"] == method]
        assert summary["robustness"][method]["hypervolume"] == pytest.approx(analysis.hypervolume(mine))
        assert summary["robustness"][method]["cells"] == 2

    # Two at a time, never more (2 CPUs, 1 worker x 1 CPU per trial; the trial's driver takes none).
    spans = tune_intervals(folder)
    assert len(spans) == 4
    # Tune's `timestamp` is whole seconds: a trial that starts on a reused actor as another ends can seem to overlap
    # it by up to a second, so each span is taken to start 1 s later than it reads.
    edges = sorted([(s + 1.0, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak == 2
    # Every trial's training reports reached Tune while it trained (TuneReportCallback, or forwarded by its slot).
    for i in ids:
        reported = [json.loads(line) for line in (folder / "tune" / "all" / i / "result.json").read_text().splitlines()]
        losses = [r["step"] for r in reported if "loss" in r]
        assert losses and losses == sorted(losses) and reported[-1]["final"] == 1.0
    # TensorBoard logs through Tune, the report and its plots.
    assert all(list((folder / "tune" / "all" / i).glob("events.out.tfevents.*")) for i in ids)
    report = (folder / "sweep_report.md").read_text()
    assert "## Robustness" in report and "harmonic mean" in report
    assert (folder / "plots" / "tradeoff_rouge_efficacy.png").stat().st_size > 0
    assert (folder / "plots" / "expected_max.png").exists()
    return {(t["method"], json.dumps(t["params"], sort_keys=True)): {k: t[k] for k in ("rouge_efficacy", "utility",
                                                                                       "forget_quality", "score")}
            for t in summary["trials"]}


@pytest.mark.slow
def test_an_optuna_sweep_runs_to_its_end(tmp_path):
    """TPE on two objectives, named as the trials report them (it once asked for 'efficacy', which no trial
    reports, and Tune stopped the study at the first result)."""
    from orchestrator.config import parse_config
    from orchestrator.sweep.driver import run_sweep

    raw = small_sweep(tmp_path, {"npo": {"space": {"lr": {"loguniform": [1e-5, 1e-3]}, "beta": {"uniform": [0.05,
                                                                                                            0.5]}}}}, 2)
    config = parse_config({**raw, "sweep": {**raw["sweep"], "search": "optuna", "num_samples": 3}})
    run_sweep(config, progress=lambda m: None)
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert summary["status"] == {"complete": 3}
    for trial in summary["trials"]:
        assert 1e-5 <= trial["params"]["lr"] <= 1e-3 and 0.05 <= trial["params"]["beta"] <= 0.5
        assert trial["rouge_efficacy"] is not None and trial["utility"] is not None


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    from ray.tune import ExperimentAnalysis

    from orchestrator.sweep.driver import resume_sweep

    folder = tmp_path / "sweep"
    path = tmp_path / "sweep.yaml"
    # Six trials of 20 epochs (~7 s each on a resident slot), two at a time: shorter ones were all done before the
    # interruption landed.
    raw = small_sweep(folder, {"ga": {"space": {"lr": {"grid": [5e-5, 1e-4, 3e-4]}}}}, 2)
    path.write_text(yaml.safe_dump({**raw, "train": {**raw["train"], "epochs": 20},
                                    "sweep": {**raw["sweep"], "seeds": [0, 1]}}))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 420
    # A trial's run summary is written just before its final report, which Tune's result.json records seconds later
    # (more on a loaded machine): wait for that record, not the summary.
    def final_reported(result_json: Path) -> bool:
        lines = result_json.read_text().splitlines()
        try:
            return bool(lines) and json.loads(lines[-1]).get("final") == 1.0
        except json.JSONDecodeError:  # a line being written
            return False

    while not any(final_reported(r) for r in (folder / "tune" / "all").glob("*/result.json")):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, "no trial finished in time"
        time.sleep(0.2)
    # The trial's function returns after its final report; then Tune marks it terminated: 2 s was too short with
    # three jobs on 2 cores (no trial was terminated yet at the interruption). Two of the six are still to run.
    time.sleep(5)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its experiment state and stops
    proc.communicate(timeout=180)
    # Finished is what Tune's saved state says (a trial may have written its run summary and not yet reported).
    finished = {t.trial_id: (folder / "trials" / t.trial_id / "summary.json").stat().st_mtime_ns
                for t in ExperimentAnalysis(str(folder / "tune" / "all")).trials if t.status == "TERMINATED"}
    results = {i: (folder / "tune" / "all" / i / "result.json").read_text() for i in finished}
    assert 1 <= len(finished) < 6

    result = resume_sweep(folder, progress=lambda m: None)
    assert result.summary["status"] == {"complete": 6}
    assert {t["trial_id"] for t in result.summary["trials"]} >= set(finished)
    # The trials that had finished were not run again: their run summaries and Tune results are untouched.
    for trial_id, mtime in finished.items():
        assert (folder / "trials" / trial_id / "summary.json").stat().st_mtime_ns == mtime
        assert (folder / "tune" / "all" / trial_id / "result.json").read_text() == results[trial_id]
    assert len(trial_points(folder)) == 6
    assert result.summary["timing"]["sessions"] == 2


# A cache of their own for these real-pipeline tests, and no Ray left behind (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("isolated_cache_and_ray")
