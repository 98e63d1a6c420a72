"""SimNPO pinned on a bigram model: length-normalised log-likelihood, no reference model.

Model: after token 0, p = (3/4, 1/4); after token 1, (1/2, 1/2). FORGET row A: log p = ln 3/16 over |y| = 2 tokens;
row B: log p = ln 1/2 over 1 token. The paper's form (arXiv 2410.07163), with its margin gamma_p = beta * delta
(the reference code's convention), per row:
    -(2/beta) log sigmoid(-(beta/|y|) log p(y|x) - gamma_p)
averaged over rows and weighted by gamma; retain (one token 0 after 0): NLL_r = ln 4/3, weighted by alpha.
"""

from __future__ import annotations

import math

import pytest

from tests.methods.fakes import LN3, Bigram, build, log_sigmoid, part  # noqa: F401  (build is a fixture)

TABLE = [[LN3, 0.0], [0.0, 0.0]]


def test_simnpo_matches_the_paper_form(build):
    beta, delta, gamma, alpha = 4.5, 0.5, 0.125, 2.0
    rows = [(math.log(3 / 16), 2), (math.log(1 / 2), 1)]
    per_row = [-(2 / beta) * log_sigmoid(-(beta / n) * logp - beta * delta) for logp, n in rows]
    expected = gamma * sum(per_row) / 2 + alpha * math.log(4 / 3)
    batch = {
        "forget": part([([1, 0, 0, 1], [-100, -100, 0, 1]), ([1, 1, 0, 0], [-100, 1, -100, -100])]),
        "retain": part([([0, 0, 0], [-100, 0, 0])], first_index=100),
    }
    method = build("simnpo", beta=beta, delta=delta, gamma=gamma, alpha=alpha)
    assert not method.needs_reference
    loss, _ = method.loss(Bigram(TABLE), batch)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_simnpo_defaults_follow_open_unlearning(build):
    hparams = build("simnpo").hparams
    assert (hparams.beta, hparams.delta, hparams.gamma, hparams.alpha) == (4.5, 0.0, 0.125, 1.0)
