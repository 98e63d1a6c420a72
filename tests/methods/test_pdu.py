"""PDU pinned on a bigram model: the logit-flattening forget loss, the Lagrangian, and the dual ascent by hand.

Model (the bigram of test_ga.py): logits (ln 3, 0) after token 0, (0, 0) after token 1.
- Flattening per position: (max - mean)^2 = (ln 3 - ln 3 / 2)^2 = (ln 3)^2 / 4 after token 0, 0 after token 1.
  FORGET row A has two answer tokens produced after token 0, row B one produced after token 1:
      F = (2 (ln 3)^2 / 4 + 0) / 3 = (ln 3)^2 / 6.
  (Masking the unshifted logits, as open-unlearning's pdu.py does, would give (ln 3)^2 / 12.)
  dF / d(row 0) = 2/3 * 2 (ln 3 / 2) ((1, 0) - (1/2, 1/2)) = (ln 3 / 3, -ln 3 / 3); row 1 gets 0.
- Retain R1: one token 0 after token 0, NLL = ln 4/3 (gradient on row 0: p - onehot = (-1/4, 1/4));
  R2: one token 1 after token 0, NLL = ln 4.
- loss = gamma F + lambda (R - eps); after a step, lambda <- max(0, lambda + step (R - eps)).
The engine below computes gradients but never moves the model, so R stays put and the dual sequence is arithmetic.
"""

from __future__ import annotations

import math

import pytest
import torch

import methods
from tests.methods.fakes import LN3, Bigram, build, part  # noqa: F401  (build is a fixture)

TABLE = [[LN3, 0.0], [0.0, 0.0]]
F = LN3**2 / 6
R1, R2 = math.log(4 / 3), math.log(4)


def forget():
    return part([([1, 0, 0, 1], [-100, -100, 0, 1]), ([1, 1, 0, 0], [-100, 1, -100, -100])])


def retain(token: int = 0):
    return part([([0, 0, token], [-100, -100, token])], first_index=100)


def batch(token: int = 0):
    return {"forget": forget(), "retain": retain(token)}


class StillEngine:
    """Backward, then drop the gradients: the model never changes, so every step sees the same losses."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.model.zero_grad()


def steps(method, model, n: int, token: int = 0) -> list[dict[str, float]]:
    return [method.training_step(model, batch(token), StillEngine(model)) for _ in range(n)]


def test_flattening_loss_and_lagrangian_by_hand(build):
    method = build("pdu", gamma=2.0, alpha=3.0, retain_loss_eps=0.1)
    loss, logs = method.loss(Bigram(TABLE), batch())
    assert logs["forget_pdu"] == pytest.approx(F, rel=1e-6)
    assert logs["retain_nll"] == pytest.approx(R1, rel=1e-6)
    assert logs["dual"] == 3.0
    assert loss.item() == pytest.approx(2.0 * F + 3.0 * (R1 - 0.1), rel=1e-6)


def test_gradient_of_flattening_plus_dual_weighted_retain(build):
    model = Bigram(TABLE)
    loss, _ = build("pdu", alpha=2.0, primal_dual=False).loss(model, batch())
    loss.backward()
    row0 = torch.tensor([LN3 / 3, -LN3 / 3]) + 2.0 * torch.tensor([-0.25, 0.25])
    torch.testing.assert_close(model.table.grad, torch.stack([row0, torch.zeros(2)]), atol=1e-6, rtol=0)


def test_at_dual_zero_retain_is_measured_but_not_differentiated(build):
    model = Bigram(TABLE)
    loss, logs = build("pdu", alpha=0.0).loss(model, batch())
    assert logs["retain_nll"] == pytest.approx(R1, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(model.table.grad, torch.tensor([[LN3 / 3, -LN3 / 3], [0.0, 0.0]]), atol=1e-6, rtol=0)


def test_per_step_dual_ascent_by_hand(build):
    """alpha 1, eps 0.1, step 2: lambda grows by 2 (R1 - 0.1) = 0.375 36 a step; each loss uses the lambda before."""
    method = build("pdu", alpha=1.0, retain_loss_eps=0.1, dual_step_size=2.0, dual_warmup_epochs=0)
    model = Bigram(TABLE)
    logs = steps(method, model, 3)
    rise = 2.0 * (R1 - 0.1)
    assert [log["dual"] for log in logs] == pytest.approx([1.0, 1.0 + rise, 1.0 + 2 * rise], rel=1e-6)
    assert logs[1]["loss"] == pytest.approx(F + (1.0 + rise) * (R1 - 0.1), rel=1e-6)
    assert method.dual == pytest.approx(1.0 + 3 * rise, rel=1e-6)


def test_dual_is_projected_onto_nonnegative_values(build):
    """alpha 0.5, eps 1: R1 - eps = -0.712, so 0.5 -> max(0, -0.212) = 0, and it stays 0."""
    method = build("pdu", alpha=0.5, retain_loss_eps=1.0, dual_step_size=1.0, dual_warmup_epochs=0)
    logs = steps(method, Bigram(TABLE), 3)
    assert [log["dual"] for log in logs] == [0.5, 0.0, 0.0]
    assert method.dual == 0.0


def test_warm_up_holds_the_dual_for_its_epochs(build):
    method = build("pdu", alpha=1.0, retain_loss_eps=0.1, dual_step_size=2.0, dual_warmup_epochs=2)
    model = Bigram(TABLE)
    for _ in range(2):  # epochs 0 and 1: warm-up
        steps(method, model, 2)
        assert method.dual == 1.0
        assert method.on_epoch_end(model, [], []) is None
    steps(method, model, 2)  # epoch 2: two updates
    assert method.dual == pytest.approx(1.0 + 4.0 * (R1 - 0.1), rel=1e-6)


@pytest.mark.parametrize("warmup", [0, 1])
def test_per_epoch_update_uses_the_epochs_mean_retain_nll(build, warmup):
    """Epoch 0 sees R1 then R2: at its end (warm-up 0 or 1 epoch: over) lambda = 1 + ((R1 + R2) / 2 - 0.5);
    epoch 1 sees R1 alone: lambda += R1 - 0.5. No step moves lambda by itself."""
    method = build("pdu", alpha=1.0, retain_loss_eps=0.5, dual_step_size=1.0, dual_update_upon="epoch",
                   dual_warmup_epochs=warmup)
    model = Bigram(TABLE)
    steps(method, model, 1, token=0)
    steps(method, model, 1, token=1)
    assert method.dual == 1.0
    method.on_epoch_end(model, [], [])
    after_first = 1.0 + ((R1 + R2) / 2 - 0.5)
    assert method.dual == pytest.approx(after_first, rel=1e-6)
    steps(method, model, 1, token=0)
    method.on_epoch_end(model, [], [])
    assert method.dual == pytest.approx(after_first + (R1 - 0.5), rel=1e-6)


def test_per_epoch_update_waits_for_the_warm_up(build):
    method = build("pdu", alpha=1.0, retain_loss_eps=0.5, dual_step_size=2.0, dual_update_upon="epoch",
                   dual_warmup_epochs=2)
    model = Bigram(TABLE)
    steps(method, model, 2)
    method.on_epoch_end(model, [], [])
    assert method.dual == 1.0  # one epoch done, of two
    steps(method, model, 2)
    method.on_epoch_end(model, [], [])  # the second epoch's end: the first update, on this epoch's steps only
    assert method.dual == pytest.approx(1.0 + 2.0 * (R1 - 0.5), rel=1e-6)


def test_dual_update_uses_the_retain_nll_averaged_across_workers(build, monkeypatch):
    """Another worker measured ln 4: every worker moves lambda by step ((R1 + ln 4) / 2 - eps)."""
    import methods.pdu

    def with_other_worker(tensors):
        for t in tensors:
            t.copy_((t + R2) / 2)

    monkeypatch.setattr(methods.pdu, "average_across_workers", with_other_worker)
    method = build("pdu", alpha=1.0, retain_loss_eps=0.1, dual_step_size=2.0, dual_warmup_epochs=0)
    steps(method, Bigram(TABLE), 1)
    assert method.dual == pytest.approx(1.0 + 2.0 * ((R1 + R2) / 2 - 0.1), rel=1e-6)


def test_without_primal_dual_the_preference_is_fixed(build):
    method = build("pdu", alpha=2.0, primal_dual=False, dual_warmup_epochs=0)
    model = Bigram(TABLE)
    logs = steps(method, model, 2)
    method.on_epoch_end(model, [], [])
    assert method.dual == 2.0 and [log["dual"] for log in logs] == [2.0, 2.0]


def test_method_state_round_trip(build):
    method = build("pdu", alpha=1.0, retain_loss_eps=0.1, dual_step_size=2.0, dual_warmup_epochs=1)
    model = Bigram(TABLE)
    steps(method, model, 1)
    method.on_epoch_end(model, [], [])
    steps(method, model, 2)
    state = method.method_state()
    assert state == {"dual": pytest.approx(1.0 + 4.0 * (R1 - 0.1)), "epochs_done": 1,
                     "epoch_retain_nll_sum": 0.0, "epoch_steps": 0}
    resumed = build("pdu", alpha=1.0, retain_loss_eps=0.1, dual_step_size=2.0, dual_warmup_epochs=1)
    resumed.load_method_state(dict(state))
    steps(method, model, 1)
    steps(resumed, model, 1)
    assert resumed.method_state() == method.method_state()
    with pytest.raises(ValueError) as err:
        resumed.load_method_state({"dual": 1.0, "lambda": 2.0})
    assert "\n" not in str(err.value) and "epochs_done" in str(err.value) and "lambda" in str(err.value)


def test_profile_defaults_and_parts(build):
    hparams = build("pdu").hparams
    assert (hparams.gamma, hparams.alpha, hparams.retain_loss_eps, hparams.dual_step_size,
            hparams.dual_update_upon, hparams.dual_warmup_epochs) == (1.0, 100.0, 0.3, 5.0, "step", 5)
    profile = methods.profile("pdu")
    assert profile.parts == ("forget", "retain") and not profile.needs_reference and profile.full_vocab_part is None
    assert methods.profile("pdu", {"alpha": 0.0}).parts == ("forget", "retain")  # the dual may grow from 0
    assert methods.profile("pdu", {"primal_dual": False, "alpha": 0.5}).parts == ("forget", "retain")
    assert methods.profile("pdu", {"primal_dual": False, "alpha": 0.0}).parts == ("forget",)
    loss, logs = build("pdu", primal_dual=False, alpha=0.0).loss(Bigram(TABLE), {"forget": forget()})
    assert "retain_nll" not in logs and loss.item() == pytest.approx(F, rel=1e-6)


def test_one_step_on_tiny_llama_flattens_the_forget_logits(build, tiny_model, batch):
    method = build("pdu", primal_dual=False, alpha=0.0)
    loss, logs = method.loss(tiny_model, {"forget": batch["forget"]})
    loss.backward()
    with torch.no_grad():
        for p in tiny_model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    assert method.loss(tiny_model, {"forget": batch["forget"]})[1]["forget_pdu"] < logs["forget_pdu"]
