"""The smallest real run the tests drive end to end: a 1-layer tiny Llama, 10 people (2 forget rows), short
evaluation. `tiny_run(**sections)` returns it as a config dict with the given sections merged in."""

from __future__ import annotations

import copy
from typing import Any

TINY_RUN: dict[str, Any] = {
    "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                       "vocab_size": 300},
              "pretrain": None, "finetune": {"epochs": 2, "batch_size": 32}},
    "data": {"synthetic": {"n_people": 10, "questions_per_person": 2}},  # 2 forget rows: 2 steps an epoch
    "method": {"name": "ga"},
    "train": {"epochs": 3, "batch_size": 1},
    "eval": {"max_per_split": 4, "max_new_tokens": 4},
}


def tiny_run(**sections: Any) -> dict[str, Any]:
    """`TINY_RUN` with each given section merged into its own (a non-dict value replaces it)."""
    config = copy.deepcopy(TINY_RUN)
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) \
            else value
    return config
