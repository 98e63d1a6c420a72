"""Loading the real TOFU benchmark (locuslab/TOFU on the HF hub) into the project's schema.

Configs used, as in TOFU's own `config/eval_everything.yaml` and open-unlearning's `configs/data/datasets/TOFU_*`
(each has one split, "train"):
- `forgetXX` / `retainYY` (XX + YY = 100) / `holdoutXX`: columns question, answer.
- `forgetXX_perturbed`, `retain_perturbed` (400 retain rows): + paraphrased_answer, perturbed_answer (a list).
- `real_authors_perturbed`, `world_facts_perturbed`: question, answer, perturbed_answer; no paraphrase (TOFU scores
  these with the answer itself as the "correct" side of the truth ratio).

TOFU has no author column: its `full` set is 200 authors x 20 QA in order, `retainYY` is its first rows and
`forgetXX` its last, so the author of a row follows from its position. Refusals come from the built-in list
(open-unlearning downloads its `idk.jsonl`). TOFU has no neighbour split, so `neighbour` is empty.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config import ConfigError
from orchestrator.data.refusals import idk_answer
from orchestrator.data.schema import Example, UnlearningData

QA_PER_AUTHOR = 20
TOFU_SPLITS: dict[str, tuple[str, str]] = {  # forget config -> (retain config, holdout config)
    "forget01": ("retain99", "holdout01"),
    "forget05": ("retain95", "holdout05"),
    "forget10": ("retain90", "holdout10"),
}
WORLD_CONFIGS: dict[str, str] = {  # id prefix -> config
    "tofu-real-authors": "real_authors_perturbed",
    "tofu-world-facts": "world_facts_perturbed",
}


def load_tofu(forget_split: str = "forget10", path: str = "locuslab/TOFU", world: bool = True) -> UnlearningData:
    """TOFU's forget/retain/holdout (and real-world) splits as `UnlearningData`.

    `path` is a hub id or a local copy of the dataset repository (`git clone
    https://huggingface.co/datasets/locuslab/TOFU`); it goes to `datasets.load_dataset(path, config)`.
    Ids: "tofu-author-183/q7" (author 183, question 7), "tofu-holdout-004/q0", "tofu-world-facts/q12".
    """
    if forget_split not in TOFU_SPLITS:
        raise ValueError(f"forget_split must be one of {', '.join(TOFU_SPLITS)}, got {forget_split!r}")
    retain_split, holdout_split = TOFU_SPLITS[forget_split]
    forget_rows = load_rows(path, forget_split)
    retain_rows = load_rows(path, retain_split)
    forget_extra = _by_question(load_rows(path, f"{forget_split}_perturbed"))
    retain_extra = _by_question(load_rows(path, "retain_perturbed"))
    # Retain authors come first in TOFU's `full`; the forget authors follow them.
    first_forget_author = len(retain_rows) // QA_PER_AUTHOR
    forget = _author_examples(forget_rows, forget_extra, "tofu-author", first_forget_author)
    retain = _author_examples(retain_rows, retain_extra, "tofu-author", 0)
    holdout = _author_examples(load_rows(path, holdout_split), {}, "tofu-holdout", 0)
    world_examples: tuple[Example, ...] = ()
    if world:
        world_examples = tuple(
            e for prefix, config in WORLD_CONFIGS.items() for e in _world_examples(load_rows(path, config), prefix)
        )
    return UnlearningData(
        name=f"tofu/{forget_split}",
        forget=forget,
        retain=retain,
        holdout=holdout,
        world=world_examples,
        meta={
            "source": "tofu",
            "path": path,
            "forget_split": forget_split,
            "retain_split": retain_split,
            "holdout_split": holdout_split,
        },
    )


def load_rows(path: str, config: str) -> list[dict[str, Any]]:
    """One TOFU config's rows; any failure (no network, no such config) becomes a one-line ConfigError that names
    `data.tofu_path`, the key that points the loader at a local copy. Public: the stream's nested TOFU requests
    (`orchestrator/stream/sources.py`) read the forget splits with it too."""
    import datasets  # heavy; only this loader needs it

    try:
        rows = datasets.load_dataset(path, config, split="train").to_list()
    except Exception as exc:  # the hub, the cache and the builders raise many types; all mean "could not load"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(
            f"could not load the TOFU dataset {path!r} (config {config!r}: {type(exc).__name__}: {reason}); "
            "without hub access, set data.tofu_path to a local copy "
            "(git clone https://huggingface.co/datasets/locuslab/TOFU)"
        ) from exc
    missing = {"question", "answer"} - set(rows[0] if rows else ())
    if missing:
        raise ValueError(f"TOFU config {config!r} from {path!r} lacks column(s) {sorted(missing)} or has no rows")
    return rows


def _by_question(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    # The *_perturbed configs repeat the question, so it is the join key (row order is not relied on).
    return {row["question"]: row for row in rows}


def _author_examples(
    rows: list[dict[str, Any]], extra: dict[str, dict[str, Any]], prefix: str, first_author: int
) -> tuple[Example, ...]:
    examples = []
    for i, row in enumerate(rows):
        author = f"{prefix}-{first_author + i // QA_PER_AUTHOR:03d}"
        example_id = f"{author}/q{i % QA_PER_AUTHOR}"
        more = extra.get(row["question"], {})
        examples.append(_example(example_id, author, row["question"], row["answer"], more))
    return tuple(examples)


def _world_examples(rows: list[dict[str, Any]], prefix: str) -> tuple[Example, ...]:
    return tuple(_example(f"{prefix}/q{i}", prefix, row["question"], row["answer"], row) for i, row in enumerate(rows))


def _example(example_id: str, subject: str, question: str, answer: str, extra: dict[str, Any]) -> Example:
    perturbed = extra.get("perturbed_answer") or ()
    if isinstance(perturbed, str):
        perturbed = (perturbed,)
    return Example(
        id=example_id,
        question=question,
        answer=answer,
        subject=subject,
        paraphrased_answer=extra.get("paraphrased_answer"),
        perturbed_answers=tuple(perturbed),
        idk_answer=idk_answer(example_id),
        # Read where a copy of the data carries it (some TOFU mirrors add a rephrased question to the perturbed
        # sets); the rephrasing attack skips examples without one.
        paraphrased_questions=tuple(q for q in [extra.get("paraphrased_question")] if isinstance(q, str) and q),
    )
