"""Hand-computable fakes for the loss tests: a bigram "language model" and batch parts written out token by token.

With `logits[b, t] = table[input_ids[b, t]]`, the probability of every labelled token is a softmax of one table row,
so each test's expected value can be worked out on paper (the tests' docstrings do) and checked with `math`.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from methods.numerics import forward_logits, token_mean_nll

LN2, LN3 = math.log(2.0), math.log(3.0)


class Bigram(torch.nn.Module):
    """A causal LM whose next-token logits depend on the current token only; counts its forward calls."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32))
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        self.calls += 1
        return SimpleNamespace(logits=self.table[input_ids])


def part(rows: list[tuple[list[int], list[int]]], first_index: int = 0) -> dict[str, torch.Tensor]:
    """A batch part from (tokens, labels) rows of equal length; -100 labels are prompt or padding."""
    input_ids = torch.tensor([tokens for tokens, _ in rows])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.tensor([labels for _, labels in rows]),
        "index": torch.arange(first_index, first_index + len(rows)),
    }


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# The methods these tests cover.
OUR_METHODS = ("ga", "graddiff", "kl", "npo", "simnpo", "idkpo", "undial", "ihl", "ihl_fila")


@pytest.fixture
def build():
    """`methods.build`, the library's one way to make a method (each built method imports its loss module)."""
    import methods

    return methods.build


def one_sgd_step(method, model, part, lr: float = 0.1):
    """The loss's gradient, one plain SGD step; returns (forget log-likelihood before, after)."""
    def log_likelihood() -> float:
        with torch.no_grad():
            return -token_mean_nll(forward_logits(model, part), part["labels"]).item()

    before = log_likelihood()
    loss, _ = method.loss(model, {"forget": part})
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    return before, log_likelihood()
