"""The records every data source produces, and the split container the pipeline passes around.

One schema for the synthetic "fictitious people" set, the real TOFU set and plain-text corpora, so that tokenisation,
training and evaluation never ask where the data came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ExampleKind = Literal["qa", "text"]


@dataclass(frozen=True)
class Example:
    """One unit of knowledge: a question/answer pair (`kind="qa"`) or a passage of text (`kind="text"`).

    For text, `question` is empty and `answer` is the passage: all of it is trained on, and verbatim memorisation
    is measured by prompting with its first tokens.
    """

    id: str  # stable across runs, e.g. "person-017/q3"; logs and ledgers use it, never the text
    question: str
    answer: str
    subject: str  # the person / book / document the fact belongs to; splits are made per subject
    kind: ExampleKind = "qa"
    paraphrased_answer: str | None = None  # same facts, other words (truth ratio denominator)
    perturbed_answers: tuple[str, ...] = ()  # same template, wrong facts (truth ratio numerator)
    idk_answer: str | None = None  # an "I don't know" style refusal (IdkPO's preferred answer)


@dataclass(frozen=True)
class UnlearningData:
    """The splits of one unlearning problem.

    - forget: what must be forgotten.
    - retain: what was trained alongside and must be kept (the retain model is trained on this alone).
    - neighbour: retained facts that resemble the forget set (same family / place / topic): over-unlearning probe.
      Its examples are also in `retain`.
    - holdout: same distribution as forget, never trained on: MIA non-members and the "never seen" baseline.
    - world: general facts the target also knows (TOFU's real-world sets): utility beyond the fictitious people.
    """

    name: str
    forget: tuple[Example, ...]
    retain: tuple[Example, ...]
    neighbour: tuple[Example, ...] = ()
    holdout: tuple[Example, ...] = ()
    world: tuple[Example, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)

    def training_examples(self) -> tuple[Example, ...]:
        """What the target model is fine-tuned on: everything but the holdout."""
        return self.forget + self.retain + self.world

    def retain_training_examples(self) -> tuple[Example, ...]:
        """What the retain model is fine-tuned on: the target's data minus the forget set."""
        return self.retain + self.world
