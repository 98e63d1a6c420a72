"""One Tune trial: one Ray Train run of `run_unlearning`, in Ray 2.60's Train V2 pattern.

Ray Train V2 no longer runs a trainer *as* a Tune trainable: a plain function trainable per trial builds the
`TorchTrainer` (here inside `run_unlearning`), names the Ray Train run after the trial (a restarted trial finds its
own run state and resumes from its last checkpoint, `orchestrator/run/state.py`) and hands Ray Train a
`TuneReportCallback`, which forwards every `ray.train.report` of the workers to Tune (the training loss and the
step, for ASHA). When the run returns, the trial reports its final metrics once more, with the efficacy, utility and
trade-off score computed from the evaluation, and the run's timings.

Resident slots (`sweep.trial_workers`, by default wherever it can): a `TorchTrainer` per trial spawns fresh worker
processes that import torch and transformers, 7-12 s per trial on a small machine, as long as the embedded default's
whole train loop. Tune reuses a finished trial's actor for the next trial (`reuse_actors`), so the trial keeps a
resident worker group (`orchestrator/run/resident.py`) in that actor and hands it the next trial's run: the same worker
code, a fresh model, method and optimizer per trial, the run name from the trial id (a restarted trial resumes from
its own checkpoint), and the workers' progress reports forwarded to Tune on the trial's thread, where a
`TuneReportCallback` would have put them. The group dies with the actor (it owns the Ray Train controller) when Tune
retires it.

The trial's driver itself needs no CPU (`tune.with_resources(..., {"CPU": 0})`): it waits on the Ray Train
controller (0 CPUs) while the workers hold the CPUs; so the number of trials at once is set by
`max_concurrent_trials` (`driver.py`), not by Tune's resource accounting.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config import ExperimentConfig
from orchestrator.observe.progress import MODE_ENV
from orchestrator.sweep.analysis import trial_metrics
from orchestrator.sweep.space import trial_overrides

if TYPE_CHECKING:
    from orchestrator.run.resident import ResidentWorkers

TRIALS_DIR = "trials"
RESIDENT_DIR = "resident"  # the slots' own Ray Train state (`ResidentWorkers(storage_root=...)`), under the sweep
_slot: "ResidentWorkers | None" = None  # this trial actor's resident worker group, kept for its next trial
TIMING_PREFIX = "run_seconds_"  # not "time_": Tune reports its own time_total_s, time_this_iter_s
TIMING_KEYS = ("prepare", "unlearn", "train_loop", "evaluate", "export", "worker_setup", "ray_train_start",
               "ray_train_finish")


def trial_config(base: ExperimentConfig, cell: dict[str, Any], seed: int, sweep_dir: str | Path,
                 trial_id: str) -> ExperimentConfig:
    """The experiment one trial runs: the base config with the cell's method, hyperparameters, lr/epochs and seed,
    its own output folder, and the sweep's CPUs per worker where the base leaves them unset."""
    assert base.sweep is not None
    fixed = base.sweep.methods[cell["method"]].hparams
    overrides = trial_overrides(cell, seed, fixed)
    overrides["output_dir"] = str(Path(sweep_dir) / TRIALS_DIR / trial_id)
    overrides["sweep"] = None
    if base.train.cpus_per_worker is None:
        overrides["train.cpus_per_worker"] = base.sweep.cpus_per_worker
    return base.with_overrides(**overrides)


def slot_workers(experiment: ExperimentConfig, sweep_dir: str | Path) -> "ResidentWorkers":
    """This trial actor's resident worker group, made (or remade, for a trial of another shape) for `experiment`."""
    global _slot
    from orchestrator.run.resident import ResidentWorkers

    train = experiment.resolved_train()
    shape = (train["workers"], train["cpus_per_worker"], bool(train.get("use_gpu")))
    if _slot is not None and (_slot.workers, _slot.cpus_per_worker, _slot.use_gpu) != shape:
        _slot.close()
        _slot = None
    if _slot is None:
        _slot = ResidentWorkers(*shape, progress=lambda message: None, storage_root=Path(sweep_dir) / RESIDENT_DIR)
    return _slot


def run_trial(config: dict[str, Any], *, base: dict[str, Any], sweep_dir: str, prepared=None,
              resident: bool = False) -> None:
    """Tune's function trainable: run the trial's unlearning and report its final metrics to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.config import parse_config

    trial_id = ray.tune.get_context().get_trial_id()
    experiment = trial_config(parse_config(base, source="sweep"), config["cell"], config["seed"], sweep_dir, trial_id)
    if resident:  # a new slot's group starts now, in the background, while this trial imports and encodes its run
        slot_workers(experiment, sweep_dir).start()
    from orchestrator.run.unlearning import run_unlearning

    # The trial's own story (its Ray session, its epochs and evaluation, on the workers too: the `TrainJob` takes its
    # progress mode from here) would be told once per trial, interleaved: the sweep's driver shows one line and a
    # table per study instead (`monitor.py`). Errors still reach Tune.
    os.environ[MODE_ENV] = "off"
    served_by = ({"workers": slot_workers(experiment, sweep_dir), "on_report": ray.tune.report} if resident
                 else {"callbacks": [TuneReportCallback()]})
    result = run_unlearning(experiment, prepared=prepared, run_name=f"trial-{trial_id}",
                            progress=lambda message: None, **served_by)
    if not base["sweep"]["keep_models"]:
        shutil.rmtree(result.model_dir, ignore_errors=True)
    timings = {k: result.timings.get(k) for k in TIMING_KEYS}
    # Which worker group served the trial (resident: the trial actor's process and how many groups it has started).
    slot = {"slot": f"{os.uname().nodename}:{os.getpid()}", "slot_group_starts": _slot.starts} if resident else {}
    ray.tune.report({**trial_metrics(result.before, result.after, result.retain_model, result.attacks), "step": result.train["steps"], **slot,
                     "final": 1.0, "seconds": result.seconds, **{f"{TIMING_PREFIX}{k}": v for k, v in timings.items()},
                     "train_lr": result.settings["lr"], "train_epochs": result.settings["epochs"]})
