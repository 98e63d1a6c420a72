"""What a run refuses before it prepares or trains anything: a DeepSpeed file or method that cannot run, more
workers than the cluster holds, a memory plan that does not fit. Each refusal is one `ConfigError` line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import methods
from orchestrator.config import ExperimentConfig
from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.data.schema import UnlearningData


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


def check_method_fits_model(config: ExperimentConfig) -> None:
    """Refuse, before anything is loaded, hyperparameters that name a part the model lacks (RMU on a layer index the
    model does not have). The depth comes from the model's config (the tiny shape, a config.json on disk or the
    table of known models); a model whose shape cannot be known offline is left to the run itself."""
    from orchestrator.models.shapes import resolve_shape

    hparams = methods.validate_hyperparameters(config.method.name, config.method.hparams)
    try:
        num_layers = resolve_shape(config).num_layers
    except ConfigError:
        return
    try:
        hparams.check_model(num_layers)
    except ValueError as err:
        raise ConfigError(f"method {config.method.name!r}: {err} (model {config.model.name!r})") from None


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


def check_memory(config: ExperimentConfig, progress: Callable[[str], None] = print) -> None:
    """Refuse a run whose per-worker memory plan (`unlearn plan`) does not fit, before anything is trained."""
    from orchestrator.models.plan import plan_memory

    try:
        plan = plan_memory(config)
    except ConfigError as err:  # a model whose shape cannot be known offline: the run itself will tell
        progress(f"memory plan skipped: {err}")
        return
    if not plan.fits:
        raise ConfigError(f"the run does not fit (see `unlearn plan`): {plan.reason}")


def check_attacks(config: ExperimentConfig, data: "UnlearningData") -> None:
    """Refuse, before any work, recovery attacks (`eval.attacks`) that cannot run on this model or data: a model
    partitioned across workers (ZeRO-3), NF4 without a GPU, relearning on a split with no examples, a few-shot
    prefix longer than the retained pairs."""
    attacks = config.eval.attacks
    if attacks is None:
        return
    if config.train.deepspeed:
        from orchestrator.worker.deepspeed_engine import load_deepspeed_json, zero_stage

        if zero_stage(load_deepspeed_json(config.train.deepspeed)) == 3:
            raise ConfigError("eval.attacks copies the unlearned model on one worker, which ZeRO-3 partitions across "
                              "all of them: use a ZeRO-2 config, or drop eval.attacks")
    if "quantise" in attacks.run and attacks.quantise.method == "nf4" and not config.train.use_gpu:
        raise ConfigError("eval.attacks.quantise.method nf4 needs a GPU (bitsandbytes); on CPU use rtn with bits "
                          "4 and 8")
    forget = data.forget  # the evaluation scores all of it (EvalSettings.max_forget_examples: None)
    if "relearn" in attacks.run:
        if len(forget) < 2:
            raise ConfigError(f"eval.attacks.relearn needs at least 2 forget examples (one to train on, one to "
                              f"score), the data has {len(forget)}")
        split = attacks.relearn.data
        if split != "forget" and not getattr(data, split):
            raise ConfigError(f"eval.attacks.relearn.data={split!r}: the data ({data.name}) has no {split} examples")
    if "probe" in attacks.run and attacks.probe.few_shot:
        from orchestrator.attacks.prompts import few_shot_pool

        pool = few_shot_pool(data.retain, exclude=data.neighbour)
        if len(pool) < attacks.probe.few_shot:
            raise ConfigError(f"eval.attacks.probe.few_shot={attacks.probe.few_shot}: the data ({data.name}) has "
                              f"{len(pool)} retained question/answer pairs outside the neighbours")
