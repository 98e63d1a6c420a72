"""`unlearn sweep`: Ray Tune over methods and hyperparameters, each trial one `run_unlearning`.

`run_sweep(config)` prepares once (the tiny models are built before any trial starts, so no two trials build them
at once), then runs one Tune experiment per *study* and writes the answer (`report.py`). A study is every method
together (grid and random search without early stopping: one queue keeps every slot busy) or one method alone
(Optuna's TPE has one space per study; ASHA's rungs compare a method's trials with each other, not GA's loss with
NPO's). `resume_sweep(folder)` restores each study with `Tuner.restore`: finished trials keep their results and
are not run again, unfinished ones start again under the same trial id (and so resume their Ray Train run).

Folder layout: `sweep_config.json` (the experiment), `tune/<study>/` (Tune's state, per-trial results and
TensorBoard logs), `trials/<trial id>/` (each run's `summary.json` and report), `sweep_summary.json`,
`sweep_report.md`, `plots/`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from orchestrator.config import ConfigError, ExperimentConfig, parse_config
from orchestrator.sweep import space
from orchestrator.sweep.config import SweepConfig
from orchestrator.sweep.trainable import RESIDENT_DIR, TIMING_PREFIX, run_trial
from orchestrator.observe.progress import Progress

CONFIG_FILE = "sweep_config.json"
SESSIONS_FILE = "sweep_sessions.json"
TUNE_DIR = "tune"
# Tune refuses a result that lacks a searcher's metric unless this is 1 (ray/tune/execution/tune_controller.py).
STRICT_METRICS = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
# The trial's driver only waits on Ray Train, whose workers hold the CPUs: it asks for no CPU (Tune's default is 1,
# which on a 2-CPU machine would leave no CPU for the workers). Tune refuses an empty request, so it asks for one
# byte of Ray's logical "memory" resource instead, which every node has.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 1}


@dataclass
class SweepResult:
    folder: Path
    summary: dict[str, Any]
    summary_path: Path
    report_path: Path


def sweep_folder(config: ExperimentConfig) -> Path:
    assert config.sweep is not None
    return Path(config.sweep.output_dir or f"runs/{config.name}-sweep").resolve()


def studies(sweep: SweepConfig) -> list[tuple[str, list[str]]]:
    """(study name, its methods): all together, or one study per method under Optuna or ASHA."""
    if sweep.search == "optuna" or sweep.asha is not None:
        return [(m, [m]) for m in sweep.methods]
    return [("all", list(sweep.methods))]


def train_defaults(config: ExperimentConfig, method: str) -> dict[str, Any]:
    """The lr and epochs the base config runs `method` with (its train section, else the method's recipe)."""
    assert config.sweep is not None
    resolved = config.with_overrides(**{"method.name": method,
                                        "method.hparams": config.sweep.methods[method].hparams}).resolved_train()
    return {"lr": resolved["lr"], "epochs": resolved["epochs"]}


def check_sweep(config: ExperimentConfig) -> int:
    """Refuse a sweep larger than its budget, or one whose efficacy cannot be measured (torch- and Ray-free: the
    CLI calls it before importing them)."""
    if config.sweep is None:
        raise ConfigError("the config has no `sweep:` section (see experiments/sweep_default.yaml)")
    if config.sweep.trial_workers == "resident" and config.train.sharded_checkpoints:
        raise ConfigError("sweep.trial_workers=resident keeps a trial's checkpoint as rank 0's files, and a "
                          "DeepSpeed trial's state is sharded across its workers: drop train.checkpoint_every_epochs "
                          "and train.max_failures, or use trial_workers: per_trial (or auto)")
    if config.sweep.efficacy == "retain_model" and config.model.name != "tiny" and not config.model.retain_model:
        raise ConfigError("sweep.efficacy=retain_model measures forgetting against the retain model: set "
                          "model.retain_model (a model fine-tuned without the forget set)")
    if config.sweep.efficacy == "attacked" and config.eval.attacks is None and not config.sweep.attacks:
        raise ConfigError("sweep.efficacy=attacked ranks on the forget efficacy left under recovery attacks: set "
                          "sweep.attacks: true (or an eval.attacks section)")
    return space.check_budget(config.sweep, {m: train_defaults(config, m) for m in config.sweep.methods})


def resident_trials(config: ExperimentConfig) -> bool:
    """Whether the sweep's trials run on resident worker groups, one per slot, rather than a TorchTrainer each."""
    assert config.sweep is not None
    return config.sweep.runs_resident(config.train.sharded_checkpoints)


def max_concurrent(config: ExperimentConfig) -> int:
    """Trials at once: the configured number, else what the cluster holds of one trial's workers."""
    import ray

    assert config.sweep is not None
    if config.sweep.max_concurrent:
        return config.sweep.max_concurrent
    resources = ray.cluster_resources()
    workers = config.train.workers
    if config.train.use_gpu:
        return max(1, int(resources.get("GPU", 0)) // workers)
    cpus = config.train.cpus_per_worker or config.sweep.cpus_per_worker
    return max(1, int(resources.get("CPU", 0)) // (workers * cpus))


def run_sweep(config: ExperimentConfig, progress: Progress = print) -> SweepResult:
    """Run the sweep of `config.sweep` (a config error if there is none) and write its summary and report."""
    check_sweep(config)
    folder = sweep_folder(config)
    saved = folder / CONFIG_FILE
    if saved.is_file() and list((folder / TUNE_DIR).glob("*/experiment_state-*.json")):
        same = parse_config(json.loads(saved.read_text()), source=str(saved)) == config  # new keys: defaults
        raise ConfigError(f"{folder} already holds {'this' if same else 'another'} sweep; "
                          + (f"finish it with `unlearn sweep --resume {folder}`" if same else "")
                          + (" or " if same else "") + "choose another sweep.output_dir (--output)")
    folder.mkdir(parents=True, exist_ok=True)
    saved.write_text(config.model_dump_json(indent=2))
    return _run(config, folder, resume=False, progress=progress)


def resume_sweep(folder: str | Path, progress: Progress = print) -> SweepResult:
    """Restore an interrupted sweep from its folder and finish it, without running finished trials again."""
    folder = Path(folder).resolve()
    saved = folder / CONFIG_FILE
    if not saved.is_file():
        raise ConfigError(f"{folder} is not a sweep folder (no {CONFIG_FILE})")
    try:
        raw = json.loads(saved.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{saved} cannot be read ({err}); it holds the sweep's experiment: restore it, or start "
                          "the sweep again in another folder") from None
    config = parse_config(raw, source=str(saved))
    return _run(config, folder, resume=True, progress=progress)


def _run(config: ExperimentConfig, folder: Path, resume: bool, progress: Progress) -> SweepResult:
    from orchestrator.run.prepare import prepare, with_default_attacks
    from orchestrator.observe.progress import LiveTable, progress_mode
    from orchestrator.run.ray_session import connect_ray
    from orchestrator.sweep.monitor import SweepBoard, watch
    from orchestrator.sweep.report import write_sweep_report

    assert config.sweep is not None
    if config.sweep.attacks:  # every trial attacks its model (at the defaults where eval.attacks names none)
        config = with_default_attacks(config)
    sweep = config.sweep
    connect_ray(config.ray.address, config.ray.num_cpus, progress)
    prepared = prepare(config, progress=progress)  # once, here: every trial starts from the warm result
    defaults = {m: train_defaults(config, m) for m in sweep.methods}
    slots = max_concurrent(config)
    mode = progress_mode()
    started = time.perf_counter()
    grids = []
    try:
        for name, members in studies(sweep):
            tuner, total = _tuner(config, folder, name, members, defaults, slots, prepared, resume, progress)
            study_started = time.perf_counter()
            # Tune's own reporter is silent (`verbose=0`): this table (at a terminal) and one line per finished
            # trial (`orchestrator/sweep/monitor.py`) take its place.
            board = SweepBoard(name, total)
            with watch(board, progress if mode != "off" else None), LiveTable(board.table, mode), \
                    final_objectives_only(sweep.search == "optuna"):
                grids.append(tuner.fit())
            progress(f"study {name!r}: {len(grids[-1])} trials in {time.perf_counter() - study_started:.0f} s")
    finally:  # an interrupted session's time counts too: the sweep's wall time is the sum over its sessions
        sessions = _record_session(folder, time.perf_counter() - started, slots, resume)
        shutil.rmtree(folder / RESIDENT_DIR, ignore_errors=True)  # the slots' Ray Train state (their actors are gone)
    trials = [_trial_record(r) for grid in grids for r in grid]
    summary, summary_path, report_path = write_sweep_report(config, folder, trials, defaults, slots, sessions)
    return SweepResult(folder, summary, summary_path, report_path)


@contextlib.contextmanager
def final_objectives_only(active: bool) -> Iterator[None]:
    """Let a study's searcher read its objectives from the trial's final report alone (Tune checks every report for
    them). A trial's training reports carry losses; its efficacy and utility come with the final one, and
    multi-objective Optuna reads only that (`OptunaSearch.on_trial_result` skips intermediate results)."""
    if not active:
        yield
        return
    before = os.environ.get(STRICT_METRICS)
    os.environ[STRICT_METRICS] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(STRICT_METRICS, None)
        else:
            os.environ[STRICT_METRICS] = before


def _tuner(config: ExperimentConfig, folder: Path, name: str, members: list[str], defaults: dict[str, Any],
           slots: int, prepared, resume: bool, progress: Progress):
    """The study's `Tuner` (restored when resuming) and the number of trials it runs."""
    from ray import tune

    sweep = config.sweep
    assert sweep is not None
    resident = resident_trials(config)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=json.loads(config.model_dump_json()), sweep_dir=str(folder),
                             prepared=prepared, resident=resident),
        TRIAL_DRIVER_RESOURCES)
    path = folder / TUNE_DIR / name
    optuna = sweep.search == "optuna"
    cells = [] if optuna else space.longest_first(
        sweep, [c for m in members for c in space.method_cells(sweep, m, defaults[m])], defaults)
    total = sweep.num_samples * len(sweep.seeds) if optuna else (
        len(cells) * len(sweep.seeds) * (sweep.num_samples if sweep.search == "grid" else 1))
    if resume and tune.Tuner.can_restore(str(path)):
        progress(f"restoring study {name!r} from {path}")
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True), total
    scheduler = search_alg = None
    if optuna:
        from ray.tune.search.optuna import OptunaSearch

        (method,) = members
        param_space = space.optuna_space(sweep, method)
        from orchestrator.sweep.analysis import EFFICACY_KEYS

        # The two objectives under the names the trials report them (rouge_efficacy or forget_quality, utility).
        search_alg = OptunaSearch(metric=[EFFICACY_KEYS[sweep.efficacy], "utility"], mode=["max", "max"],
                                  points_to_evaluate=space.optuna_start_points(sweep, method, defaults[method]),
                                  seed=0)
        num_samples = sweep.num_samples * len(sweep.seeds)
    else:
        param_space = {"cell": tune.grid_search(cells), "seed": tune.grid_search(list(sweep.seeds))}
        num_samples = sweep.num_samples if sweep.search == "grid" else 1
    if sweep.asha is not None:
        from ray.tune.schedulers import ASHAScheduler

        a = sweep.asha
        # Not every report carries the rung metric (the workers' checkpoint and final reports hold only the step):
        # Tune would refuse those; ASHA itself passes over a result without its metric.
        os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
        scheduler = ASHAScheduler(time_attr="step", metric=a.metric, mode=a.mode, max_t=a.max_t,
                                  grace_period=a.grace_period, reduction_factor=a.reduction_factor)
    tune_config = tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                  max_concurrent_trials=slots, time_budget_s=sweep.time_budget_s,
                                  # A reused trial actor imports torch and the run code once per slot, and keeps
                                  # its resident worker group; but a trial ASHA stops must take its Ray Train run
                                  # down with it (the controller is owned by, and dies with, the trial's actor), so
                                  # under ASHA actors are not reused.
                                  reuse_actors=sweep.asha is None,
                                  trial_dirname_creator=lambda trial: trial.trial_id)
    from orchestrator.sweep.monitor import SweepMetricsCallback

    run_config = tune.RunConfig(name=name, storage_path=str(folder / TUNE_DIR), verbose=0,
                                failure_config=tune.FailureConfig(max_failures=0),
                                callbacks=[SweepMetricsCallback(name)])
    progress(f"study {name!r}: {', '.join(members)}, {sweep.search} search, {slots} trial(s) at once"
             + (", each slot on resident Ray Train workers" if resident else ", a TorchTrainer per trial"))
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config), total


def _trial_record(result) -> dict[str, Any]:
    """A trial as the report reads it: its cell, seed, status and last reported metrics."""
    metrics = dict(result.metrics or {})
    cell = result.config["cell"]
    # No final report: stopped early by ASHA, or cut short by an interruption (then `--resume` runs it again).
    status = "error" if result.error else ("complete" if metrics.get("final") else "incomplete")
    keep = ("rouge_efficacy", "forget_quality", "retain_efficacy", "attacked_efficacy", "worst_recovery", "utility", "forget_rouge_l", "retain_rouge_l",
            "model_utility", "mia_auc", "score", "score_forget_quality", "score_retain", "score_attacked", "seconds", "step",
            "train_lr", "train_epochs", "slot",
            "slot_group_starts")
    record = {"trial_id": metrics.get("trial_id") or Path(result.path).name, "method": cell["method"],
              "params": dict(cell["params"]), "seed": result.config["seed"], "status": status,
              **{k: metrics.get(k) for k in keep},
              "timings": {k.removeprefix(TIMING_PREFIX): v for k, v in metrics.items() if k.startswith(TIMING_PREFIX)},
              "tune_seconds": metrics.get("time_total_s"), "path": result.path}
    if result.error:
        record["error"] = str(result.error).strip().splitlines()[-1][:300] if str(result.error).strip() else "error"
    return record


def _record_session(folder: Path, wall: float, slots: int, resume: bool) -> list[dict[str, Any]]:
    path = folder / SESSIONS_FILE
    sessions = json.loads(path.read_text()) if path.is_file() else []
    if not resume:
        sessions = []
    sessions.append({"wall_seconds": round(wall, 2), "slots": slots, "resumed": resume,
                     "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    path.write_text(json.dumps(sessions, indent=2))
    return sessions
