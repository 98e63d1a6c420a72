"""IHL pinned on a bigram model, and its range.

Model over 3 tokens: after token 0, p = (1/2, 1/4, 1/4); after token 1, uniform. FORGET row: a prompt position, then
tokens 0, 1, 2 each predicted after token 0. Per token 1 + p(y) - max_{v != y} p(v):
    y = 0: 1 + 1/2 - 1/4 = 5/4;   y = 1: 1 + 1/4 - 1/2 = 3/4;   y = 2: 3/4;   mean 11/12.
Retain: token 1 after token 1, NLL_r = ln 3.
"""

from __future__ import annotations

import math

import pytest
import torch

from methods.ihl import inverted_hinge
from tests.methods.fakes import LN2, Bigram, build, part  # noqa: F401  (build is a fixture)

TABLE = [[LN2, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_ihl_per_token_and_retain(build):
    batch = {
        "forget": part([([1, 0, 0, 0, 0], [-100, -100, 0, 1, 2])]),
        "retain": part([([1, 1], [-100, 1])], first_index=100),
    }
    loss, logs = build("ihl", alpha=0.5).loss(Bigram(TABLE), batch)
    assert logs["forget_ihl"] == pytest.approx(11 / 12, rel=1e-6)
    assert loss.item() == pytest.approx(11 / 12 + 0.5 * math.log(3), rel=1e-6)


def test_ihl_lies_in_zero_two_and_reaches_both_ends():
    torch.manual_seed(0)
    logits = 30 * torch.randn(4, 16, 50)
    labels = torch.randint(0, 50, (4, 16))
    per_token = inverted_hinge(logits, labels)
    assert per_token.shape == (4 * 15,)  # every shifted position is labelled
    assert per_token.min() >= 0 and per_token.max() <= 2
    # True token certain: 1 + 1 - 0 = 2; another token certain: 1 + 0 - 1 = 0.
    certain = torch.full((1, 2, 3), -1e4)
    certain[0, 0, 2] = 0.0
    ends = inverted_hinge(certain, torch.tensor([[-100, 2]]))
    assert ends.tolist() == pytest.approx([2.0])
    ends = inverted_hinge(certain, torch.tensor([[-100, 1]]))
    assert ends.tolist() == pytest.approx([0.0])


def test_ihl_fila_hyperparameters(build):
    method = build("ihl_fila")
    assert (method.hparams.rank, method.hparams.lora_alpha, method.hparams.target_modules) == (8, 16.0, None)
    assert method.hparams.alpha == 1.0
