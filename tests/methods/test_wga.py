"""WGA pinned on a bigram model: token-mean of sg(p(y_t))^beta * log p(y_t) over the forget tokens (arXiv 2502.19301).

Model (the bigram of test_ga.py): after token 0, p = (3/4, 1/4); after token 1, (1/2, 1/2).
FORGET's labelled tokens: row A predicts 0 then 1 after token 0 (p = 3/4, 1/4), row B predicts 1 after token 1
(p = 1/2). With weights w_t = p_t^beta,
    WGA = 1/3 [ (3/4)^b ln 3/4 + (1/4)^b ln 1/4 + (1/2)^b ln 1/2 ];   beta 1: -0.302 97;  beta 0: -NLL_f (plain GA).
Retain: one token 0 after token 0, NLL_r = ln 4/3; loss = gamma WGA + alpha NLL_r.
Gradient (weights held fixed): d log p_y / dz = onehot(y) - p. Table row 0 (after token 0) at beta 1:
    1/3 [ 3/4 ((1, 0) - (3/4, 1/4)) + 1/4 ((0, 1) - (3/4, 1/4)) ] = (0, 0)
(the likelier token pulls down exactly as hard as the unlikely one pushes up); row 1: 1/3 * 1/2 * (-1/2, 1/2)
= (-1/12, 1/12). Differentiating through the weights would give row 0 a non-zero gradient.
"""

from __future__ import annotations

import math

import pytest
import torch

import methods
from tests.methods.fakes import LN3, Bigram, build, one_sgd_step, part  # noqa: F401  (build is a fixture)

TABLE = [[LN3, 0.0], [0.0, 0.0]]
P = (3 / 4, 1 / 4, 1 / 2)  # the forget tokens' probabilities
NLL_R = math.log(4 / 3)


def batch():
    return {
        "forget": part([([1, 0, 0, 1], [-100, -100, 0, 1]), ([1, 1, 0, 0], [-100, 1, -100, -100])]),
        "retain": part([([0, 0, 0], [-100, 0, 0])], first_index=100),
    }


def wga_by_hand(beta: float) -> float:
    return sum(p**beta * math.log(p) for p in P) / len(P)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
def test_wga_is_the_probability_weighted_log_likelihood(build, beta):
    method = build("wga", beta=beta, gamma=1.5, alpha=0.5)
    loss, logs = method.loss(Bigram(TABLE), batch())
    assert logs["forget_wga"] == pytest.approx(wga_by_hand(beta), rel=1e-6)
    assert logs["forget_weight"] == pytest.approx(sum(p**beta for p in P) / 3, rel=1e-6)
    assert logs["retain_nll"] == pytest.approx(NLL_R, rel=1e-6)
    assert loss.item() == pytest.approx(1.5 * wga_by_hand(beta) + 0.5 * NLL_R, rel=1e-6)


def test_beta_zero_is_gradient_ascent(build):
    wga, _ = build("wga", beta=0.0, alpha=0.0).loss(Bigram(TABLE), {"forget": batch()["forget"]})
    ga, _ = build("ga").loss(Bigram(TABLE), {"forget": batch()["forget"]})
    mean_log_p = sum(math.log(p) for p in P) / 3
    assert wga.item() == pytest.approx(ga.item(), rel=1e-6) == pytest.approx(mean_log_p, rel=1e-6)


def test_gradient_holds_the_weights_fixed(build):
    model = Bigram(TABLE)
    loss, _ = build("wga", beta=1.0, alpha=0.0).loss(model, {"forget": batch()["forget"]})
    loss.backward()
    torch.testing.assert_close(model.table.grad, torch.tensor([[0.0, 0.0], [-1 / 12, 1 / 12]]), atol=1e-7, rtol=0)


def test_profile_defaults_and_parts(build):
    hparams = build("wga").hparams
    assert (hparams.beta, hparams.gamma, hparams.alpha) == (1.0, 1.0, 1.0)  # open-unlearning WGA.yaml
    assert methods.profile("wga").parts == ("forget", "retain")
    assert methods.profile("wga", {"alpha": 0.0}).parts == ("forget",)
    assert not methods.needs_reference("wga", {})
    # alpha 0 reads the forget part only (a batch without retain is enough) and logs no retain term
    _, logs = build("wga", alpha=0.0).loss(Bigram(TABLE), {"forget": batch()["forget"]})
    assert "retain_nll" not in logs


def test_one_step_on_tiny_llama_lowers_the_forget_likelihood(build, tiny_model, batch):
    before, after = one_sgd_step(build("wga", alpha=0.0), tiny_model, batch["forget"])
    assert after < before
