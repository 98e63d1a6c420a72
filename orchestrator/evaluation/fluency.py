"""Fluency of generated text: ROME's weighted n-gram entropy, and the share of degenerate generations.

Unlearning by gradient ascent often "forgets" by emitting nothing or the same token again and again; ROUGE then
drops as it should, but so would it for a fluent wrong answer. These two numbers tell the cases apart.

n-gram entropy follows ROME (Meng et al. 2022, arXiv 2202.05262), kmeng01/rome
`experiments/py/eval_utils_counterfact.py`: `compute_n_gram_entropy` with ns = [2, 3], weights = [2/3, 4/3],
entropies in bits, the per-text value the arithmetic mean of the weighted entropies, and `n_gram_entropy` the
arithmetic mean over texts. ROME tokenises with `nltk.word_tokenize`, which needs the punkt data files; we use the
word tokenizer it calls per sentence (`NLTKWordTokenizer`, no data files), so sentence-final periods stay attached
to their word: a small difference that does not change the ranking of repetitive against varied text.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Sequence

import numpy as np
from nltk.tokenize import NLTKWordTokenizer

ROME_NS = (2, 3)
ROME_WEIGHTS = (2 / 3, 4 / 3)


@lru_cache(maxsize=1)
def _word_tokenizer() -> NLTKWordTokenizer:
    return NLTKWordTokenizer()


def n_gram_entropy(text: str, ns: Sequence[int] = ROME_NS, weights: Sequence[float] = ROME_WEIGHTS) -> float:
    """ROME's weighted n-gram entropy of one text (bits); 0 for a text too short to hold an n-gram."""
    tokens = _word_tokenizer().tokenize(text)
    weighted = []
    for n, weight in zip(ns, weights):
        counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        freqs = np.array(list(counts.values()), dtype=np.float64)
        entropy = float(-(freqs / freqs.sum() * np.log2(freqs / freqs.sum())).sum()) if freqs.size else 0.0
        weighted.append(weight * entropy)
    return float(np.mean(weighted))


def mean_n_gram_entropy(texts: Sequence[str]) -> float:
    """Arithmetic mean of `n_gram_entropy` over texts (ROME's `n_gram_entropy(agg="arith")`)."""
    return float(np.mean([n_gram_entropy(t) for t in texts])) if len(texts) else float("nan")


def is_degenerate(text: str, token_ids: Sequence[int] | None = None) -> bool:
    """Empty, or one token repeated (at least twice). Judged on `token_ids` when given, else on the words."""
    units = list(token_ids) if token_ids is not None else _word_tokenizer().tokenize(text)
    if not units or not text.strip():
        return True
    return len(units) >= 2 and len(set(units)) == 1


def degenerate_fraction(texts: Sequence[str], token_ids: Sequence[Sequence[int]] | None = None) -> float:
    """Share of generations that are empty or a single repeated token."""
    if not len(texts):
        return float("nan")
    flags = [is_degenerate(t, None if token_ids is None else token_ids[i]) for i, t in enumerate(texts)]
    return float(np.mean(flags))
