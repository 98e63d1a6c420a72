"""Checks and deterministic subsets of an `UnlearningData`, whatever its source.

`validate` is called once after loading, so that a bad split fails with one clear line before any model is touched.
`select_split` caps each split for evaluation (e.g. TOFU's 3,600 retain QA) with a seeded, order-preserving sample.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Sequence

from orchestrator.data.schema import Example, UnlearningData

SPLITS: tuple[str, ...] = ("forget", "retain", "neighbour", "holdout", "world")


def validate(data: UnlearningData) -> UnlearningData:
    """Raise a one-line ValueError unless the splits are usable; returns `data` for chaining.

    Checks: a non-empty forget set; ids unique across forget, retain, holdout and world; no example (by id or by
    identical question and answer) both forgotten and retained or trained on and held out; neighbour ⊂ retain.
    """
    if not data.forget:
        raise ValueError(f"{data.name}: the forget set is empty")
    counts = Counter(e.id for split in (data.forget, data.retain, data.holdout, data.world) for e in split)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        raise ValueError(f"{data.name}: {len(duplicates)} duplicate example id(s), e.g. {duplicates[0]!r}")
    _check_disjoint(data.name, "forget", data.forget, "retain", data.retain + data.world)
    _check_disjoint(data.name, "holdout", data.holdout, "training", data.training_examples())
    retain_ids = {e.id for e in data.retain}
    outside = [e.id for e in data.neighbour if e.id not in retain_ids]
    if outside:
        raise ValueError(f"{data.name}: {len(outside)} neighbour example(s) not in retain, e.g. {outside[0]!r}")
    return data


def select_split(data: UnlearningData, max_per_split: int | None, seed: int = 0) -> UnlearningData:
    """At most `max_per_split` examples per split, chosen by `seed`, in their original order; None keeps all.

    For evaluation, not training. Each split draws from its own generator (seeded by `seed` and the split name), so
    capping one split does not change another's sample. Kept neighbours stay in the kept retain set.
    """
    if max_per_split is None:
        return data
    if max_per_split < 1:
        raise ValueError(f"max_per_split must be >= 1 or None, got {max_per_split}")
    picked = {name: subsample(getattr(data, name), max_per_split, f"{seed}/{name}") for name in SPLITS}
    # Keep the invariant neighbour ⊂ retain: the kept neighbours first, then a sample of the other retain examples.
    neighbour_ids = {e.id for e in picked["neighbour"]}
    others = tuple(e for e in data.retain if e.id not in {n.id for n in data.neighbour})
    fill = subsample(others, max_per_split - len(neighbour_ids), f"{seed}/retain")
    keep = neighbour_ids | {e.id for e in fill}
    picked["retain"] = tuple(e for e in data.retain if e.id in keep)
    meta = {**data.meta, "max_per_split": str(max_per_split), "subsample_seed": str(seed)}
    return replace(data, **picked, meta=meta)


def subsample(examples: Sequence[Example], k: int, seed: int | str) -> tuple[Example, ...]:
    """`k` of `examples` chosen by `seed`, in their original order (all of them when there are at most `k`)."""
    if len(examples) <= k:
        return tuple(examples)
    chosen = sorted(random.Random(seed).sample(range(len(examples)), k))
    return tuple(examples[i] for i in chosen)


def _check_disjoint(name: str, a_name: str, a: Sequence[Example], b_name: str, b: Sequence[Example]) -> None:
    b_ids = {e.id for e in b}
    b_content = {(e.question, e.answer) for e in b}
    for e in a:
        if e.id in b_ids or (e.question, e.answer) in b_content:
            raise ValueError(f"{name}: example {e.id!r} is in both {a_name} and {b_name}")
