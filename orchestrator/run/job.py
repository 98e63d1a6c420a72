"""From a validated config and prepared data to the `TrainJob` the workers run: one encoding, one resolution.

`unlearn run`, sweep trials and every request of a stream build their jobs here: the rows each method trains on
(`method_rows`), the train settings with the recipe's lr and epochs and the CPUs resolved (`worker_settings`), and
the samples ICU refines its forget set on.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

import methods
from methods import ForgetSample
from orchestrator.config import ExperimentConfig
from orchestrator.data.refusals import idk_answer
from orchestrator.data.schema import Example
from orchestrator.data.tokenize import EncodedRow, PromptTemplate, encode, encode_prompt
from orchestrator.errors import ConfigError
from orchestrator.worker.batching import ROW_ID_BASE, UnlearningRows
from orchestrator.worker.job import TrainJob, WorkerSettings

if TYPE_CHECKING:
    from orchestrator.run.prepare import Prepared


def encode_part(tokenizer, examples: Sequence[Example], part: str, template: PromptTemplate,
                max_length: int) -> list[EncodedRow]:
    """`examples` encoded as rows of batch part `part` (numbered from the part's base, `ROW_ID_BASE`)."""
    base = ROW_ID_BASE[part]
    return [encode(tokenizer, e, base + i, template, max_length) for i, e in enumerate(examples)]


def method_rows(tokenizer, method: str, hparams: dict[str, Any], forget: Sequence[Example],
                retain: Sequence[Example], template: PromptTemplate, max_length: int) -> UnlearningRows:
    """The batch parts `method` trains on: forget rows, and where it uses them retain rows, "I don't know" answers
    to the forget questions (an example without one gets the data sets' default refusal, as their loaders give
    every example) and ICU's nearest retained neighbours."""
    if not forget:
        raise ConfigError("the forget set is empty: nothing to unlearn")
    profile = methods.profile(method, hparams)
    rows = UnlearningRows(forget=encode_part(tokenizer, forget, "forget", template, max_length))
    if profile.uses_retain:
        rows.retain = encode_part(tokenizer, retain, "retain", template, max_length)
    if profile.uses_alternate:
        rows.alternate = [encode(tokenizer, e, i, template, max_length, answer=e.idk_answer or idk_answer(e.id))
                          for i, e in enumerate(forget)]
    if profile.uses_analogous:
        from orchestrator.data.analogous import nearest_retained

        neighbours = nearest_retained(tuple(forget), tuple(retain))
        base = ROW_ID_BASE["analogous"]
        rows.analogous = [encode(tokenizer, retain[j], base + j, template, max_length) for j in neighbours]
        rows.__post_init__()
    return rows


def default_cpus_per_worker(config: ExperimentConfig) -> int:
    """`free_cpus_per_worker` for the config's workers (before Ray starts: of the private Ray it would start)."""
    return free_cpus_per_worker(config.train.workers, config.ray.num_cpus or os.cpu_count() or 1)


def free_cpus_per_worker(workers: int, without_ray: int = 1) -> int:
    """The CPUs Ray has free now (`without_ray` when not connected), shared by the workers, at least 1 each.

    Free, not total: inside a Tune trial (or beside another run) the trial already holds some of the cluster's
    CPUs, and workers asking for all of them would never be scheduled."""
    import ray

    free = int(ray.available_resources().get("CPU", 0)) if ray.is_initialized() else without_ray
    return max(1, free // workers)


def worker_settings(config: ExperimentConfig, cpus_per_worker: int | None = None, *, lr: float | None = None,
                    epochs: int | None = None, early_stop: bool = True) -> WorkerSettings:
    """`config.train` as the workers use it: lr and epochs from `lr`/`epochs` (a stream request's own), else the
    config's, else the method's recipe; CPUs from the config, else `cpus_per_worker` (a resident group's), else the
    CPUs Ray has free; threads = CPUs. `early_stop=False` drops the stopping rule (a request the rule is not for)."""
    train = config.resolved_train()
    if lr is not None:
        train["lr"] = lr
    if epochs is not None:
        train["epochs"] = int(epochs)
    if not early_stop:
        train["early_stop"] = None
    if train["cpus_per_worker"] is None:
        train["cpus_per_worker"] = cpus_per_worker or default_cpus_per_worker(config)
    return WorkerSettings(**train, threads=train["cpus_per_worker"])


def make_job(config: ExperimentConfig, prepared: Prepared, tokenizer, target_dir: str,
             cpus_per_worker: int | None = None) -> TrainJob:
    """The `TrainJob` of `unlearn run` (and of each sweep trial): the whole forget set of the prepared data."""
    data, template, max_length = prepared.data, prepared.template, config.data.max_length
    name, hparams = config.method.name, dict(config.method.hparams)
    profile = methods.profile(name, hparams)
    if config.train.deepspeed and not profile.supports_deepspeed:
        raise ConfigError(f"method {name!r} does not support DeepSpeed (it sets gradients by hand)")
    rows = method_rows(tokenizer, name, hparams, data.forget, data.retain, template, max_length)
    settings = worker_settings(config, cpus_per_worker)
    if settings.early_stop and not data.retain:
        if config.train.early_stop:  # asked for by the config, not the recipe: say why it cannot run
            raise ConfigError("train.early_stop measures the retain data's perplexity, and this run has no "
                              "retain data; set train.early_stop: false")
        settings = replace(settings, early_stop=None)
    refines = profile.refines_forget_set
    return TrainJob(
        target_dir=target_dir, method_name=name, method_hparams=hparams, train=settings, rows=rows,
        pad_token_id=tokenizer.pad_token_id, dtype=config.model.dtype,
        forget_samples=forget_samples(tokenizer, data.forget, "forget", template, max_length) if refines else [],
        holdout_samples=forget_samples(tokenizer, data.holdout, "holdout", template, max_length) if refines else [],
        early_stop_rows=early_stop_rows(tokenizer, settings, data.retain, template, max_length),
    )


def early_stop_rows(tokenizer, settings: WorkerSettings, retain: Sequence[Example], template: PromptTemplate,
                    max_length: int) -> list[EncodedRow]:
    """train.early_stop's yardstick: an even spread of at most `max_examples` retain examples (none when the rule
    is off)."""
    if not settings.early_stop:
        return []
    from orchestrator.worker.early_stop import even_spread

    base = ROW_ID_BASE["early_stop"]
    chosen = even_spread(list(range(len(retain))), settings.early_stop["max_examples"])
    return [encode(tokenizer, retain[j], base + j, template, max_length) for j in chosen]


def forget_samples(tokenizer, examples: Sequence[Example], part: str, template: PromptTemplate,
                   max_length: int) -> list[ForgetSample]:
    """Prompts and true answers of `examples` as ICU's refinement reads them (numbered like their rows)."""
    import torch

    base = ROW_ID_BASE[part]
    return [ForgetSample(base + i, torch.tensor(encode_prompt(tokenizer, e, template, max_length), dtype=torch.long),
                         torch.tensor(tokenizer.encode(e.answer, add_special_tokens=False), dtype=torch.long))
            for i, e in enumerate(examples)]
