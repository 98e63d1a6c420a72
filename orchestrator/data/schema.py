"""The records every data source produces, and the split container the pipeline passes around.

One schema for the synthetic "fictitious people" set, the real TOFU set and plain-text corpora, so that tokenisation,
training and evaluation never ask where the data came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ExampleKind = Literal["qa", "text"]
ProbeKind = Literal["choice", "continuation", "qa"]
ProbeRole = Literal["forget", "utility"]


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
    paraphrased_questions: tuple[str, ...] = ()  # the same question in other words (the rephrasing attack)


@dataclass(frozen=True)
class ProbeItem:
    """One benchmark item, put to the model exactly as the benchmark writes it (no prompt template).

    - choice (WMDP, MMLU, the embedded hazard questions): `choices` are the continuations scored after `prompt`;
      `answer` is the index of the right one, and `target` is that choice.
    - continuation (MUSE VerbMem): `target` is the text the model should not reproduce after `prompt`.
    - qa (MUSE KnowMem): `prompt` is the question, `target` the answer; the probe's `prefix` holds the in-context
      examples.
    """

    id: str
    prompt: str
    target: str
    choices: tuple[str, ...] = ()
    answer: int | None = None

    def __post_init__(self) -> None:
        if self.choices and (self.answer is None or not 0 <= self.answer < len(self.choices)):
            raise ValueError(f"probe item {self.id!r}: answer {self.answer!r} is not an index of its "
                             f"{len(self.choices)} choices")


@dataclass(frozen=True)
class Probe:
    """A benchmark's own evaluation set beside the splits: MUSE's VerbMem and KnowMem, WMDP's and MMLU's questions.

    `role` says how the evaluation reads it: "forget" probes should fall with unlearning, "utility" probes should
    hold. Its results appear in the report as `probe_<name>` (accuracy for choice probes, ROUGE-L for the others).
    """

    name: str
    kind: ProbeKind
    role: ProbeRole
    items: tuple[ProbeItem, ...]
    prefix: str = ""  # text put before every prompt: in-context examples, a benchmark's header
    max_new_tokens: int | None = None  # the benchmark's generation length (MUSE: 128 VerbMem, 32 KnowMem)
    stop: tuple[str, ...] = ()  # generation ends at the first of these (KnowMem: "\n\n", "\nQuestion", "Question:")

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError(f"probe {self.name!r} has no items")
        if self.kind == "choice" and any(not item.choices for item in self.items):
            raise ValueError(f"probe {self.name!r}: a choice probe needs choices on every item")


@dataclass(frozen=True)
class UnlearningData:
    """The splits of one unlearning problem.

    - forget: what must be forgotten.
    - retain: what was trained alongside and must be kept (the retain model is trained on this alone).
    - neighbour: retained facts that resemble the forget set (same family / place / topic): over-unlearning probe.
      Its examples are also in `retain`.
    - holdout: same distribution as forget, never trained on: MIA non-members and the "never seen" baseline.
    - world: general facts the target also knows (TOFU's real-world sets): utility beyond the fictitious people.
    - probes: a benchmark's own evaluation sets (MUSE, WMDP); never trained on.
    """

    name: str
    forget: tuple[Example, ...]
    retain: tuple[Example, ...]
    neighbour: tuple[Example, ...] = ()
    holdout: tuple[Example, ...] = ()
    world: tuple[Example, ...] = ()
    probes: tuple[Probe, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)

    def training_examples(self) -> tuple[Example, ...]:
        """What the target model is fine-tuned on: everything but the holdout."""
        return self.forget + self.retain + self.world

    def retain_training_examples(self) -> tuple[Example, ...]:
        """What the retain model is fine-tuned on: the target's data minus the forget set."""
        return self.retain + self.world
