"""What every method of this family owes the training loop, checked on the tiny Llama of tests/conftest.py:
one optimizer step unlearns, the frozen reference runs once per example, and bad hyperparameters fail early."""

from __future__ import annotations

import copy

import pytest
import torch

import methods
from methods.numerics import forward_logits, sequence_logprob, token_mean_nll
from tests.methods.fakes import build  # noqa: F401  (a fixture)

# The retain term (alpha) is switched off where it is a plain NLL: it is not what moves the forget set, and on
# random tokens drawn like the forget set's it would pull the other way. KL's retain term is 0 with 0 gradient at
# step 0, so those run with their defaults.
FORGETTING = [
    ("ga", {}),
    ("graddiff", {"alpha": 0.0}),
    ("graddiff", {"retain_loss": "kl"}),
    ("kl", {}),
    ("npo", {"alpha": 0.0}),
    # At beta 4.5 a random model's forget set (mean log p ~ -4) counts as forgotten already: weight sigmoid(-19).
    ("simnpo", {"alpha": 0.0, "beta": 0.5}),
    ("undial", {}),
    ("ihl", {"alpha": 0.0}),
    ("ihl_fila", {"alpha": 0.0}),
]


class SGDEngine:
    """The StepEngine of the contract over a plain torch optimizer."""

    def __init__(self, params, lr: float) -> None:
        self.optimizer = torch.optim.SGD([p for p in params if p.requires_grad], lr=lr)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad()


def forget_log_likelihood(model, part) -> float:
    with torch.no_grad():
        return -token_mean_nll(forward_logits(model, part), part["labels"]).item()


def make(build, name, hparams, model, batch):
    reference = copy.deepcopy(model) if methods.needs_reference(name, hparams) else None
    method = build(name, reference=reference, **hparams)
    model = method.init_adapters(model, [batch["forget"]], [batch["retain"]])
    return method, model, reference


@pytest.mark.parametrize("name, hparams", FORGETTING, ids=[f"{n}-{h}" for n, h in FORGETTING])
def test_one_step_lowers_forget_likelihood(build, tiny_model, batch, name, hparams):
    method, model, _ = make(build, name, hparams, tiny_model, batch)
    before = forget_log_likelihood(model, batch["forget"])
    logs = method.training_step(model, batch, SGDEngine(model.parameters(), lr=0.1))
    after = forget_log_likelihood(model, batch["forget"])
    assert after < before, logs


def test_one_idkpo_step_prefers_idk_over_the_true_answer(build, tiny_model, batch):
    method, model, _ = make(build, "idkpo", {"alpha": 0.0}, tiny_model, batch)

    def preference() -> float:
        with torch.no_grad():
            idk = sequence_logprob(forward_logits(model, batch["alternate"]), batch["alternate"]["labels"])
            true = sequence_logprob(forward_logits(model, batch["forget"]), batch["forget"]["labels"])
        return (idk - true).mean().item()

    before = preference()
    method.training_step(model, batch, SGDEngine(model.parameters(), lr=0.1))
    assert preference() > before


REFERENCED = [
    ("npo", {}, 1),
    ("idkpo", {}, 2),
    ("undial", {}, 1),
    ("kl", {}, 1),
    ("graddiff", {"retain_loss": "kl"}, 1),
]


@pytest.mark.parametrize("name, hparams, parts", REFERENCED, ids=[n + str(h) for n, h, _ in REFERENCED])
def test_reference_runs_once_per_example(build, tiny_model, batch, name, hparams, parts):
    """Two steps on the same batch: the reference runs on the first only, and the cached values give the loss that
    an uncached instance computes on the updated model (float16 per-token caches: to 1e-3)."""
    method, model, reference = make(build, name, hparams, tiny_model, batch)
    calls = []
    reference.register_forward_hook(lambda *args: calls.append(1))
    engine = SGDEngine(model.parameters(), lr=0.1)
    method.training_step(model, batch, engine)
    assert len(calls) == parts
    method.training_step(model, batch, engine)
    assert len(calls) == parts
    assert method.reference_cache.hits == parts * len(batch["forget"]["index"])

    cached_loss, _ = method.loss(model, batch)
    uncached_loss, _ = build(name, reference=reference, **hparams).loss(model, batch)
    assert cached_loss.item() == pytest.approx(uncached_loss.item(), abs=1e-3)


INVALID = [
    ("npo", {"beta": -0.1}, "beta"),
    ("simnpo", {"beta": 0.0}, "beta"),
    ("idkpo", {"beta": -1.0}, "beta"),
    ("undial", {"gamma": -3.0}, "gamma"),
    ("graddiff", {"retain_loss": "mse"}, "retain_loss"),
    ("graddiff", {"alpha": -1.0}, "alpha"),
    ("ihl_fila", {"rank": 0}, "rank"),
    ("ga", {"lr": 1e-5}, "lr"),
    ("npo", {"bta": 0.1}, "bta"),
]


@pytest.mark.parametrize("name, hparams, key", INVALID, ids=[f"{n}-{k}" for n, _, k in INVALID])
def test_invalid_hyperparameters_fail_with_one_line(build, name, hparams, key):
    with pytest.raises(methods.MethodConfigError) as err:
        build(name, **hparams)
    message = str(err.value)
    assert "\n" not in message and key in message and name in message


def test_reference_needed_only_where_used(build):
    assert not methods.needs_reference("graddiff", {})
    assert methods.needs_reference("graddiff", {"retain_loss": "kl"})
    assert not methods.needs_reference("graddiff", {"retain_loss": "kl", "alpha": 0.0})
    assert methods.needs_reference("kl", {}) and methods.needs_reference("npo", {})
    assert not methods.needs_reference("simnpo", {}) and not methods.needs_reference("ihl_fila", {})
    with pytest.raises(ValueError, match="reference"):
        build("npo")
