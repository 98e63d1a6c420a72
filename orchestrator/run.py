"""The run function: the project's one entry to unlearning.

`run_unlearning(config)` prepares (from the cache), unlearns inside a Ray Train `TorchTrainer`, evaluates, and
writes `summary.json`, the unlearned model and a report. It joins the Ray this process holds (a Tune trial), one the
user named or a `ray start` cluster, and otherwise starts a private one (`orchestrator/ray_session.py`). Sweeps and
request streams call it many times; only the unlearning and the evaluation after it are paid per call.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import methods
from orchestrator.config import ConfigError, ExperimentConfig
from orchestrator.prepare import Prepared, encode_rows, evaluate_dir, eval_settings, load_tokenizer, prepare
from orchestrator.ray_session import connect_ray
from orchestrator.train import EXPORT_DIR, SUMMARY_FILE, TrainJob, train_loop_per_worker

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
    progress: Progress = print,
) -> RunResult:
    """Unlearn `config.data`'s forget set from the target model (or from `target`, a model folder, when given)."""
    started = time.perf_counter()
    output = config.resolved_output_dir().resolve()
    check_deepspeed(config)
    connect_ray(config.ray.address, config.ray.num_cpus, progress)
    check_resources(config)
    check_memory(config, progress)
    prepared = prepared or prepare(config, progress=progress)
    t_prepared = time.perf_counter()
    tokenizer = load_tokenizer(prepared.tokenizer_dir)
    settings = eval_settings(config.eval, config.data.max_length)
    target_dir = str(target) if target is not None else prepared.target_dir
    if before is None:
        before = (prepared.target_report if target is None else evaluate_dir(
            target_dir, tokenizer, prepared.data, prepared.template, settings, prepared.retain_report)).summary

    job = _make_job(config, prepared, tokenizer, target_dir)
    progress(f"unlearning {len(job.rows.forget)} forget examples with {config.method.name} "
             f"on {config.train.workers} Ray Train worker(s)")
    train_summary = _fit(config, job, output, progress)
    t_trained = time.perf_counter()

    model_dir = output / EXPORT_DIR
    tokenizer.save_pretrained(model_dir)
    progress("evaluating the unlearned model")
    after = evaluate_dir(model_dir, tokenizer, prepared.data, prepared.template, settings,
                         prepared.retain_report).summary
    t_done = time.perf_counter()
    result = RunResult(
        method=config.method.name,
        hyperparameters=methods.validate_hyperparameters(config.method.name, config.method.hparams).model_dump(),
        before=before,
        after=after,
        seconds=round(t_done - started, 2),
        timings={"prepare": round(t_prepared - started, 2), "unlearn": round(t_trained - t_prepared, 2),
                 "evaluate": round(t_done - t_trained, 2), "train_loop": train_summary["train_seconds"]},
        output_dir=str(output),
        model_dir=str(model_dir),
        world_size=train_summary["world_size"],
        zero_stage=train_summary.get("zero_stage"),
        forget_size=len(job.rows.forget),
        history=train_summary["history"],
        retain_model=prepared.retain_report.summary if prepared.retain_report else None,
        train={"steps": train_summary["steps"], "epochs_run": train_summary["epochs_run"],
               "reference_cache": train_summary["reference_cache"], "parameters": train_summary.get("parameters"),
               "resumed_from_step": train_summary.get("resumed_from_step"), "config": config.model_dump()},
    )
    (output / "summary.json").write_text(json.dumps(result.to_dict(), indent=2))
    from orchestrator.report import write_report

    write_report(result, output)
    return result


def check_deepspeed(config: ExperimentConfig) -> None:
    """Refuse, in one line and before anything is prepared, a DeepSpeed file that cannot run (missing, malformed,
    bad stage, an "auto" we cannot fill, an optimizer of its own) or a method that cannot run under DeepSpeed."""
    if not config.train.deepspeed:
        return
    from orchestrator.deepspeed_engine import load_deepspeed_json

    load_deepspeed_json(config.train.deepspeed)
    name, hparams = config.method.name, config.method.hparams
    if not methods.profile(name, hparams).supports_deepspeed:
        raise ConfigError(f"method {name!r} with hparams {dict(hparams)} cannot run under DeepSpeed (it reads or "
                          "sets gradients outside the optimizer step); remove train.deepspeed")


def check_resources(config: ExperimentConfig, cpus_per_worker: int | None = None) -> None:
    """Refuse, before anything is prepared or trained, more workers than the Ray cluster has CPUs (or GPUs) for."""
    import ray

    cpus = cpus_per_worker or config.train.cpus_per_worker or 1
    resources = ray.cluster_resources()
    available = int(resources.get("CPU", 0))
    if cpus * config.train.workers > available:
        raise ConfigError(f"train.workers={config.train.workers} x {cpus} CPU(s) each needs "
                          f"{cpus * config.train.workers} CPUs, but the Ray cluster has {available}")
    gpus = int(resources.get("GPU", 0))
    if config.train.use_gpu and config.train.workers > gpus:
        raise ConfigError(f"train.use_gpu with train.workers={config.train.workers} needs "
                          f"{config.train.workers} GPUs, but the Ray cluster has {gpus}")


def check_memory(config: ExperimentConfig, progress: Progress = print) -> None:
    """Refuse a run whose per-worker memory plan (`unlearn plan`) does not fit, before anything is trained."""
    from orchestrator.plan import plan_memory

    try:
        plan = plan_memory(config)
    except ConfigError as err:  # a model whose shape cannot be known offline: the run itself will tell
        progress(f"memory plan skipped: {err}")
        return
    if not plan.fits:
        raise ConfigError(f"the run does not fit (see `unlearn plan`): {plan.reason}")


def _make_job(config: ExperimentConfig, prepared: Prepared, tokenizer, target_dir: str) -> TrainJob:
    from methods import ForgetSample
    from orchestrator.batching import UnlearningRows
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
    if train["cpus_per_worker"] is None:
        train["cpus_per_worker"] = _default_cpus_per_worker(config)
    train["threads"] = train["cpus_per_worker"]
    return TrainJob(
        target_dir=target_dir, method_name=config.method.name, method_hparams=dict(config.method.hparams),
        train=train, rows=rows, pad_token_id=tokenizer.pad_token_id, dtype=config.model.dtype,
        forget_samples=samples(data.forget) if refines else [],
        holdout_samples=samples(data.holdout, offset=3_000_000) if refines else [],
    )


def _fit(config: ExperimentConfig, job: TrainJob, output: Path, progress: Progress) -> dict[str, Any]:
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    check_resources(config, job.train["cpus_per_worker"])
    check_deepspeed(config)
    if config.train.deepspeed:  # the workers' working directory (or node) may not hold the file: ship its contents
        from orchestrator.deepspeed_engine import load_deepspeed_json

        job = replace(job, deepspeed_json=load_deepspeed_json(config.train.deepspeed))
    storage = output / "ray"
    if storage.exists():
        progress(f"replacing the earlier run's Ray Train state in {storage}")
        shutil.rmtree(storage)
    if (output / EXPORT_DIR).exists():
        shutil.rmtree(output / EXPORT_DIR)
    output.mkdir(parents=True, exist_ok=True)
    # DeepSpeed picks its accelerator once per process, at import (transformers may import it even without ZeRO):
    # on CPU workers say so rather than let it guess and warn.
    env = {} if config.train.use_gpu or "DS_ACCELERATOR" in os.environ else {"DS_ACCELERATOR": "cpu"}
    # Ray Train V2 re-routes `print` through its logger *and* the wrapped stdout: every progress line came twice.
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=config.train.workers, use_gpu=config.train.use_gpu,
                                     resources_per_worker={"CPU": job.train["cpus_per_worker"]}),
        run_config=RunConfig(name="train", storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=config.train.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             worker_runtime_env={"env_vars": env} if env else None,
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    try:
        result = trainer.fit()
    except Exception as err:  # Ray wraps the worker's exception; surface its last line
        raise RunError(f"unlearning failed: {_last_line(err)} (worker logs: {storage})") from err
    if result.checkpoint is None:
        raise RunError(f"unlearning finished without a final checkpoint (see {storage})")
    with result.checkpoint.as_directory() as folder:
        shutil.copytree(Path(folder) / EXPORT_DIR, output / EXPORT_DIR)
        return json.loads((Path(folder) / SUMMARY_FILE).read_text())


def _default_cpus_per_worker(config: ExperimentConfig) -> int:
    import os

    import ray

    total = int(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else (config.ray.num_cpus or os.cpu_count() or 1)
    return max(1, total // config.train.workers)


def _tensor(ids: list[int]):
    import torch

    return torch.tensor(ids, dtype=torch.long)


def _last_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
