"""Memorisation metrics: extraction strength, exact memorisation, and MUSE's verbatim / knowledge memorisation.

The first two read one teacher-forced pass (`likelihood.score_answers(details=True)`): at answer position t the
model is "correct" when its argmax equals the true token. Under greedy decoding, the continuation of a prefix
`y_<k` reproduces `y_>=k` exactly if and only if every teacher-forced position from k on is correct (by induction
on t: with the true prefix fed in, greedy picks the argmax). So no generation is needed for either.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from orchestrator.evaluation.rouge import RougeL


def extraction_strength(token_correct: np.ndarray) -> float:
    """ES = 1 - k/|y|, k the shortest answer prefix after which greedy decoding reproduces the rest exactly.

    (Carlini et al. 2021's extraction, as open-unlearning `extraction_strength` in
    `src/evals/metrics/memorization.py`.) k = 1 + the last position where argmax != label, or 0 if none.
    open-unlearning's loop stops at k = |y| - 1, so an answer whose very last token is wrong scores 1/|y| there;
    here it scores 0, the value of the definition (the empty suffix is the only one reproduced). No tokens: 0, as
    open-unlearning.
    """
    correct = np.asarray(token_correct, dtype=bool)
    n = correct.size
    if n == 0:
        return 0.0
    misses = np.flatnonzero(~correct)
    k = 0 if misses.size == 0 else int(misses[-1]) + 1
    return 1.0 - k / n


def exact_memorisation(token_correct: np.ndarray) -> float | None:
    """Fraction of answer tokens the model predicts exactly under teacher forcing (open-unlearning
    `exact_memorization`, Tirumala et al. 2022); None for no tokens (open-unlearning's "score: None")."""
    correct = np.asarray(token_correct, dtype=bool)
    return float(correct.mean()) if correct.size else None


def mean_extraction_strength(token_correct: Sequence[np.ndarray]) -> float:
    """Mean ES over examples."""
    return float(np.mean([extraction_strength(c) for c in token_correct])) if len(token_correct) else float("nan")


def mean_exact_memorisation(token_correct: Sequence[np.ndarray]) -> float:
    """Mean exact memorisation over the examples that have answer tokens."""
    values = [v for v in (exact_memorisation(c) for c in token_correct) if v is not None]
    return float(np.mean(values)) if values else float("nan")


def verbatim_memorisation(rouge: Sequence[RougeL], kinds: Sequence[str]) -> float | None:
    """MUSE VerbMem: mean ROUGE-L F1 of the greedy continuation of a passage's first half against its second half.

    (MUSE, arXiv 2407.06460; F1 as open-unlearning `configs/eval/muse_metrics/forget_verbmem_ROUGE.yaml`.) Over the
    `kind="text"` examples; None when there are none.
    """
    values = [r.f1 for r, kind in zip(rouge, kinds) if kind == "text"]
    return float(np.mean(values)) if values else None


def knowledge_memorisation(rouge: Sequence[RougeL], kinds: Sequence[str]) -> float | None:
    """MUSE KnowMem: mean ROUGE-L F1 of generated answers to questions about the data (open-unlearning
    `forget_knowmem_ROUGE.yaml`). Over the `kind="qa"` examples; None when there are none."""
    values = [r.f1 for r, kind in zip(rouge, kinds) if kind == "qa"]
    return float(np.mean(values)) if values else None
