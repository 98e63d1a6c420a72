"""Probing as an attack: the forget questions put another way, with no change to the weights.

Knowledge that unlearning only disconnected from the trained phrasing answers a rephrased question, or one asked
after a few in-context examples of the format (the reformatting and in-context attacks of the unlearning
literature: Joshi et al. 2024, "Towards Robust Evaluation of Unlearning in LLMs via Data Transformations"; Lynch
et al. 2024, "Eight Methods to Evaluate Robust Unlearning in LLMs").
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Sequence

from orchestrator.data.schema import Example
from orchestrator.data.tokenize import PromptTemplate

REPHRASED = "~r"  # rephrased ids: "<id>~r<i>"


def rephrased(forget: Sequence[Example]) -> tuple[Example, ...]:
    """Every forget question in each of its other phrasings, with the same answer; id "<id>~r<i>"."""
    return tuple(replace(example, id=f"{example.id}{REPHRASED}{i}", question=question, paraphrased_questions=())
                 for example in forget if example.kind == "qa"
                 for i, question in enumerate(example.paraphrased_questions))


def original_id(example_id: str) -> str:
    """The forget example a rephrased one was made from."""
    return example_id.split(REPHRASED, 1)[0]


def few_shot_template(template: PromptTemplate, retain: Sequence[Example], shots: int,
                      exclude: Sequence[Example] = (), seed: int = 0) -> PromptTemplate:
    """`template` with `shots` retained question/answer pairs (by hashed id, none of `exclude`: the neighbours,
    whose answers can give a forget fact away) written before every question."""
    pool = few_shot_pool(retain, exclude)
    if len(pool) < shots:
        raise ValueError(f"a {shots}-shot prefix needs {shots} retained question/answer pairs, the data has "
                         f"{len(pool)}")
    chosen = sorted(pool, key=lambda e: hashlib.sha256(f"shots:{seed}:{e.id}".encode()).digest())[:shots]
    return replace(template, context="".join(template.shot(e.question, e.answer) for e in chosen))


def few_shot_pool(retain: Sequence[Example], exclude: Sequence[Example] = ()) -> list[Example]:
    """The retained question/answer pairs a few-shot prefix may draw on: none of `exclude` (the neighbours)."""
    left_out = {example.id for example in exclude}
    return [e for e in retain if e.kind == "qa" and e.id not in left_out]
