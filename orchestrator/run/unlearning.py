"""The run function: the project's one entry to unlearning.

`run_unlearning(config)` prepares (from the cache), unlearns inside a Ray Train `TorchTrainer`, evaluates, and
writes `summary.json`, the unlearned model and a report. It joins the Ray this process holds (a Tune trial), one the
user named or a `ray start` cluster, and otherwise starts a private one (`orchestrator/run/ray_session.py`). Sweeps and
request streams call it many times; only the unlearning and the evaluation after it are paid per call.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import methods
from orchestrator.config import ConfigError, ExperimentConfig
from orchestrator.run.feed import worker_env
from orchestrator.run.prepare import (Prepared, encode_rows, evaluate_dir, eval_settings, load_data, load_tokenizer,
                                  prepare)
from orchestrator.run import state as run_state
from orchestrator.observe.metrics import record_evaluation
from orchestrator.run.ray_session import connect_ray, private_ray_cpus
from orchestrator.worker.loop import EXPORT_DIR, TrainJob, train_loop_per_worker
from orchestrator.observe.training_metrics import TrainingMetricsCallback, tokens_per_step
from orchestrator.worker.evaluation import EvaluationJob

if TYPE_CHECKING:
    from orchestrator.run.resident import ResidentWorkers

Progress = Callable[[str], None]
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RunError(RuntimeError):
    """The unlearning run itself failed (a worker error); the message says where to look."""


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
    # What can be refused without Ray is refused before it starts: a data file that is not there, a hub that cannot
    # be reached, more workers than a private Ray would have, a plan that does not fit.
    data = load_data(config.data) if prepared is None else None
    check_resources(config, ray_cpus=private_ray_cpus(config.ray.address, config.ray.num_cpus))
    check_memory(config, progress)
    resuming = run_state.claim(output, run_name, config, target_dir)
    run_state.check_resumable(output, run_name, resident=workers is not None)
    if workers is not None:
        workers.check_fits(config.resolved_train())
    ray_how = connect_ray(config.ray.address, config.ray.num_cpus, progress, config.ray.dashboard_host)
    check_resources(config)
    prepared = prepared or prepare(config, data=data, progress=progress)
    t_prepared = time.perf_counter()
    tokenizer = load_tokenizer(prepared.tokenizer_dir)
    settings = eval_settings(config.eval, config.data.max_length)
    target_dir = target_dir or prepared.target_dir
    if before is None:
        before = (prepared.target_report if target is None else evaluate_dir(
            target_dir, tokenizer, prepared.data, prepared.template, settings, prepared.retain_report)).summary

    if workers is not None:
        workers.start()
    job = replace(_make_job(config, prepared, tokenizer, target_dir,
                            cpus_per_worker=workers.cpus_per_worker if workers else None),
                  tokenizer_dir=prepared.tokenizer_dir,
                  evaluation=EvaluationJob.of(prepared.tokenizer_dir, prepared.data, prepared.template, settings,
                                              prepared.retain_report))
    progress(f"{'resuming' if resuming else 'unlearning'} {len(job.rows.forget)} forget examples with "
             f"{config.method.name} on {config.train.workers} Ray Train worker(s), evaluating there (run {run_name})")
    if workers is None:
        watch = TrainingMetricsCallback.for_job(run_name, job, config.train.workers)  # Ray dashboard metrics
        train_summary = _fit(config, job, output, progress, run_name=run_name, callbacks=[*(callbacks or ()), watch])
    else:
        train_summary = _fit_resident(workers, job, output, run_name, tokens_per_step(job, config.train.workers),
                                      on_report)
    t_trained = time.perf_counter()
    worker = train_summary["timings"]
    result = RunResult(
        method=config.method.name,
        hyperparameters=methods.validate_hyperparameters(config.method.name, config.method.hparams).model_dump(),
        before=before,
        after=train_summary["evaluation"]["summary"],
        seconds=0.0,
        timings={"prepare": round(t_prepared - started, 2), "unlearn": round(t_trained - t_prepared, 2),
                 **{k: worker[k] for k in ("train_loop", "evaluate", "export", "worker_setup", "ray_train_start",
                                           "ray_train_finish")}},
        output_dir=str(output),
        model_dir=str(output / EXPORT_DIR),
        world_size=train_summary["world_size"],
        zero_stage=train_summary.get("zero_stage"),
        forget_size=len(job.rows.forget),
        history=train_summary["history"],
        retain_model=prepared.retain_report.summary if prepared.retain_report else None,
        train={"steps": train_summary["steps"], "epochs_run": train_summary["epochs_run"],
               "reference_cache": train_summary["reference_cache"], "parameters": train_summary.get("parameters"),
               "resumed_from_step": train_summary.get("resumed_from_step"),
               "early_stop": train_summary.get("early_stop"), "config": config.model_dump()},
        run_name=run_name,
        settings=_effective_settings(config, job, train_summary, ray_how),
        evaluation=train_summary["evaluation"],
    )
    from orchestrator.observe.report import write_report

    record_evaluation(run_name, result.method, result.after)
    result.seconds = round(time.perf_counter() - started, 2)
    (output / "summary.json").write_text(json.dumps(result.to_dict(), indent=2))
    write_report(result, output)
    return result


def _effective_settings(config: ExperimentConfig, job: TrainJob, train_summary: dict[str, Any],
                        ray_how: str) -> dict[str, Any]:
    """The settings the run actually used (recipe-filled lr and epochs, resolved CPUs, dtype, device, Ray)."""
    return {"lr": job.train["lr"], "epochs": job.train["epochs"], "batch_size": job.train["batch_size"],
            "workers": job.train["workers"], "cpus_per_worker": job.train["cpus_per_worker"],
            "threads_per_worker": train_summary.get("threads"), "dtype": train_summary.get("dtype"),
            "device": train_summary.get("device"), "zero_stage": train_summary.get("zero_stage"),
            "lora": job.train.get("lora"), "early_stop": job.train.get("early_stop"), "ray": ray_how}


def check_deepspeed(config: ExperimentConfig) -> None:
    """Refuse, in one line and before anything is prepared, a DeepSpeed file that cannot run (missing, malformed,
    bad stage, an "auto" we cannot fill, an optimizer of its own) or a method that cannot run under DeepSpeed."""
    if not config.train.deepspeed:
        return
    from orchestrator.worker.deepspeed_engine import load_deepspeed_json

    load_deepspeed_json(config.train.deepspeed)
    name, hparams = config.method.name, config.method.hparams
    if not methods.profile(name, hparams).supports_deepspeed:
        raise ConfigError(f"method {name!r} with hparams {dict(hparams)} cannot run under DeepSpeed (it reads or "
                          "sets gradients outside the optimizer step); remove train.deepspeed")


def check_resources(config: ExperimentConfig, cpus_per_worker: int | None = None, ray_cpus: int | None = None) -> None:
    """Refuse, before anything is prepared or trained, more workers than the Ray cluster has CPUs (or GPUs) for.

    `ray_cpus`: check against a private Ray of that many CPUs not yet started (no GPUs known then); without it,
    against the connected cluster (nothing to check when neither is known)."""
    cpus = cpus_per_worker or config.train.cpus_per_worker or 1
    if ray_cpus is not None:
        resources = {"CPU": ray_cpus}
    else:
        import ray

        if not ray.is_initialized():
            return
        resources = ray.cluster_resources()
    available = int(resources.get("CPU", 0))
    if cpus * config.train.workers > available:
        raise ConfigError(f"train.workers={config.train.workers} x {cpus} CPU(s) each needs "
                          f"{cpus * config.train.workers} CPUs, but the Ray cluster has {available}")
    gpus = int(resources.get("GPU", 0))
    if config.train.use_gpu and config.train.workers > gpus and ray_cpus is None:
        raise ConfigError(f"train.use_gpu with train.workers={config.train.workers} needs "
                          f"{config.train.workers} GPUs, but the Ray cluster has {gpus}")


def check_memory(config: ExperimentConfig, progress: Progress = print) -> None:
    """Refuse a run whose per-worker memory plan (`unlearn plan`) does not fit, before anything is trained."""
    from orchestrator.models.plan import plan_memory

    try:
        plan = plan_memory(config)
    except ConfigError as err:  # a model whose shape cannot be known offline: the run itself will tell
        progress(f"memory plan skipped: {err}")
        return
    if not plan.fits:
        raise ConfigError(f"the run does not fit (see `unlearn plan`): {plan.reason}")


def _make_job(config: ExperimentConfig, prepared: Prepared, tokenizer, target_dir: str,
              cpus_per_worker: int | None = None) -> TrainJob:
    from methods import ForgetSample
    from orchestrator.worker.batching import UnlearningRows
    from orchestrator.data.tokenize import encode, encode_prompt

    data, template, max_length = prepared.data, prepared.template, config.data.max_length
    if not data.forget:
        raise ConfigError("the forget set is empty: nothing to unlearn")
    profile = methods.profile(config.method.name, config.method.hparams)
    if config.train.deepspeed and not profile.supports_deepspeed:
        raise ConfigError(f"method {config.method.name!r} does not support DeepSpeed (it sets gradients by hand)")
    rows = UnlearningRows(forget=encode_rows(tokenizer, data.forget, template, max_length))
    if profile.uses_retain:
        rows.retain = encode_rows(tokenizer, data.retain, template, max_length, offset=1_000_000)
    if profile.uses_alternate:
        missing = [e.id for e in data.forget if not e.idk_answer]
        if missing:
            raise ConfigError(f"method {config.method.name!r} needs 'I don't know' answers; {missing[0]} has none")
        rows.alternate = [encode(tokenizer, e, i, template, max_length, answer=e.idk_answer)
                          for i, e in enumerate(data.forget)]
    if profile.uses_analogous:
        from orchestrator.data.analogous import nearest_retained

        neighbours = nearest_retained(data.forget, data.retain)
        rows.analogous = [encode(tokenizer, data.retain[j], 2_000_000 + j, template, max_length) for j in neighbours]
        rows.__post_init__()

    def samples(examples, offset=0):
        return [ForgetSample(offset + i, _tensor(encode_prompt(tokenizer, e, template, max_length)),
                             _tensor(tokenizer.encode(e.answer, add_special_tokens=False)))
                for i, e in enumerate(examples)]

    refines = profile.refines_forget_set
    train = config.resolved_train()
    early_stop_rows = []
    if train["early_stop"]:
        if not data.retain:
            if config.train.early_stop:  # asked for by the config, not the recipe: say why it cannot run
                raise ConfigError("train.early_stop measures the retain data's perplexity, and this run has no "
                                  "retain data; set train.early_stop: false")
            train["early_stop"] = None
        else:
            from orchestrator.worker.early_stop import even_spread

            chosen = even_spread(list(range(len(data.retain))), train["early_stop"]["max_examples"])
            early_stop_rows = [encode(tokenizer, data.retain[j], 4_000_000 + j, template, max_length) for j in chosen]
    if train["cpus_per_worker"] is None:
        train["cpus_per_worker"] = cpus_per_worker or _default_cpus_per_worker(config)
    train["threads"] = train["cpus_per_worker"]
    return TrainJob(
        target_dir=target_dir, method_name=config.method.name, method_hparams=dict(config.method.hparams),
        train=train, rows=rows, pad_token_id=tokenizer.pad_token_id, dtype=config.model.dtype,
        forget_samples=samples(data.forget) if refines else [],
        holdout_samples=samples(data.holdout, offset=3_000_000) if refines else [],
        early_stop_rows=early_stop_rows,
    )


def _fit(config: ExperimentConfig, job: TrainJob, output: Path, progress: Progress, run_name: str | None = None,
         callbacks: Sequence[Any] | None = None) -> dict[str, Any]:
    """Run the Ray Train job; returns rank 0's summary (the train function's return value).

    The run's Ray Train state is kept under `output/ray/<run_name>` while it runs (a restart resumes from it) and
    removed once the model is written (`orchestrator/run/state.py`)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    check_resources(config, job.train["cpus_per_worker"])
    check_deepspeed(config)
    if config.train.deepspeed:  # the workers' working directory (or node) may not hold the file: ship its contents
        from orchestrator.worker.deepspeed_engine import load_deepspeed_json

        job = replace(job, deepspeed_json=load_deepspeed_json(config.train.deepspeed))
    if run_name is None:  # called on its own (the distributed tests): name and claim the run here
        run_name = run_state.default_run_name(config)
        run_state.claim(output, run_name, config)
    job = replace(job, model_dir=str(output / EXPORT_DIR))
    storage = output / "ray"
    env = worker_env(config.train.use_gpu)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=config.train.workers, use_gpu=config.train.use_gpu,
                                     resources_per_worker={"CPU": job.train["cpus_per_worker"]}),
        run_config=RunConfig(name=run_name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=config.train.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             worker_runtime_env={"env_vars": env} if env else None,
                             logging_config=LoggingConfig(log_level="WARNING"),
                             callbacks=list(callbacks) if callbacks else None),
    )
    fit_called = time.time()
    try:
        result = trainer.fit()
    except Exception as err:  # Ray wraps the worker's exception; surface its last line
        raise RunError(f"unlearning failed: {_last_line(err)} (worker logs: {storage / run_name})") from err
    if not isinstance(result.return_value, dict):
        raise RunError(f"unlearning finished without a summary from rank 0 (see {storage / run_name})")
    run_state.release(output, run_name)
    summary = result.return_value
    # What Ray Train itself took (wall clock of one machine; approximate across nodes): from `fit` to the train
    # function's start (controller, placement group, worker processes, their imports) and from its end to `fit`'s
    # return (the final report taken, the worker group shut down).
    return _with_ray_train_timings(summary, fit_called)


def _fit_resident(workers: ResidentWorkers, job: TrainJob, output: Path, run_name: str,
                  per_step: float | None, on_report: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """`_fit` on resident workers: the same summary, Ray Train's start and finish being the feed's round trip."""
    job = replace(job, model_dir=str(output / EXPORT_DIR))
    tags = {"run": run_name, "method": job.method_name, **({"tokens_per_step": per_step} if per_step else {})}
    submitted = time.time()
    summary = workers.run(job, run_state.resident_checkpoint(output, run_name), tags, on_report)
    run_state.release(output, run_name)
    return _with_ray_train_timings(summary, submitted)


def _with_ray_train_timings(summary: dict[str, Any], submitted: float) -> dict[str, Any]:
    """What Ray Train itself took (wall clock of one machine; approximate across nodes), from rank 0's clock: from
    handing the job over to the train function's start, and from its end to the summary's return."""
    clock = summary.pop("clock")
    summary["timings"].update(ray_train_start=round(clock["entered"] - submitted, 3),
                              ray_train_finish=round(time.time() - clock["left"], 3))
    return summary


def _default_cpus_per_worker(config: ExperimentConfig) -> int:
    """`free_cpus_per_worker` for the config's workers (before Ray starts: of the private Ray it would start)."""
    return free_cpus_per_worker(config.train.workers, config.ray.num_cpus or os.cpu_count() or 1)


def free_cpus_per_worker(workers: int, without_ray: int = 1) -> int:
    """The CPUs Ray has free now (`without_ray` when not connected), shared by the workers, at least 1 each.

    Free, not total: inside a Tune trial (or beside another run) the trial already holds some of the cluster's
    CPUs, and workers asking for all of them would never be scheduled."""
    import ray

    free = int(ray.available_resources().get("CPU", 0)) if ray.is_initialized() else without_ray
    return max(1, free // workers)


def _tensor(ids: list[int]):
    import torch

    return torch.tensor(ids, dtype=torch.long)


def _last_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
