"""UnDIAL pinned on bigram models: cross-entropy to softmax(teacher logits - gamma * onehot(true token)).

Teacher (reference): after token 0, logits (ln 3, 0); after token 1, uniform. Student: after token 0, p = (1/4, 3/4);
after token 1, uniform. gamma = ln 3. FORGET row: prompt, then token 0 and token 1 predicted after token 0.
- label 0: target = softmax(ln 3 - ln 3, 0) = (1/2, 1/2);   CE = 1/2 ln 4 + 1/2 ln 4/3
- label 1: target = softmax(ln 3, -ln 3) = (9/10, 1/10);    CE = 9/10 ln 4 + 1/10 ln 4/3
loss = mean of the two; the prompt position (after token 1, CE ln 2) must not count.
"""

from __future__ import annotations

import math

import pytest

from tests.methods.fakes import LN3, Bigram, build, part  # noqa: F401  (build is a fixture)


def test_undial_cross_entropy_to_adjusted_teacher(build):
    ce_label0 = 0.5 * math.log(4) + 0.5 * math.log(4 / 3)
    ce_label1 = 0.9 * math.log(4) + 0.1 * math.log(4 / 3)
    expected = (ce_label0 + ce_label1) / 2
    teacher = Bigram([[LN3, 0.0], [0.0, 0.0]])
    student = Bigram([[0.0, LN3], [0.0, 0.0]])
    method = build("undial", reference=teacher, gamma=LN3)
    batch = {"forget": part([([1, 0, 0, 0], [-100, -100, 0, 1])])}
    for tolerance in (1e-6, 1e-3):  # float32 on the first call, the float16 cache on the second
        loss, _ = method.loss(student, batch)
        assert loss.item() == pytest.approx(expected, abs=tolerance)
    assert teacher.calls == 1


def test_undial_default_strength_is_open_unlearnings(build):
    method = build("undial", reference=Bigram([[0.0, 0.0], [0.0, 0.0]]))
    assert method.hparams.gamma == 10.0
    assert not method.uses_retain
