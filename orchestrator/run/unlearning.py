"""The run function: the project's one entry to unlearning.

`run_unlearning(config)` prepares (from the cache), unlearns on Ray Train workers (a `TorchTrainer` of its own, or a
resident group that serves many runs), evaluates there, and writes `summary.json`, the unlearned model and a report.
It joins the Ray this process holds (a Tune trial), one the user named or a `ray start` cluster, and otherwise starts
a private one (`orchestrator/run/ray_session.py`). Sweeps and request streams call it many times; only the unlearning
and the evaluation after it are paid per call.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import methods
from orchestrator.attacks.recovery import attack_summary
from orchestrator.evaluation import EvalReport
from orchestrator.config import ExperimentConfig
from orchestrator.errors import RunError, last_line
from orchestrator.files import write_text_atomically
from orchestrator.observe.metrics import record_evaluation
from orchestrator.observe.training_metrics import TrainingMetricsCallback, tokens_per_step
from orchestrator.run import state as run_state
from orchestrator.run.checks import (check_attacks, check_deepspeed, check_memory, check_method_fits_model,
                                     check_resources)
from orchestrator.run.job import make_job, worker_settings
from orchestrator.run.baselines import BaselineRunner, EvaluateModel
from orchestrator.run.prepare import Prepared, attack_plan, eval_settings, load_data, prepare
from orchestrator.run.ray_session import connect_ray, private_ray_cpus
from orchestrator.run.resident import ResidentWorkers, UnlearnTask
from orchestrator.run.worker_group import worker_group
from orchestrator.models.loading import load_tokenizer
from orchestrator.worker.entry import train_loop_per_worker
from orchestrator.worker.evaluation import EvaluationJob
from orchestrator.worker.job import EXPORT_DIR, TrainJob, WorkerSummary
from orchestrator.observe.progress import Progress

SUMMARY_KEYS = ("forget_rouge_l", "retain_rouge_l", "forget_quality", "model_utility", "mia_auc")


@dataclass
class RunResult:
    """What one unlearning run produced; `summary.json` is its `to_dict()`."""

    method: str
    hyperparameters: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]
    seconds: float
    timings: dict[str, float]
    output_dir: str
    model_dir: str
    world_size: int
    zero_stage: int | None
    forget_size: int
    history: list[dict[str, float]] = field(default_factory=list)
    retain_model: dict[str, Any] | None = None
    train: dict[str, Any] = field(default_factory=dict)
    run_name: str | None = None  # its Ray Train state's name: a run started again under it resumes
    settings: dict[str, Any] = field(default_factory=dict)  # the effective ones: lr, epochs, CPUs, dtype, device
    evaluation: dict[str, Any] | None = None  # the unlearned model's whole EvalReport (`after` is its summary)
    attacks: dict[str, Any] | None = None  # recovery attacks (orchestrator/attacks/recovery.py); None: none ran

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_unlearning(
    config: ExperimentConfig,
    *,
    target: str | Path | None = None,
    before: dict[str, Any] | None = None,
    prepared: Prepared | None = None,
    run_name: str | None = None,
    callbacks: Sequence[Any] | None = None,
    workers: ResidentWorkers | None = None,
    on_report: Callable[[dict[str, Any]], None] | None = None,
    progress: Progress = print,
) -> RunResult:
    """Unlearn `config.data`'s forget set from the target model (or from `target`, a model folder, when given).

    `run_name` names the run's Ray Train state under `<output>/ray/`: a run started again under the same name
    resumes from its last checkpoint (`orchestrator/run/state.py`); by default the name is derived from the config,
    so the same config resumes and another one starts afresh. `callbacks` go to Ray Train's `RunConfig` (e.g.
    Tune's `TuneReportCallback` in a trial); the final report's metrics carry the evaluation's summary (`after`).
    `before`: the target's metrics when the caller has them (a stream's latest model); else the prepared ones
    (for an explicit `target` without `before`, its evaluation runs here, on the driver, before training).
    `workers`: resident Ray Train workers (`orchestrator/run/resident.py`) that serve this call and later ones, instead
    of a `TorchTrainer` started (and its worker processes spawned) for this call alone; no `callbacks` then, since
    their one Ray Train run serves every call; `on_report` instead sees each of this run's progress reports on the
    calling thread (e.g. a Tune trial's `tune.report`, as `TuneReportCallback` would for a `TorchTrainer`).
    """
    if workers is not None and callbacks:
        raise ValueError("callbacks reach a TorchTrainer's RunConfig; resident workers serve every call from one "
                         "Ray Train run: pass callbacks or workers, not both")
    if on_report is not None and workers is None:
        raise ValueError("on_report is for resident workers; a TorchTrainer per call takes Ray Train callbacks")
    started = time.perf_counter()
    output = config.resolved_output_dir().resolve()
    target_dir = str(target) if target is not None else None
    run_name = run_name or run_state.default_run_name(config, target_dir)
    check_deepspeed(config)
    check_method_fits_model(config)
    # What can be refused without Ray is refused before it starts: a data file that is not there, a hub that cannot
    # be reached, more workers than a private Ray would have, a plan that does not fit.
    data = load_data(config.data) if prepared is None else None
    check_attacks(config, data if data is not None else prepared.data)
    check_resources(config, ray_cpus=private_ray_cpus(config.ray.address, config.ray.num_cpus))
    check_memory(config, progress)
    resuming = run_state.claim(output, run_name, config, target_dir)
    run_state.check_resumable(output, run_name, resident=workers is not None)
    if workers is not None:
        workers.check_fits(worker_settings(config, workers.cpus_per_worker))
    ray_how = connect_ray(config.ray.address, config.ray.num_cpus, progress, config.ray.dashboard_host)
    check_resources(config)
    # Fixed once, before a baseline task runs: Ray's free-CPU count lags a finished task.
    cpus_per_worker = workers.fix_shape() if workers is not None else worker_settings(config).cpus_per_worker
    prepared = prepared or prepare(config, data=data, progress=progress, workers=workers,
                                   cpus_per_worker=cpus_per_worker)
    t_prepared = time.perf_counter()
    tokenizer = load_tokenizer(prepared.tokenizer_dir)
    settings = eval_settings(config.eval, config.data.max_length)
    target_dir = target_dir or prepared.target_dir
    before_report = None  # the whole report of the model before unlearning, where this call has it
    if before is None:
        runner = BaselineRunner(config, workers, progress, cpus_per_worker)
        before_report = (prepared.target_report if target is None else EvalReport.from_dict(runner(EvaluateModel(
            target_dir, prepared.tokenizer_dir, prepared.data, prepared.template, settings, runner.placement,
            prepared.retain_report))))
        before = before_report.summary

    if workers is not None:
        workers.start()
    job = replace(make_job(config, prepared, tokenizer, target_dir, cpus_per_worker=cpus_per_worker),
                  tokenizer_dir=prepared.tokenizer_dir,
                  evaluation=EvaluationJob.of(prepared.tokenizer_dir, prepared.data, prepared.template, settings,
                                              prepared.retain_report, attack_plan(config)))
    progress(f"{'resuming' if resuming else 'unlearning'} {len(job.rows.forget)} forget examples with "
             f"{config.method.name} on {config.train.workers} Ray Train worker(s), evaluating there (run {run_name})")
    if workers is None:
        watch = TrainingMetricsCallback.for_job(run_name, job, config.train.workers)  # Ray dashboard metrics
        train_summary = _fit(config, job, output, run_name, callbacks=[*(callbacks or ()), watch])
    else:
        train_summary = _fit_resident(workers, job, output, run_name, tokens_per_step(job, config.train.workers),
                                      on_report)
    t_trained = time.perf_counter()
    worker = train_summary.timings
    result = RunResult(
        method=config.method.name,
        hyperparameters=methods.validate_hyperparameters(config.method.name, config.method.hparams).model_dump(),
        before=before,
        after=train_summary.evaluation["summary"],
        seconds=0.0,
        timings={"prepare": round(t_prepared - started, 2), "unlearn": round(t_trained - t_prepared, 2),
                 **{k: worker[k] for k in ("train_loop", "evaluate", "export", "worker_setup", "ray_train_start",
                                           "ray_train_finish")}},
        output_dir=str(output),
        model_dir=str(output / EXPORT_DIR),
        world_size=train_summary.world_size,
        zero_stage=train_summary.zero_stage,
        forget_size=len(job.rows.forget),
        history=train_summary.history,
        retain_model=prepared.retain_report.summary if prepared.retain_report else None,
        train={"steps": train_summary.steps, "epochs_run": train_summary.epochs_run,
               "reference_cache": train_summary.reference_cache, "parameters": train_summary.parameters,
               "resumed_from_step": train_summary.resumed_from_step, "throughput": train_summary.throughput,
               "early_stop": train_summary.early_stop, "config": config.model_dump()},
        run_name=run_name,
        settings=_effective_settings(config, job, train_summary, ray_how),
        evaluation=train_summary.evaluation,
        attacks=_attacks(train_summary.evaluation, before_report, prepared),
    )
    from orchestrator.observe.report import write_report  # matplotlib: only once there is a report to draw

    record_evaluation(run_name, result.method, result.after)
    result.seconds = round(time.perf_counter() - started, 2)
    write_text_atomically(output / "summary.json", json.dumps(result.to_dict(), indent=2))
    write_report(result, output)
    return result


def _attacks(evaluation: dict[str, Any], before: EvalReport | None, prepared: Prepared) -> dict[str, Any] | None:
    """`summary.json`'s `attacks` (orchestrator/attacks/recovery.py), when the workers ran any; recovery needs the
    model before unlearning per example, which a caller that passed only its summary (`before=`) does not give."""
    if not evaluation.get("attack_results"):
        return None
    retain = prepared.retain_report
    return attack_summary(evaluation["attack_results"], before.forget_examples if before is not None else {},
                          evaluation.get("forget_examples") or {}, prepared.attack_baselines or {},
                          retain.forget_examples if retain is not None else None)


def _effective_settings(config: ExperimentConfig, job: TrainJob, train_summary: WorkerSummary,
                        ray_how: str) -> dict[str, Any]:
    """The settings the run actually used (recipe-filled lr and epochs, resolved CPUs, dtype, device, Ray)."""
    train = job.train
    return {"lr": train.lr, "epochs": train.epochs, "batch_size": train.batch_size, "workers": train.workers,
            "cpus_per_worker": train.cpus_per_worker, "threads_per_worker": train_summary.threads,
            "dtype": train_summary.dtype, "device": train_summary.device, "zero_stage": train_summary.zero_stage,
            "lora": train.lora, "early_stop": train.early_stop, "ray": ray_how}


def _fit(config: ExperimentConfig, job: TrainJob, output: Path, run_name: str,
         callbacks: Sequence[Any] | None = None) -> WorkerSummary:
    """Run the job on a `TorchTrainer` of its own; returns rank 0's summary (the train function's return value).

    The run's Ray Train state is kept under `output/ray/<run_name>` while it runs (a restart resumes from it, and
    Ray Train restarts a failed worker group from it up to `train.max_failures` times) and removed once the model
    is written (`orchestrator/run/state.py`)."""
    check_resources(config, job.train.cpus_per_worker)
    if config.train.deepspeed:  # the workers' working directory (or node) may not hold the file: ship its contents
        from orchestrator.worker.deepspeed_engine import load_deepspeed_json

        job = replace(job, deepspeed_json=load_deepspeed_json(config.train.deepspeed))
    job = replace(job, model_dir=str(output / EXPORT_DIR))
    storage = output / "ray"
    trainer = worker_group(train_loop_per_worker, {"job": job}, name=run_name, storage=storage,
                           workers=config.train.workers, cpus_per_worker=job.train.cpus_per_worker,
                           use_gpu=config.train.use_gpu, max_failures=config.train.max_failures, checkpoints_kept=2,
                           callbacks=callbacks)
    fit_called = time.time()
    try:
        result = trainer.fit()
    except Exception as err:  # Ray wraps the worker's exception; surface its last line
        raise RunError(f"unlearning failed: {last_line(err)} (worker logs: {storage / run_name})") from err
    if not isinstance(result.return_value, WorkerSummary):
        raise RunError(f"unlearning finished without a summary from rank 0 (see {storage / run_name})")
    run_state.release(output, run_name)
    return _with_ray_train_timings(result.return_value, fit_called)


def _fit_resident(workers: ResidentWorkers, job: TrainJob, output: Path, run_name: str,
                  per_step: float | None, on_report: Callable[[dict[str, Any]], None] | None) -> WorkerSummary:
    """`_fit` on resident workers: the same summary, Ray Train's start and finish being the feed's round trip."""
    job = replace(job, model_dir=str(output / EXPORT_DIR))
    tags = {"run": run_name, "method": job.method_name, **({"tokens_per_step": per_step} if per_step else {})}
    submitted = time.time()
    workers.check_fits(job.train)
    summary = workers.run(UnlearnTask(job, str(run_state.resident_checkpoint(output, run_name)), tags), on_report)
    run_state.release(output, run_name)
    return _with_ray_train_timings(summary, submitted)


def _with_ray_train_timings(summary: WorkerSummary, submitted: float) -> WorkerSummary:
    """What Ray Train itself took (wall clock of one machine; approximate across nodes), from rank 0's clock: from
    handing the job over to the train function's start, and from its end to the summary's return."""
    clock = summary.clock
    summary.timings.update(ray_train_start=round(clock["entered"] - submitted, 3),
                           ray_train_finish=round(time.time() - clock["left"], 3))
    return summary
