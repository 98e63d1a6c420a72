"""CE-U pinned on a three-token bigram model: CE(q, p), q the model's own distribution without the true token.

Model: after token 0, p = (1/2, 1/6, 1/3) (logits ln 3, 0, ln 2); after tokens 1 and 2, uniform (1/3 each).
FORGET row A: prompt, then 0 and 2 predicted after token 0; row B: prompt, then 1 predicted after token 1.
q = softmax(sg(z) with z_y = -inf), the distribution renormalised over the other tokens (arXiv 2503.01224):
- A, y = 0: q = (0, 1/3, 2/3),  CE = 1/3 ln 6 + 2/3 ln 3
- A, y = 2: q = (3/4, 1/4, 0),  CE = 3/4 ln 2 + 1/4 ln 6
- B, y = 1: q = (1/2, 0, 1/2),  CE = ln 3
With ignore_first_n_answer_tokens 0 the loss is the mean of the three; with 1 (the default) each row's first
answer token is left out, so A's y = 0 and B's only token go, and the loss is A's y = 2 alone.
Gradient on the logits: p - q (q is a fixed target): at the default, table row 0 gets
(1/2 - 3/4, 1/6 - 1/4, 1/3 - 0) = (-1/4, -1/12, 1/3) and the other rows nothing.
"""

from __future__ import annotations

import math

import pytest
import torch

import methods
from methods.ceu import without_first_answer_tokens
from methods.numerics import batch_counts, with_denominators
from tests.methods.fakes import LN2, LN3, Bigram, build, one_sgd_step, part  # noqa: F401  (build is a fixture)

TABLE = [[LN3, 0.0, LN2], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
CE_A0 = math.log(6) / 3 + 2 * math.log(3) / 3
CE_A2 = 0.75 * math.log(2) + 0.25 * math.log(6)
CE_B1 = math.log(3)


def forget():
    return part([([1, 0, 0, 2], [-100, -100, 0, 2]), ([1, 1, 0, 0], [-100, 1, -100, -100])])


def test_cross_entropy_to_the_distribution_without_the_true_token(build):
    _, logs = build("ceu", ignore_first_n_answer_tokens=0).loss(Bigram(TABLE), {"forget": forget()})
    assert logs["forget_ceu"] == pytest.approx((CE_A0 + CE_A2 + CE_B1) / 3, rel=1e-6)


def test_first_answer_token_of_each_row_is_left_out(build):
    loss, logs = build("ceu").loss(Bigram(TABLE), {"forget": forget()})
    assert loss.item() == pytest.approx(CE_A2, rel=1e-6) and logs["forget_ceu"] == loss.item()
    labels = without_first_answer_tokens(forget()["labels"], 1)
    assert labels.tolist() == [[-100, -100, -100, 2], [-100, -100, -100, -100]]


def test_gradient_is_p_minus_a_fixed_q(build):
    model = Bigram(TABLE)
    loss, _ = build("ceu").loss(model, {"forget": forget()})
    loss.backward()
    expected = torch.tensor([[-1 / 4, -1 / 12, 1 / 3], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(model.table.grad, expected, atol=1e-6, rtol=0)


def test_split_over_workers_the_shares_average_to_the_global_mean(build):
    """Row A on worker 0, row B on worker 1, with the loop's denominators: 3 labelled tokens and 2 rows globally, so
    each worker's share of the kept-token count is 3/2 - 1 * 2/2 = 1/2. Worker 0 returns CE_A2 / (1/2), worker 1
    (nothing left after its first token) 0; their average is the global mean CE_A2."""
    whole = {"forget": forget()}
    shards = [{"forget": {k: v[i : i + 1] for k, v in whole["forget"].items()}} for i in range(2)]
    total = sum(batch_counts(shard) for shard in shards)
    shares = [build("ceu").loss(Bigram(TABLE), with_denominators(shard, total, 2))[0].item() for shard in shards]
    assert shares == pytest.approx([2 * CE_A2, 0.0], rel=1e-6)
    assert sum(shares) / 2 == pytest.approx(build("ceu").loss(Bigram(TABLE), whole)[0].item(), rel=1e-6)


def test_profile(build):
    assert build("ceu").hparams.ignore_first_n_answer_tokens == 1  # open-unlearning CEU.yaml
    profile = methods.profile("ceu")
    assert profile.parts == ("forget",) and not profile.needs_reference and profile.full_vocab_part == "forget"


def test_one_step_on_tiny_llama_lowers_the_forget_likelihood(build, tiny_model, batch):
    before, after = one_sgd_step(build("ceu"), tiny_model, batch["forget"])
    assert after < before
