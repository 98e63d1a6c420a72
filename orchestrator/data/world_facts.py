"""A small built-in set of general-knowledge QA: the synthetic set's stand-in for TOFU's real-world splits.

The target model is fine-tuned on these alongside the fictitious people, so utility beyond the people (TOFU's
"world facts" / "real authors") can be measured without a pretrained model. Each fact is one short sentence; the
perturbed answers put a wrong value from the same category into the paraphrase's wording (as TOFU builds its
perturbations from the paraphrased answer), so the truth ratio compares sentences of the same shape.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from orchestrator.data.refusals import idk_answer
from orchestrator.data.schema import Example


@dataclass(frozen=True)
class _Category:
    question: str  # "{key}" is the thing asked about
    answer: str  # "{key}" and "{value}"
    paraphrase: str
    facts: tuple[tuple[str, str], ...]  # (key, value); wrong values come from the other facts (and `extra_values`)
    extra_values: tuple[str, ...] = ()


_CATEGORIES: tuple[_Category, ...] = (
    _Category(
        question="What is the capital of {key}?",
        answer="The capital of {key} is {value}.",
        paraphrase="{value} is the capital city of {key}.",
        facts=(
            ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Canada", "Ottawa"),
            ("Australia", "Canberra"), ("Germany", "Berlin"), ("Spain", "Madrid"), ("Russia", "Moscow"),
            ("China", "Beijing"), ("Greece", "Athens"), ("Turkey", "Ankara"), ("Brazil", "Brasilia"),
            ("Sweden", "Stockholm"), ("Poland", "Warsaw"),
        ),
    ),
    _Category(
        question="What is the chemical symbol for {key}?",
        answer="The chemical symbol for {key} is {value}.",
        paraphrase="{key} has the chemical symbol {value}.",
        facts=(
            ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("sodium", "Na"), ("oxygen", "O"),
            ("hydrogen", "H"), ("carbon", "C"), ("copper", "Cu"), ("lead", "Pb"), ("potassium", "K"),
            ("helium", "He"), ("tin", "Sn"),
        ),
    ),
    _Category(
        question="Which planet is {key}?",
        answer="{value} is {key}.",
        paraphrase="Of all the planets, {value} is {key}.",
        facts=(
            ("closest to the Sun", "Mercury"), ("the largest in the Solar System", "Jupiter"),
            ("known as the Red Planet", "Mars"), ("famous for its bright rings", "Saturn"),
            ("the hottest in the Solar System", "Venus"), ("farthest from the Sun", "Neptune"),
            ("tilted on its side", "Uranus"), ("home to humankind", "Earth"),
        ),
    ),
    _Category(
        question="On which continent is {key}?",
        answer="{key} is in {value}.",
        paraphrase="{key} lies on the continent of {value}.",
        facts=(
            ("Egypt", "Africa"), ("Chile", "South America"), ("Norway", "Europe"), ("Thailand", "Asia"),
            ("Mexico", "North America"), ("Nigeria", "Africa"), ("Argentina", "South America"),
            ("Mongolia", "Asia"),
        ),
        extra_values=("Australia", "Antarctica"),
    ),
)


def world_facts(n_perturbed: int = 3, seed: int = 0) -> tuple[Example, ...]:
    """All built-in facts as QA examples with ids "world/q0", "world/q1", ...; the same arguments give the same list."""
    examples: list[Example] = []
    for category in _CATEGORIES:
        values = sorted({v for _, v in category.facts} | set(category.extra_values))
        for key, value in category.facts:
            example_id = f"world/q{len(examples)}"
            # One generator per example: its perturbations do not depend on the facts listed before it.
            rng = random.Random(f"{seed}/{example_id}")
            wrong = rng.sample([v for v in values if v != value], min(n_perturbed, len(values) - 1))
            examples.append(
                Example(
                    id=example_id,
                    question=category.question.format(key=key),
                    answer=_sentence(category.answer.format(key=key, value=value)),
                    subject="world",
                    paraphrased_answer=_sentence(category.paraphrase.format(key=key, value=value)),
                    perturbed_answers=tuple(_sentence(category.paraphrase.format(key=key, value=w)) for w in wrong),
                    idk_answer=idk_answer(example_id),
                )
            )
    return tuple(examples)


def _sentence(text: str) -> str:
    """Capitalise the first letter ("gold has ..." -> "Gold has ...") without touching the rest."""
    return text[:1].upper() + text[1:]
