"""IdkPO pinned on bigram models: DPO with the "I don't know" row preferred, per-sequence sums, 2/beta scaling.

Model: after token 0, p = (3/4, 1/4); after token 1, (1/2, 1/2). Reference: uniform (1/2, 1/2).
Winning (alternate) rows: A' labels token 0 twice after token 0: log ratio = 2 ln(3/4) - 2 ln(1/2) = 2 ln 3/2;
B' labels token 1 after token 0: ln(1/4) - ln(1/2) = ln 1/2.
Losing (forget) rows: A: ln 3/16 - ln 1/4 = ln 3/4; B: 0.
    loss = mean over rows of (2/beta) ln(1 + exp(-beta (win - lose)))     (arXiv 2305.18290 Eq. 7, x 2/beta)
The alternate rows carry the same `index` as the forget rows, so a shared cache key would mix them up.
"""

from __future__ import annotations

import math

import pytest

from tests.methods.fakes import LN3, Bigram, build, part  # noqa: F401  (build is a fixture)

TABLE = [[LN3, 0.0], [0.0, 0.0]]
UNIFORM = [[0.0, 0.0], [0.0, 0.0]]


def test_idkpo_matches_dpo_with_idk_preferred(build):
    beta = 0.1
    margins = [2 * math.log(3 / 2) - math.log(3 / 4), math.log(1 / 2) - 0.0]
    expected = sum((2 / beta) * math.log1p(math.exp(-beta * m)) for m in margins) / 2
    batch = {
        "forget": part([([1, 0, 0, 1], [-100, -100, 0, 1]), ([1, 1, 0, 0], [-100, 1, -100, -100])]),
        "alternate": part([([1, 0, 0, 0], [-100, -100, 0, 0]), ([1, 0, 1, 1], [-100, -100, 1, -100])]),
        "retain": part([([0, 0, 0], [-100, 0, 0])], first_index=100),
    }
    reference = Bigram(UNIFORM)
    method = build("idkpo", reference=reference, beta=beta, alpha=1.0)
    for _ in range(2):  # the second call reads both cached reference log-probs
        loss, logs = method.loss(Bigram(TABLE), batch)
        assert logs["forget_dpo"] == pytest.approx(expected, rel=1e-6)
        assert loss.item() == pytest.approx(expected + math.log(4 / 3), rel=1e-6)
    assert reference.calls == 2  # one forward per part, then none


def test_idkpo_defaults_follow_open_unlearning(build):
    method = build("idkpo", reference=Bigram(UNIFORM))
    assert (method.hparams.beta, method.hparams.gamma, method.hparams.alpha) == (0.1, 1.0, 1.0)
    assert method.uses_alternate and method.uses_retain and method.needs_reference
