"""NPO pinned on bigram models: per-sequence summed log-probs, (2/beta) log(1 + ratio^beta), mean over sequences.

Model: after token 0, p = (3/4, 1/4); after token 1, (1/2, 1/2). Reference: uniform (1/2, 1/2) everywhere.
FORGET row A labels token 0 then token 1 after token 0: log p = ln 3/16, log p_ref = ln 1/4, log ratio = ln 3/4.
Row B labels token 1 after token 1: log ratio = ln(1/2) - ln(1/2) = 0.
    NPO = 1/2 * [(2/beta) ln(1 + (3/4)^beta) + (2/beta) ln(1 + 1)]     (arXiv 2404.05868, Sec. 3)
Retain: one token 0 after token 0, NLL_r = ln 4/3.
"""

from __future__ import annotations

import math

import pytest

from tests.methods.fakes import LN3, Bigram, build, part  # noqa: F401  (build is a fixture)

TABLE = [[LN3, 0.0], [0.0, 0.0]]
UNIFORM = [[0.0, 0.0], [0.0, 0.0]]


def batch():
    return {
        "forget": part([([1, 0, 0, 1], [-100, -100, 0, 1]), ([1, 1, 0, 0], [-100, 1, -100, -100])]),
        "retain": part([([0, 0, 0], [-100, 0, 0])], first_index=100),
    }


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_npo_matches_log_one_plus_ratio_to_the_beta(build, beta):
    expected_npo = 0.5 * ((2 / beta) * math.log(1 + (3 / 4) ** beta) + (2 / beta) * math.log(2))
    reference = Bigram(UNIFORM)
    method = build("npo", reference=reference, beta=beta, gamma=1.5, alpha=0.5)
    for _ in range(2):  # the second call reads the cached reference log-probs
        loss, logs = method.loss(Bigram(TABLE), batch())
        assert logs["forget_npo"] == pytest.approx(expected_npo, rel=1e-6)
        assert loss.item() == pytest.approx(1.5 * expected_npo + 0.5 * math.log(4 / 3), rel=1e-6)
    assert reference.calls == 1


def test_npo_defaults_follow_open_unlearning(build):
    hparams = build("npo", reference=Bigram(UNIFORM)).hparams
    assert (hparams.beta, hparams.gamma, hparams.alpha) == (0.1, 1.0, 1.0)


def test_npo_without_retain_term_does_not_use_retain(build):
    method = build("npo", reference=Bigram(UNIFORM), alpha=0.0)
    assert not method.uses_retain
    loss, logs = method.loss(Bigram(TABLE), {"forget": batch()["forget"]})
    assert "retain_nll" not in logs
