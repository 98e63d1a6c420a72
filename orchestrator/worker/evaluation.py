"""Evaluation where the model was trained: on the Ray Train workers, in the run's dtype and on its device.

The driver never loads the unlearned model: the workers evaluate the trained model and rank 0 hands the
`EvalReport` (a dict) back through the run's result. On several workers the evaluation is data-parallel: every rank
holds the whole model (under ZeRO-0/1/2 and plain DDP it does already; under ZeRO-3 the weights are gathered once
into a plain copy on every rank, `gathered_model`, instead of once per forward), each rank runs the per-example
passes on its share of the examples, and the results are gathered so that every rank derives the same metrics
(`orchestrator/evaluation/sharding.py`): the one-worker figures, in a world_size-th of the time. Recovery attacks
(whole fine-tuning runs of their own) then run on rank 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.attacks.config import AttacksConfig
from orchestrator.data.schema import UnlearningData
from orchestrator.data.tokenize import PromptTemplate

if TYPE_CHECKING:
    import torch

    from orchestrator.evaluation import EvalReport, EvalSettings


@dataclass
class EvaluationJob:
    """What the workers need to evaluate the unlearned model; picklable (it travels in the `TrainJob`).

    Settings and the retain report travel as plain dicts: a worker unpickles its job before the run starts, and
    the metrics' modules (nltk, rouge) are then imported only when it evaluates."""

    tokenizer_dir: str
    data: UnlearningData
    template: PromptTemplate
    settings: dict[str, Any]  # EvalSettings, asdict
    retain_reference: dict[str, Any] | None = None  # the retain model's EvalReport.to_dict(): forget quality, PrivLeak
    attacks: AttacksConfig | None = None  # recovery attacks after the evaluation (resolved: `attacks.config.resolved`)

    @classmethod
    def of(cls, tokenizer_dir: str, data: UnlearningData, template: PromptTemplate, settings: "EvalSettings",
           retain_reference: "EvalReport | None", attacks: AttacksConfig | None = None) -> "EvaluationJob":
        return cls(tokenizer_dir, data, template, asdict(settings),
                   retain_reference.to_dict() if retain_reference is not None else None, attacks)


def evaluate_where_trained(model: "torch.nn.Module", job: EvaluationJob, rank: int, world_size: int,
                           progress: str = "off") -> dict[str, Any] | None:
    """The `EvalReport` of the trained `model` (whole on every rank) as a dict on rank 0, None on the others; every
    rank must call it. `progress`: how rank 0 shows the evaluation (`orchestrator/observe/progress.py`)."""
    from orchestrator.evaluation import EvalReport, EvalSettings, evaluate_model
    from orchestrator.evaluation.sharding import ExampleShards
    from orchestrator.models.loading import load_tokenizer
    from orchestrator.observe.progress import Steps
    from orchestrator.worker.ranks import gather

    settings = EvalSettings(**job.settings)
    reference = EvalReport.from_dict(job.retain_reference) if job.retain_reference is not None else None
    shown = Steps("evaluation", unit="example", on_worker=True, mode=progress if rank == 0 else "off",
                  emit=lambda m: print(f"[unlearn] {m}", flush=True))
    tokenizer = load_tokenizer(job.tokenizer_dir)
    shards = ExampleShards(rank, world_size) if world_size > 1 else None
    report = evaluate_model(model, tokenizer, job.data, job.template, settings, retain_reference=reference,
                            progress=shown, shards=shards)
    if shards is not None:
        report.examples_per_rank = gather(shards.evaluated, world_size)
    if rank != 0:
        return None
    if job.attacks is not None:
        from orchestrator.attacks.run import run_attacks
        from orchestrator.evaluation.evaluate import subsample

        forget = subsample(job.data.forget, settings.max_forget_examples, settings.seed)
        attacking = Steps("recovery attacks", unit="attack", on_worker=True, mode=progress,
                          emit=lambda m: print(f"[unlearn] {m}", flush=True))
        results = run_attacks(model, tokenizer, job.data, forget, job.template, settings, job.attacks)
        report.attack_results = [r.to_dict() for r in results]
        attacking.close(", ".join(f"{r.name} {r.seconds:.0f}s" for r in results))
    return report.to_dict()


def gathered_model(module: "torch.nn.Module", target_dir: str, dtype: str,
                   device: "torch.device") -> "torch.nn.Module":
    """A plain copy of a ZeRO-3-partitioned `module` on every rank (LoRA adapters merged): each parameter is
    all-gathered once, here, so that evaluation forwards need no collective. Every rank must call it."""
    import deepspeed
    import torch

    from orchestrator.models.loading import fresh_copy_of

    plain = fresh_copy_of(module, target_dir, getattr(torch, dtype))
    own = dict(plain.named_parameters())
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            with deepspeed.zero.GatheredParameters([parameter]):
                own[name].copy_(parameter.detach())
    if hasattr(plain, "merge_and_unload"):
        plain = plain.merge_and_unload()
    plain.requires_grad_(True)  # as the exported model loads: the gradient-norm attack differentiates every weight
    return plain.to(device)
