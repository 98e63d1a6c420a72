"""SOUL (methods/soul.py): delegation to the inner objective, Sophia from make_optimizer, one step unlearns, GNB."""

from __future__ import annotations

import copy

import pytest
import torch

import methods
from methods.numerics import forward_logits, token_mean_nll
from methods.sophia import SophiaG


class SimpleEngine:
    """The StepEngine contract on one process: backward, then optimizer step and zero_grad."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def _forget_nll(model, batch) -> float:
    with torch.no_grad():
        return float(token_mean_nll(forward_logits(model, batch["forget"]), batch["forget"]["labels"]))


class TestDelegation:
    def test_flags_and_reference_follow_the_objective(self):
        assert not methods.needs_reference("soul", {"objective": "ga"})
        assert methods.needs_reference("soul", {"objective": "npo"})
        assert methods.needs_reference("soul", {"objective": "graddiff", "objective_hparams": {"retain_loss": "kl"}})
        ga = methods.build("soul", objective="ga")
        assert not ga.uses_retain and not ga.needs_reference
        idkpo = methods.build("soul", reference=torch.nn.Linear(1, 1), objective="idkpo")
        assert idkpo.uses_alternate and idkpo.uses_retain and idkpo.needs_reference
        assert methods.build("soul").objective.name == "graddiff"  # SOUL's TOFU recipe (SO_GradDiff.json)

    def test_loss_is_the_inner_objectives(self, tiny_model, batch):
        soul = methods.build("soul", objective="graddiff", objective_hparams={"alpha": 0.5})
        inner = methods.build("graddiff", alpha=0.5)
        torch.testing.assert_close(soul.loss(tiny_model, batch)[0], inner.loss(tiny_model, batch)[0])

    def test_gnb_is_not_offered_to_deepspeed(self):
        assert methods.build("soul").supports_deepspeed
        assert not methods.build("soul", hessian_estimator="gnb").supports_deepspeed


class TestOptimizer:
    def test_make_optimizer_builds_sophia_from_the_hyperparameters(self, tiny_model):
        soul = methods.build("soul", rho=0.05, betas=(0.8, 0.99), bs=64, hessian_estimator="gnb")
        optimizer = soul.make_optimizer(tiny_model.parameters(), lr=1e-3, weight_decay=0.1)
        assert isinstance(optimizer, SophiaG) and optimizer is soul.optimizer
        assert optimizer.hessian_estimator == "gnb"
        decay, no_decay = optimizer.param_groups
        assert (decay["rho"], decay["betas"], decay["bs"], decay["lr"]) == (0.05, (0.8, 0.99), 64, 1e-3)
        # SOUL decays weights but not norms/biases: here, 2-D tensors only
        assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
        assert no_decay["weight_decay"] == 0.0 and all(p.dim() < 2 for p in no_decay["params"])

    @pytest.mark.parametrize("objective", ["ga", "graddiff", "npo"])
    def test_one_sophia_step_lowers_forget_likelihood(self, objective, tiny_model, batch):
        reference = copy.deepcopy(tiny_model) if objective == "npo" else None
        soul = methods.build("soul", reference=reference, objective=objective)
        engine = SimpleEngine(soul.make_optimizer(tiny_model.parameters(), lr=1e-2, weight_decay=0.0))
        before = _forget_nll(tiny_model, batch)
        logs = soul.training_step(tiny_model, batch, engine)
        assert _forget_nll(tiny_model, batch) > before + 1e-3
        assert "forget_nll" in logs or "forget_npo" in logs


class TestGaussNewtonBartlett:
    def test_h_is_refreshed_from_sampled_labels_every_k_steps(self, tiny_model, batch, monkeypatch):
        soul = methods.build("soul", objective="ga", hessian_estimator="gnb", hessian_interval=2)
        optimizer = soul.make_optimizer(tiny_model.parameters(), lr=1e-3, weight_decay=0.0)
        refreshes = []
        original = optimizer.update_hessian
        monkeypatch.setattr(optimizer, "update_hessian", lambda: (refreshes.append(1), original()))
        engine = SimpleEngine(optimizer)
        logs = soul.training_step(tiny_model, batch, engine)
        assert "gnb_sampled_nll" in logs and len(refreshes) == 1
        hessians = [optimizer.state[p]["hessian"].clone() for p in tiny_model.parameters()]
        assert sum(float(h.sum()) for h in hessians) > 0
        soul.training_step(tiny_model, batch, engine)  # step 1 of k = 2: no refresh, and step() keeps h
        assert len(refreshes) == 1
        for p, h in zip(tiny_model.parameters(), hessians):
            torch.testing.assert_close(optimizer.state[p]["hessian"], h)
        soul.training_step(tiny_model, batch, engine)
        assert len(refreshes) == 2

    def test_gnb_needs_the_optimizer(self, tiny_model, batch):
        soul = methods.build("soul", objective="ga", hessian_estimator="gnb")
        with pytest.raises(RuntimeError, match="make_optimizer"):
            soul.training_step(tiny_model, batch, SimpleEngine(torch.optim.SGD(tiny_model.parameters(), lr=0.1)))


@pytest.mark.parametrize(
    "hparams, needle",
    [
        ({"rho": 0}, "rho"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"hessian_interval": 0}, "hessian_interval"),
        ({"hessian_estimator": "fisher"}, "hessian_estimator"),
        ({"objective": "undial"}, "objective"),
        ({"objective": "npo", "objective_hparams": {"beta": -1}}, "beta"),
        ({"objective": "ga", "objective_hparams": {"alpha": 1}}, "alpha"),
    ],
)
def test_invalid_hyperparameters_are_one_line_config_errors(hparams, needle):
    with pytest.raises(methods.MethodConfigError, match=needle) as err:
        methods.build("soul", **hparams)
    assert "\n" not in str(err.value)
