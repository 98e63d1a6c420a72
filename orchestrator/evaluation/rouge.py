"""ROUGE-L of generations against ground truth, as TOFU and open-unlearning score it.

open-unlearning `eval_text_similarity` (`src/evals/metrics/utils.py`) uses
`rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)` and `scorer.score(ground_truth, generation)`;
TOFU reports the ROUGE-L *recall* (how much of the true answer the generation contains) and MUSE's verbatim and
knowledge memorisation the ROUGE-L *F1* (open-unlearning `configs/eval/muse_metrics/*_ROUGE.yaml`). Both come from
the same call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from nltk.stem import porter
from rouge_score import rouge_scorer, tokenize, tokenizers

# rouge_score logs through absl at INFO for every call; open-unlearning silences it the same way.
logging.getLogger("absl").setLevel(logging.WARNING)


@dataclass(frozen=True)
class RougeL:
    recall: float
    f1: float


class _CachedStemTokenizer(tokenizers.Tokenizer):
    """rouge_score's `DefaultTokenizer(use_stemmer=True)` with the Porter stemmer memoised.

    Same tokens (it calls the same `tokenize.tokenize` with the same stemmer); stemming is most of ROUGE's cost and
    the words of answers repeat across examples and evaluations.
    """

    def __init__(self) -> None:
        self._stem = lru_cache(maxsize=1 << 16)(porter.PorterStemmer().stem)

    def stem(self, word: str) -> str:
        return self._stem(word)

    def tokenize(self, text: str) -> list[str]:
        return tokenize.tokenize(text, self)


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    # Equivalent to RougeScorer(["rougeL"], use_stemmer=True), TOFU's and open-unlearning's scorer.
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_CachedStemTokenizer())


def rouge_l(generations: Sequence[str], references: Sequence[str]) -> list[RougeL]:
    """ROUGE-L recall and F1 of each generation against its reference (reference first, as rouge_score wants)."""
    if len(generations) != len(references):
        raise ValueError(f"{len(generations)} generations for {len(references)} references")
    scorer = _scorer()
    out = []
    for generation, reference in zip(generations, references):
        score = scorer.score(reference, generation)["rougeL"]
        out.append(RougeL(recall=float(score.recall), f1=float(score.fmeasure)))
    return out


def rouge_l_recall(generations: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-example ROUGE-L recall (TOFU's "ROUGE")."""
    return np.array([s.recall for s in rouge_l(generations, references)], dtype=np.float64)


def mean_rouge_l_recall(generations: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L recall over examples; 0.0 for none."""
    values = rouge_l_recall(generations, references)
    return float(values.mean()) if values.size else 0.0
