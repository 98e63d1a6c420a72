"""OFMU (methods/ofmu.py): Hessian-vector products against finite differences, the penalty schedule, one step."""

from __future__ import annotations

import pytest
import torch

import methods
from methods.numerics import forward_logits, token_mean_nll
from methods.ofmu import hessian_vector_product, penalty_at
from orchestrator.models.loading import tiny_llama
from tests.conftest import VOCAB, make_part


class SimpleEngine:
    """StepEngine on one process; remembers the gradient it was handed."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.seen: list[torch.Tensor] = []

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.seen = [p.grad.detach().clone() for group in self.optimizer.param_groups for p in group["params"]]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def small_batch(seed: int = 1, offset: int = 0) -> dict:
    return make_part(batch=2, seq=8, prompt_len=3, seed=seed, offset=offset)


def nll(model, part) -> float:
    with torch.no_grad():
        return float(token_mean_nll(forward_logits(model, part), part["labels"]))


def set_params(params, values) -> None:
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


class TestHessianVectorProduct:
    def test_quadratic_is_exact(self):
        """f = 1/2 x^T A x + b^T x has Hessian A, so H v = A v exactly."""
        torch.manual_seed(0)
        m = torch.randn(4, 4, dtype=torch.float64)
        a, b = m @ m.T, torch.randn(4, dtype=torch.float64)
        x, v = torch.randn(4, dtype=torch.float64, requires_grad=True), torch.randn(4, dtype=torch.float64)
        (grad,) = torch.autograd.grad(0.5 * x @ a @ x + b @ x, [x], create_graph=True)
        torch.testing.assert_close(hessian_vector_product([grad], [x], [v])[0], a @ v)

    def test_hessian_of_phi_matches_central_differences_on_a_llama(self):
        """Hess(Phi) v = d/de grad Phi(theta + e v) at e = 0, checked by (grad Phi(+e) - grad Phi(-e)) / 2e.
        Phi contains the cosine of two gradients, so this exercises third derivatives through a real Llama.
        The model runs in float64, but HF Llama computes RMSNorm and the eager softmax in float32, which puts the
        floor of the comparison near 1e-4 (relative, whole vector); a wrong derivative is off by O(1)."""
        model = tiny_llama(VOCAB, seed=0, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32).double()
        model.set_attn_implementation("eager")
        ofmu = methods.build("ofmu", beta=0.5)
        forget, retain = small_batch(1), small_batch(2, offset=100)
        params = list(model.parameters())
        theta = [p.detach().clone() for p in params]
        torch.manual_seed(0)
        v = [torch.randn_like(p) for p in params]
        norm = torch.sqrt(sum((d * d).sum() for d in v))
        v = [d / norm for d in v]
        _, grad_phi, _ = ofmu.phi_and_gradient(model, params, forget, retain, create_graph=True)
        hv = torch.cat([h.reshape(-1) for h in hessian_vector_product(grad_phi, params, v)])
        eps, sides = 1e-2, []
        for sign in (1.0, -1.0):
            set_params(params, [t + sign * eps * d for t, d in zip(theta, v)])
            _, grad, _ = ofmu.phi_and_gradient(model, params, forget, retain, create_graph=False)
            sides.append(torch.cat([g.reshape(-1) for g in grad]))
        set_params(params, theta)
        finite = (sides[0] - sides[1]) / (2 * eps)
        assert float((hv - finite).norm() / finite.norm()) < 1e-3


class TestPenaltySchedule:
    def test_geometric_growth_capped_at_rho_max(self):
        assert [penalty_at(k, 0.1, 2.0, 0.5) for k in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
        assert penalty_at(100, 0.1, 1.0, 0.5) == 0.1

    def test_each_outer_step_advances_the_schedule(self, tiny_model):
        ofmu = methods.build("ofmu", inner_steps=1, beta=0.0, rho0=0.01, gamma=2.0, rho_max=0.03)
        engine = SimpleEngine(torch.optim.SGD(tiny_model.parameters(), lr=1e-3))
        batch = {"forget": small_batch(1), "retain": small_batch(2, offset=100)}
        rhos = [ofmu.training_step(tiny_model, batch, engine)["rho"] for _ in range(3)]
        assert rhos == pytest.approx([0.01, 0.02, 0.03])
        assert ofmu.rho == pytest.approx(0.03)


class TestTrainingStep:
    def test_one_step_forgets_without_wrecking_retain(self, tiny_model):
        ofmu = methods.build("ofmu", inner_steps=2, inner_lr=0.05, beta=0.1, rho0=0.1)
        engine = SimpleEngine(torch.optim.SGD(tiny_model.parameters(), lr=0.05))
        batch = {"forget": small_batch(1), "retain": small_batch(2, offset=100)}
        forget_before, retain_before = nll(tiny_model, batch["forget"]), nll(tiny_model, batch["retain"])
        logs = ofmu.training_step(tiny_model, batch, engine)
        assert nll(tiny_model, batch["forget"]) > forget_before + 0.05
        assert nll(tiny_model, batch["retain"]) < retain_before + 0.1
        assert {"retain_nll", "phi", "cosine", "grad_phi_norm", "rho", "forget_nll_before"} <= logs.keys()
        assert tiny_model.config._attn_implementation == "eager"  # switched for double backward

    def test_outer_gradient_is_retain_gradient_plus_penalty_curvature(self, tiny_model):
        """With beta = 0, Phi = L_f, so the outer gradient must be grad L_r + 2 rho Hess(L_f) grad L_f at the point
        the inner ascent reached; recomputed here independently."""
        ofmu = methods.build("ofmu", inner_steps=1, inner_lr=0.05, beta=0.0, rho0=0.3, outer_hessian="forget_only")
        engine = SimpleEngine(torch.optim.SGD(tiny_model.parameters(), lr=0.0))  # lr 0: parameters stay at theta_T
        forget, retain = small_batch(1), small_batch(2, offset=100)
        ofmu.training_step(tiny_model, {"forget": forget, "retain": retain}, engine)
        params = list(tiny_model.parameters())
        grad_r = torch.autograd.grad(token_mean_nll(forward_logits(tiny_model, retain), retain["labels"]), params)
        grad_f = torch.autograd.grad(
            token_mean_nll(forward_logits(tiny_model, forget), forget["labels"]), params, create_graph=True
        )
        hv = hessian_vector_product(grad_f, params, grad_f)
        for seen, g, h in zip(engine.seen, grad_r, hv):
            torch.testing.assert_close(seen, g + 2 * 0.3 * h, rtol=1e-4, atol=1e-6)

    def test_flags(self):
        ofmu = methods.build("ofmu")
        assert ofmu.uses_retain and not ofmu.supports_deepspeed and not ofmu.needs_reference
        assert (ofmu.hparams.inner_steps, ofmu.hparams.outer_hessian) == (5, "exact")


@pytest.mark.parametrize(
    "hparams, needle",
    [
        ({"inner_steps": 0}, "inner_steps"),
        ({"inner_lr": 0}, "inner_lr"),
        ({"gamma": 0.5}, "gamma"),
        ({"rho0": 2.0, "rho_max": 1.0}, "rho_max"),
        ({"beta": -1}, "beta"),
        ({"outer_hessian": "diagonal"}, "outer_hessian"),
    ],
)
def test_invalid_hyperparameters_are_one_line_config_errors(hparams, needle):
    with pytest.raises(methods.MethodConfigError, match=needle) as err:
        methods.build("ofmu", **hparams)
    assert "\n" not in str(err.value)
