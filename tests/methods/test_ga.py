"""GA, GradDiff and GA + KL pinned on a bigram model whose probabilities are read off its table.

Table rows: after token 0 the model puts (3/4, 1/4) on tokens (0, 1); after token 1, (1/2, 1/2).
FORGET's labelled tokens: row A predicts 0 then 1 after token 0 (p = 3/4, 1/4); row B predicts 1 after token 1
(p = 1/2); row A's first position and row B's last two are prompt/padding. HF token-mean NLL over the 3 tokens:
    NLL_f = (ln 4/3 + ln 4 + ln 2) / 3.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.methods.fakes import LN3, Bigram, build, part  # noqa: F401  (build is a fixture)

TABLE = [[LN3, 0.0], [0.0, 0.0]]
NLL_F = (math.log(4 / 3) + math.log(4) + math.log(2)) / 3


def forget():
    return part([([1, 0, 0, 1], [-100, -100, 0, 1]), ([1, 1, 0, 0], [-100, 1, -100, -100])])


def test_ga_is_minus_token_mean_nll(build):
    loss, logs = build("ga").loss(Bigram(TABLE), {"forget": forget()})
    assert loss.item() == pytest.approx(-NLL_F, rel=1e-6)
    assert logs["forget_nll"] == pytest.approx(NLL_F, rel=1e-6)


def test_graddiff_weights_forget_and_retain_nll(build):
    """Retain: one token 0 after token 0, NLL_r = ln 4/3. Loss = -gamma NLL_f + alpha NLL_r with gamma 2, alpha 1/2."""
    retain = part([([0, 0, 0], [-100, 0, 0])], first_index=100)
    method = build("graddiff", gamma=2.0, alpha=0.5)
    loss, _ = method.loss(Bigram(TABLE), {"forget": forget(), "retain": retain})
    assert loss.item() == pytest.approx(-2 * NLL_F + 0.5 * math.log(4 / 3), rel=1e-6)
    assert not method.needs_reference


KL_REFERENCE_TABLE = [[0.0, 0.0], [0.0, LN3]]


@pytest.mark.parametrize("name, hparams", [("kl", {}), ("graddiff", {"retain_loss": "kl"})])
def test_kl_on_retain_token_mean_over_labelled_positions(build, name, hparams):
    """Retain row: the labelled positions both follow token 0, where p = (3/4, 1/4) and p_ref = (1/2, 1/2):
        KL(p_ref || p) = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln 4/3 per position, mean 1/2 ln 4/3.
    The prompt position follows token 1, where p_ref = (1/4, 3/4) differs from p: counting it would change the value.
    The second call reads the float16 cache and must agree."""
    retain = part([([1, 0, 0, 1], [-100, -100, 0, 1])], first_index=100)
    reference = Bigram(KL_REFERENCE_TABLE)
    method = build(name, reference=reference, **hparams)
    assert method.needs_reference
    batch = {"forget": forget(), "retain": retain}
    for tolerance in (1e-6, 1e-3):  # the first call computes the reference in float32, the second reads float16
        loss, logs = method.loss(Bigram(TABLE), batch)
        assert loss.item() == pytest.approx(-NLL_F + 0.5 * math.log(4 / 3), abs=tolerance)
        assert logs["retain_kl"] == pytest.approx(0.5 * math.log(4 / 3), abs=tolerance)
    assert reference.calls == 1


def test_kl_is_zero_with_zero_gradient_at_the_reference(build, tiny_model, batch):
    """At step 0 the model equals the reference: the KL term is 0 and does not pull the parameters."""
    import copy

    method = build("kl", reference=copy.deepcopy(tiny_model), gamma=1.0, alpha=1.0)
    loss, logs = method.loss(tiny_model, batch)
    assert logs["retain_kl"] == pytest.approx(0.0, abs=1e-6)
    ga_loss, _ = build("ga").loss(tiny_model, batch)
    grads = torch.autograd.grad(loss, list(tiny_model.parameters()))
    ga_grads = torch.autograd.grad(ga_loss, list(tiny_model.parameters()))
    for g, g_ga in zip(grads, ga_grads):
        torch.testing.assert_close(g, g_ga, atol=1e-6, rtol=1e-4)
