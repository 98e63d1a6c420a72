"""The recovery attacks on one model, where the model is held: `run_attacks(model, ...) -> [AttackResult]`.

Each attack scores the forget examples it applies to (forget ROUGE-L recall of the greedy answer, and the
length-normalised answer probability, as the evaluation scores them) on a copy of the model, or (the prompt
attacks) on the model itself with no change to its weights. The model is given back as it came: same weights,
same mode. Recovery figures need the model before unlearning too, so they are derived elsewhere
(`recovery.py`), from these values and the evaluation reports.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from orchestrator.attacks.config import AttacksConfig
from orchestrator.attacks.prompts import few_shot_template, original_id, rephrased
from orchestrator.attacks.quantise import quantise_model
from orchestrator.attacks.recovery import METRICS
from orchestrator.attacks.relearn import benign_slice, relearn, relearning_split
from orchestrator.data.schema import Example, UnlearningData
from orchestrator.data.tokenize import PromptTemplate
from orchestrator.evaluation.generation import generate_answers
from orchestrator.evaluation.likelihood import score_answers
from orchestrator.evaluation.rouge import rouge_l
from orchestrator.evaluation import tofu

if TYPE_CHECKING:
    from orchestrator.evaluation import EvalSettings



@dataclass
class AttackResult:
    """One attack on one model: the mean of each metric over the forget examples it scored (`ids`)."""

    name: str  # relearn, quantise_8bit, quantise_4bit, rephrase, few_shot
    ids: list[str]  # the forget examples scored (a rephrased question counts for the example it rephrases)
    values: dict[str, float | None]  # forget_rouge_l, forget_probability
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)  # relearn: steps, lr, trained on; quantise: layers
    # Per original example id: {"rouge_l", "probability"} (a rephrased example's phrasings averaged), so that a
    # caller can take means over any part of `ids` (a request stream: each request's forget set).
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_examples(model: torch.nn.Module, tokenizer, examples: Sequence[Example], template: PromptTemplate,
                   settings: "EvalSettings") -> dict[str, dict[str, float]]:
    """Per example id: ROUGE-L recall of the greedy answer and P(a|q)^(1/|a|), as the evaluation computes them."""
    if not examples:
        return {}
    was_training = model.training
    model.eval()
    try:
        common = dict(batch_size=settings.batch_size, max_length=settings.max_length)
        scores = score_answers(model, tokenizer, examples, template, **common)
        generations = generate_answers(model, tokenizer, examples, template, max_new_tokens=settings.max_new_tokens,
                                       synced=settings.synced_generation, **common)
    finally:
        model.train(was_training)
    recall = [r.recall for r in rouge_l(generations.texts, generations.references)]
    probability = tofu.probability(scores.mean_logprob)
    return {e.id: {"rouge_l": float(r), "probability": float(p)} for e, r, p in zip(examples, recall, probability)}


def per_original(per_example: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per original example id, its values: a rephrased example's phrasings averaged into the example they
    rephrase, so that every forget example weighs the same whatever its number of phrasings."""
    grouped: dict[str, list[dict[str, float]]] = {}
    for example_id, values in per_example.items():
        grouped.setdefault(original_id(example_id), []).append(values)
    return {i: {name: float(np.mean([v[name] for v in group])) for name in METRICS.values()}
            for i, group in grouped.items()}


def mean_values(scores: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """The summary metrics' means over `scores` (per original id)."""
    return {summary_name: float(np.mean([v[name] for v in scores.values()])) if scores else None
            for summary_name, name in METRICS.items()}


def run_attacks(model: torch.nn.Module, tokenizer, data: UnlearningData, forget: Sequence[Example],
                template: PromptTemplate, settings: "EvalSettings", attacks: AttacksConfig) -> list[AttackResult]:
    """Every attack of `attacks.run` on `model`, scored on `forget` (the evaluated forget examples).

    `attacks` must have its relearning lr and batch size filled in (`config.resolved`)."""
    results: list[AttackResult] = []
    for name in attacks.run:
        if name == "relearn":
            results.append(relearn_attack(model, tokenizer, data, forget, template, settings, attacks))
        elif name == "quantise":
            for bits in attacks.quantise.bits:
                results.append(_timed(f"quantise_{bits}bit", lambda b=bits: _quantised(
                    model, tokenizer, forget, template, settings, attacks, b)))
        else:
            if attacks.probe.rephrase:
                results.append(_timed("rephrase", lambda: (score_examples(
                    model, tokenizer, rephrased(forget), template, settings), {})))
            if attacks.probe.few_shot:
                shots = few_shot_template(template, data.retain, attacks.probe.few_shot, exclude=data.neighbour,
                                          seed=attacks.relearn.seed)
                questions = [e for e in forget if e.kind == "qa"]
                # The prefix comes on top of the row's own length: rows are cut at max_length from the right.
                longer = replace(settings, max_length=settings.max_length
                                 + len(tokenizer.encode(shots.context, add_special_tokens=False)))
                results.append(_timed("few_shot", lambda: (score_examples(
                    model, tokenizer, questions, shots, longer), {"shots": attacks.probe.few_shot})))
    return results


def relearn_attack(model: torch.nn.Module, tokenizer, data: UnlearningData, forget: Sequence[Example],
                   template: PromptTemplate, settings: "EvalSettings", attacks: AttacksConfig) -> AttackResult:
    """Relearn a copy of `model` (`relearn.py`) and score it on the forget examples it was not trained on."""
    r = attacks.relearn
    assert r.lr is not None and r.batch_size is not None, "resolve the attacks config first"
    shown, held_out = relearning_split(forget, r.fraction, r.seed)
    if r.data != "forget":
        shown = benign_slice(getattr(data, r.data), len(shown), r.seed)

    def attack() -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
        attacked = _copy(model)
        losses = relearn(attacked, tokenizer, shown, template, lr=r.lr, epochs=r.epochs, batch_size=r.batch_size,
                         max_length=settings.max_length, seed=r.seed)
        scored = score_examples(attacked, tokenizer, held_out, template, settings)
        del attacked
        _free_cached_memory()
        return scored, {"trained_on": r.data, "train_examples": len(shown), "lr": r.lr, "epochs": r.epochs,
                        "batch_size": r.batch_size, "losses": [round(x, 4) for x in losses]}

    return _timed("relearn", attack)


def _quantised(model: torch.nn.Module, tokenizer, forget: Sequence[Example], template: PromptTemplate,
               settings: "EvalSettings", attacks: AttacksConfig,
               bits: int) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    attacked = _copy(model)
    layers = quantise_model(attacked, bits, attacks.quantise.group_size, attacks.quantise.method)
    scored = score_examples(attacked, tokenizer, forget, template, settings)
    del attacked
    _free_cached_memory()
    return scored, {"layers": layers, "group_size": attacks.quantise.group_size, "method": attacks.quantise.method}


def _timed(name: str, attack) -> AttackResult:
    started = time.perf_counter()
    scored, detail = attack()
    scores = per_original(scored)
    return AttackResult(name, list(scores), mean_values(scores), round(time.perf_counter() - started, 3), detail,
                        {i: {k: round(v, 6) for k, v in values.items()} for i, values in scores.items()})


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy the attack may change: adapters (LoRA, FILA) merged into its weights, as the exported model has them."""
    attacked = copy.deepcopy(model)
    if hasattr(attacked, "merge_and_unload"):
        attacked = attacked.merge_and_unload()
    return attacked


def _free_cached_memory() -> None:
    """Give the attacked copy's GPU memory back to the device before the next attack."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
