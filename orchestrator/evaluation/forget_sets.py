"""What the workers measure after each request: every forget set so far, and utility (retain, neighbour, world).

Forget sets: one likelihood pass and one greedy generation over all of them together (the per-person sets are
small; batching them keeps the cost of request k's evaluation close to one pass over k * 8 answers), then means per
request: `probability` (TOFU's P(a|q)^(1/|a|)) and `rouge_l` (ROUGE-L recall of the greedy answer). Utility is
`evaluate_model`'s TOFU model utility on capped retain and world sets, with the neighbour set as the over-unlearning
probe; examples named by any request so far are left out of them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from orchestrator.data.schema import Example, UnlearningData
from orchestrator.data.tokenize import PromptTemplate

UTILITY_KEYS = ("model_utility", "retain_rouge_l", "retain_probability", "neighbour_rouge_l",
                "neighbour_probability", "world_rouge_l")


def forget_metrics(model, tokenizer, groups: Sequence[tuple[Any, Sequence[Example]]], template: PromptTemplate,
                   settings) -> dict[Any, dict[str, float]]:
    """{group key: {"probability", "rouge_l", "count"}} for each group of forget examples."""
    from orchestrator.evaluation import tofu
    from orchestrator.evaluation.generation import generate_answers
    from orchestrator.evaluation.likelihood import score_answers
    from orchestrator.evaluation.rouge import rouge_l

    examples = [e for _, group in groups for e in group]
    if not examples:
        return {}
    common = dict(batch_size=settings.batch_size, max_length=settings.max_length)
    was_training = model.training
    model.eval()
    try:
        scores = score_answers(model, tokenizer, examples, template, **common)
        generations = generate_answers(model, tokenizer, examples, template, max_new_tokens=settings.max_new_tokens,
                                       **common)
    finally:
        model.train(was_training)
    probability = tofu.probability(scores.mean_logprob)
    recall = np.array([r.recall for r in rouge_l(generations.texts, generations.references)])
    out: dict[Any, dict[str, float]] = {}
    start = 0
    for key, group in groups:
        end = start + len(group)
        out[key] = {"probability": float(np.mean(probability[start:end])),
                    "rouge_l": float(np.mean(recall[start:end])), "count": len(group)}
        start = end
    return out


def utility_data(data: UnlearningData, excluded: set[str], cap: int) -> UnlearningData:
    """Retain, neighbour and world examples (at most `cap` each, by a seeded hash of the id), none of `excluded`."""
    from orchestrator.evaluation.evaluate import subsample

    def keep(split: tuple[Example, ...]) -> tuple[Example, ...]:
        return subsample(tuple(e for e in split if e.id not in excluded), cap)

    return replace(data, forget=(), holdout=(), retain=keep(data.retain), neighbour=keep(data.neighbour),
                   world=keep(data.world))


def utility_metrics(model, tokenizer, data: UnlearningData, template: PromptTemplate, settings) -> dict[str, Any]:
    from orchestrator.evaluation import evaluate_model

    summary = evaluate_model(model, tokenizer, data, template, settings).summary
    return {key: summary.get(key) for key in UTILITY_KEYS}
