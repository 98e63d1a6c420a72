"""Relearning as an attack: a few fine-tuning steps on part of what was forgotten, scored on the rest.

Hu et al. 2024 (arXiv 2406.13356) and Deeb & Roger 2024 (arXiv 2410.08827): a model that only hid the forget set
gets facts back that the attack never showed it; one that removed them learns only what it was shown. So the slice
the attack trains on and the examples it is scored on never overlap (`relearning_split`), and the same steps on
the retain model, which never knew the data, measure what relearning teaches by generalisation alone.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch

from orchestrator.data.schema import Example
from orchestrator.data.tokenize import PromptTemplate, encode
from orchestrator.models.finetune import finetune


def _hashed_order(examples: Sequence[Example], salt: str) -> list[int]:
    return sorted(range(len(examples)), key=lambda i: hashlib.sha256(f"{salt}:{examples[i].id}".encode()).digest())


def relearning_split(forget: Sequence[Example], fraction: float,
                     seed: int = 0) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """(the slice the attack trains on, the rest it is scored on): a `fraction` of `forget` by hashed id, at least
    one example on each side, both in their original order. Depends only on the ids and the seed."""
    if len(forget) < 2:
        raise ValueError(f"relearning needs at least 2 forget examples (one to train on, one to score), "
                         f"got {len(forget)}")
    order = _hashed_order(forget, f"relearn:{seed}")
    count = min(max(1, math.ceil(fraction * len(forget))), len(forget) - 1)
    taken = set(order[:count])
    return (tuple(e for i, e in enumerate(forget) if i in taken),
            tuple(e for i, e in enumerate(forget) if i not in taken))


def benign_slice(candidates: Sequence[Example], count: int, seed: int = 0) -> tuple[Example, ...]:
    """`count` of `candidates` (neighbour or retain examples) by hashed id, for benign relearning."""
    if not candidates:
        raise ValueError("benign relearning: the split it trains on has no examples")
    order = _hashed_order(candidates, f"benign:{seed}")
    return tuple(candidates[i] for i in sorted(order[:count]))


def relearn(model: torch.nn.Module, tokenizer, examples: Sequence[Example], template: PromptTemplate, *, lr: float,
            epochs: int, batch_size: int, max_length: int, seed: int = 0) -> list[float]:
    """Fine-tune `model` in place on `examples` with the fine-tuning loop (AdamW, warm-up, decay), every weight
    trainable (the attacker holds the whole model, whatever the method trained); returns the epoch losses."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            parameter.requires_grad_(True)
    rows = [encode(tokenizer, example, i, template, max_length) for i, example in enumerate(examples)]
    losses = finetune(model, rows, tokenizer.pad_token_id, epochs, lr, batch_size, seed=seed, label="relearn")
    model.eval()
    return losses
