"""Evaluation where the model was trained: on the Ray Train workers, in the run's dtype and on its device.

The driver never loads the unlearned model: the workers evaluate the trained module they hold and rank 0 hands the
`EvalReport` (a dict) back through the run's result. Which ranks take part depends on how the model is held:

- whole on every rank (plain torch, DeepSpeed ZeRO-0/1/2, whose modules keep full parameters): rank 0 evaluates
  alone and the others wait at the final report. Splitting the examples across ranks would need every metric to be
  re-derived from gathered per-example scores (AUCs, the KS test and ROUGE are not means of per-shard means);
  on the tiny default evaluation is a few seconds, and rank 0's pass is the same pass `unlearn eval` makes.
- partitioned (ZeRO-3): every forward gathers each layer's shards from all ranks, so every rank must run every
  forward. All ranks evaluate the *same* examples in lockstep and rank 0's report is kept. Greedy generation stops
  when every row has ended; the ranks compute the same tokens from the same gathered weights, and generation is
  synchronised across ranks all the same (HF's `synced_gpus`: a rank that has finished keeps forwarding until all
  have), so that a rounding difference between devices cannot leave one rank waiting in a collective forever.
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
                           partitioned: bool, progress: str = "off") -> dict[str, Any] | None:
    """The `EvalReport` of the trained `model` as a dict on rank 0, None on the other ranks.

    `partitioned`: the parameters are sharded across the ranks (ZeRO-3), so every rank must evaluate.
    `progress`: how rank 0 shows the evaluation (`orchestrator/observe/progress.py`: a bar, one line at the end, nothing).
    """
    if rank != 0 and not partitioned:
        return None
    from orchestrator.evaluation import EvalReport, EvalSettings, evaluate_model
    from orchestrator.models.loading import load_tokenizer
    from orchestrator.observe.progress import Steps

    settings = EvalSettings(**{**job.settings, "synced_generation": partitioned and world_size > 1})
    reference = EvalReport.from_dict(job.retain_reference) if job.retain_reference is not None else None
    shown = Steps("evaluation", unit="example", on_worker=True, mode=progress if rank == 0 else "off",
                  emit=lambda m: print(f"[unlearn] {m}", flush=True))
    tokenizer = load_tokenizer(job.tokenizer_dir)
    report = evaluate_model(model, tokenizer, job.data, job.template, settings, retain_reference=reference,
                            progress=shown)
    if job.attacks is not None and not partitioned:  # the run checks refuse attacks on a partitioned model
        from orchestrator.attacks.run import run_attacks
        from orchestrator.evaluation.evaluate import subsample

        forget = subsample(job.data.forget, settings.max_forget_examples, settings.seed)
        attacking = Steps("recovery attacks", unit="attack", on_worker=True, mode=progress,
                          emit=lambda m: print(f"[unlearn] {m}", flush=True))
        results = run_attacks(model, tokenizer, job.data, forget, job.template, settings, job.attacks)
        report.attack_results = [r.to_dict() for r in results]
        attacking.close(", ".join(f"{r.name} {r.seconds:.0f}s" for r in results))
    return report.to_dict() if rank == 0 else None
