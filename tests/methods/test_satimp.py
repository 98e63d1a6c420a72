"""SatImp pinned on a bigram model: token-mean of sg(p^beta1 (1 - p)^beta2) * log p(y_t) (arXiv 2505.11953).

Model (the bigram of test_ga.py): after token 0, p = (3/4, 1/4); after token 1, (1/2, 1/2).
FORGET's labelled tokens: row A predicts 0 then 1 after token 0 (p = 3/4, 1/4), row B predicts 1 after token 1
(p = 1/2). At beta1 = beta2 = 1 the weights are 3/16, 3/16, 1/4:
    SatImp = 1/3 [ 3/16 ln 3/4 + 3/16 ln 1/4 + 1/4 ln 1/2 ] = 1/3 [ 3/16 ln 3/16 - 1/4 ln 2 ] = -0.162 39.
Retain: one token 0 after token 0, NLL_r = ln 4/3; loss = gamma SatImp + alpha NLL_r.
Gradient (weights held fixed), d log p_y / dz = onehot(y) - p: table row 0 gets
    1/3 * 3/16 [ (1/4, -1/4) + (-3/4, 3/4) ] = (-1/32, 1/32),   row 1 gets 1/3 * 1/4 * (-1/2, 1/2) = (-1/24, 1/24).
"""

from __future__ import annotations

import math

import pytest
import torch

import methods
from tests.methods.fakes import LN3, Bigram, build, one_sgd_step, part  # noqa: F401  (build is a fixture)

TABLE = [[LN3, 0.0], [0.0, 0.0]]
P = (3 / 4, 1 / 4, 1 / 2)
NLL_R = math.log(4 / 3)


def batch():
    return {
        "forget": part([([1, 0, 0, 1], [-100, -100, 0, 1]), ([1, 1, 0, 0], [-100, 1, -100, -100])]),
        "retain": part([([0, 0, 0], [-100, 0, 0])], first_index=100),
    }


def satimp_by_hand(beta1: float, beta2: float) -> float:
    return sum(p**beta1 * (1 - p) ** beta2 * math.log(p) for p in P) / len(P)


def test_hand_value_at_unit_exponents(build):
    expected = (3 / 16 * math.log(3 / 16) - 0.25 * math.log(2)) / 3
    assert satimp_by_hand(1.0, 1.0) == pytest.approx(expected)
    _, logs = build("satimp", beta1=1.0, beta2=1.0, alpha=0.0).loss(Bigram(TABLE), {"forget": batch()["forget"]})
    assert logs["forget_satimp"] == pytest.approx(expected, rel=1e-6) == pytest.approx(-0.16239, abs=1e-5)
    assert logs["forget_weight"] == pytest.approx((3 / 16 + 3 / 16 + 1 / 4) / 3, rel=1e-6)


@pytest.mark.parametrize("beta1, beta2", [(5.0, 1.0), (0.0, 0.0), (2.0, 3.0), (0.0, 1.0)])
def test_weights_are_saturation_times_importance(build, beta1, beta2):
    method = build("satimp", beta1=beta1, beta2=beta2, gamma=0.5, alpha=2.0)
    loss, logs = method.loss(Bigram(TABLE), batch())
    assert logs["forget_satimp"] == pytest.approx(satimp_by_hand(beta1, beta2), rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * satimp_by_hand(beta1, beta2) + 2.0 * NLL_R, rel=1e-6)


def test_gradient_holds_the_weights_fixed(build):
    model = Bigram(TABLE)
    loss, _ = build("satimp", beta1=1.0, beta2=1.0, gamma=1.0, alpha=0.0).loss(model, {"forget": batch()["forget"]})
    loss.backward()
    expected = torch.tensor([[-1 / 32, 1 / 32], [-1 / 24, 1 / 24]])
    torch.testing.assert_close(model.table.grad, expected, atol=1e-7, rtol=0)


def test_profile_defaults_and_parts(build):
    hparams = build("satimp").hparams
    assert (hparams.beta1, hparams.beta2, hparams.gamma, hparams.alpha) == (5.0, 1.0, 0.1, 1.0)  # SatImp.yaml
    assert methods.profile("satimp").parts == ("forget", "retain")
    assert methods.profile("satimp", {"alpha": 0.0}).parts == ("forget",)
    assert not methods.needs_reference("satimp", {})
    loss, logs = build("satimp").loss(Bigram(TABLE), batch())
    assert loss.item() == pytest.approx(0.1 * satimp_by_hand(5.0, 1.0) + NLL_R, rel=1e-6)
    assert logs["retain_nll"] == pytest.approx(NLL_R, rel=1e-6)


def test_one_step_on_tiny_llama_lowers_the_forget_likelihood(build, tiny_model, batch):
    """beta1 1: at the default 5 a random model's tokens (p ~ 1/64) weigh ~1e-9 and nothing would move."""
    before, after = one_sgd_step(build("satimp", alpha=0.0, beta1=1.0), tiny_model, batch["forget"])
    assert after < before
