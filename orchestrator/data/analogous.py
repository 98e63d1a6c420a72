"""ICU's analogous samples: each forget example's nearest neighbour among the retained data.

ICU's code embeds texts with all-MiniLM-L6-v2; we use TF-IDF over word unigrams and bigrams with cosine similarity,
which needs no model download and picks the same kind of neighbour on template-generated facts (same question type,
overlapping words). Ties break by retain order, so the pairing is deterministic.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np

from orchestrator.data.schema import Example

_WORD = re.compile(r"[a-z0-9']+")


def _terms(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def _tfidf(docs: Sequence[list[str]], vocabulary: dict[str, int], idf: np.ndarray) -> np.ndarray:
    matrix = np.zeros((len(docs), len(vocabulary)), dtype=np.float32)
    for row, terms in enumerate(docs):
        for term, count in Counter(terms).items():
            col = vocabulary.get(term)
            if col is not None:
                matrix[row, col] = (1 + math.log(count)) * idf[col]
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def nearest_retained(forget: Sequence[Example], retain: Sequence[Example]) -> list[int]:
    """For each forget example, the position in `retain` of its most similar retained example."""
    if not retain:
        raise ValueError("ICU needs retained data to pick analogous samples from, and the retain set is empty")
    forget_docs = [_terms(f"{e.question} {e.answer}") for e in forget]
    retain_docs = [_terms(f"{e.question} {e.answer}") for e in retain]
    document_frequency = Counter(t for doc in forget_docs + retain_docs for t in set(doc))
    vocabulary = {t: i for i, t in enumerate(sorted(document_frequency))}
    n_docs = len(forget_docs) + len(retain_docs)
    idf = np.array([math.log((1 + n_docs) / (1 + document_frequency[t])) + 1 for t in sorted(document_frequency)],
                   dtype=np.float32)
    similarity = _tfidf(forget_docs, vocabulary, idf) @ _tfidf(retain_docs, vocabulary, idf).T
    return [int(i) for i in similarity.argmax(axis=1)]
