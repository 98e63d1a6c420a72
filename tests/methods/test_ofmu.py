"""OFMU (methods/ofmu.py): Hessian-vector products against finite differences, the penalty schedule, one step,
and the first-order mode (hessian="finite_difference") against the exact one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import methods
import methods.ofmu as ofmu_module
from methods.numerics import forward_logits, token_mean_nll
from methods.ofmu import (
    _gradient_fn,
    finite_difference_hvp,
    finite_difference_step,
    hessian_vector_product,
    penalty_at,
)
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


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def relative_error(a, b) -> float:
    a, b = flat(a).detach(), flat(b).detach()
    return float((a - b).norm() / b.norm())


class TinyLM(torch.nn.Module):
    """Embedding -> tanh(linear) -> head, all float64: HF Llama computes RMSNorm and softmax in float32, which would
    put a ~1e-4 floor under any comparison of derivatives."""

    def __init__(self, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def weight(*shape: int) -> torch.nn.Parameter:
            return torch.nn.Parameter(0.5 * torch.randn(*shape, generator=g, dtype=torch.float64))

        self.embed, self.mix, self.head = weight(VOCAB, width), weight(width, width), weight(width, VOCAB)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.tanh(self.embed[input_ids] @ self.mix) @ self.head)


def float64_nll(model, part) -> torch.Tensor:
    """The token-mean NLL in float64 (methods.numerics computes log-probabilities in float32)."""
    logits = forward_logits(model, part)[:, :-1]
    labels = part["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


@pytest.fixture
def float64_losses(monkeypatch):
    monkeypatch.setattr(ofmu_module, "_nll", float64_nll)


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


class TestFiniteDifferenceProducts:
    """hessian="finite_difference": products from first-order gradients against double backward, in float64."""

    FD_EPS = 1e-4  # float64: truncation ~fd_eps^2 dominates; measured 1.5e-8 (H v), 4.8e-8 (grad Phi)

    def setup_method(self) -> None:
        self.model = TinyLM()
        self.params = list(self.model.parameters())
        self.forget, self.retain = small_batch(1), small_batch(2, offset=100)
        self.eps = finite_difference_step(self.params, self.FD_EPS)

    def test_hessian_vector_product_matches_double_backward(self, float64_losses):
        torch.manual_seed(0)
        v = [torch.randn_like(p) for p in self.params]
        grad = torch.autograd.grad(float64_nll(self.model, self.forget), self.params, create_graph=True)
        exact = hessian_vector_product(grad, self.params, v)
        gradient = _gradient_fn(self.model, self.params, self.forget)
        assert relative_error(finite_difference_hvp(gradient, self.params, v, self.eps), exact) < 1e-6
        forward = finite_difference_hvp(gradient, self.params, v, self.eps, at_theta=gradient())
        assert relative_error(forward, exact) < 1e-3  # O(eps): measured 1.1e-4

    def test_parameters_come_back_bit_for_bit(self):
        before = [p.detach().clone() for p in self.params]
        v = [torch.full_like(p, 0.1) for p in self.params]
        finite_difference_hvp(_gradient_fn(self.model, self.params, self.forget), self.params, v, 0.37)
        assert all(torch.equal(p, b) for p, b in zip(self.params, before))

    def test_zero_vector_gives_zero_without_evaluating(self):
        def never() -> list[torch.Tensor]:
            raise AssertionError("evaluated a gradient for v = 0")

        zero = [torch.zeros_like(p) for p in self.params]
        assert all(not h.any() for h in finite_difference_hvp(never, self.params, zero, self.eps))

    def test_grad_phi_and_its_hessian_product_match_double_backward(self, float64_losses):
        """grad Phi holds H_f u_f + H_r u_r (the cosine's gradient); Hess(Phi) grad Phi differences it once more."""
        ofmu = methods.build("ofmu", beta=0.5, hessian="finite_difference", fd_eps=self.FD_EPS)
        _, grad_phi, _ = ofmu.phi_and_gradient(self.model, self.params, self.forget, self.retain, create_graph=True)
        exact_curvature = hessian_vector_product(grad_phi, self.params, grad_phi)
        point = ofmu.phi_first_order(self.model, self.params, self.forget, self.retain, self.eps)
        assert relative_error(point.grad, grad_phi) < 1e-6  # measured 4.8e-8

        def grad_phi_fd() -> list[torch.Tensor]:
            return ofmu.phi_first_order(self.model, self.params, self.forget, self.retain, self.eps).grad

        curvature = finite_difference_hvp(grad_phi_fd, self.params, point.grad, self.eps)
        assert relative_error(curvature, exact_curvature) < 1e-5  # measured 8e-7


class TestFiniteDifferenceTrainingStep:
    @pytest.mark.parametrize("outer_hessian", ["exact", "forget_only"])
    def test_one_step_lands_next_to_the_exact_one(self, float64_losses, outer_hessian):
        """The same step from the same theta, exact and first-order; float64, so only the differences differ."""
        forget, retain = small_batch(1), small_batch(2, offset=100)
        moved = {}
        for hessian in ("exact", "finite_difference"):
            model = TinyLM()
            ofmu = methods.build("ofmu", inner_steps=2, inner_lr=0.05, beta=0.5, rho0=0.3, hessian=hessian,
                                 outer_hessian=outer_hessian, fd_eps=1e-4)
            theta = [p.detach().clone() for p in model.parameters()]
            engine = SimpleEngine(torch.optim.SGD(model.parameters(), lr=0.05))
            ofmu.training_step(model, {"forget": forget, "retain": retain}, engine)
            moved[hessian] = [p.detach() - t for p, t in zip(model.parameters(), theta)]
        assert relative_error(moved["finite_difference"], moved["exact"]) < 1e-6  # measured 8.0e-8 (exact), 7.0e-8 (forget_only)

    def test_first_order_only_and_fused_attention_kept(self, tiny_model, monkeypatch):
        """No autograd call builds a graph of a gradient, and an HF model keeps its SDPA attention."""
        calls: list[bool] = []
        grad = torch.autograd.grad

        def recording_grad(*args, **kwargs):
            calls.append(bool(kwargs.get("create_graph", False)))
            return grad(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", recording_grad)
        assert tiny_model.config._attn_implementation == "sdpa"
        ofmu = methods.build("ofmu", inner_steps=2, beta=0.1, hessian="finite_difference")
        engine = SimpleEngine(torch.optim.SGD(tiny_model.parameters(), lr=0.05))
        batch = {"forget": small_batch(1), "retain": small_batch(2, offset=100)}
        forget_before = nll(tiny_model, batch["forget"])
        logs = ofmu.training_step(tiny_model, batch, engine)
        # inner: 2 steps x (g_f, g_r, 2 central products of 2) = 12; outer: grad Phi (6) + product of grad Phi (12)
        assert calls == [False] * 30
        assert tiny_model.config._attn_implementation == "sdpa"
        assert nll(tiny_model, batch["forget"]) > forget_before
        assert {"retain_nll", "phi", "cosine", "grad_phi_norm", "rho", "forget_nll_before"} <= logs.keys()


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
        assert (ofmu.hparams.hessian, ofmu.hparams.fd_scheme) == ("exact", "central")


@pytest.mark.parametrize(
    "hparams, needle",
    [
        ({"inner_steps": 0}, "inner_steps"),
        ({"inner_lr": 0}, "inner_lr"),
        ({"gamma": 0.5}, "gamma"),
        ({"rho0": 2.0, "rho_max": 1.0}, "rho_max"),
        ({"beta": -1}, "beta"),
        ({"outer_hessian": "diagonal"}, "outer_hessian"),
        ({"hessian": "gauss_newton"}, "hessian"),
        ({"fd_eps": 0}, "fd_eps"),
        ({"fd_eps": -1e-3}, "fd_eps"),
        ({"fd_eps": float("nan")}, "fd_eps"),
        ({"fd_eps": 2.0}, "fd_eps"),
        ({"fd_scheme": "backward"}, "fd_scheme"),
    ],
)
def test_invalid_hyperparameters_are_one_line_config_errors(hparams, needle):
    with pytest.raises(methods.MethodConfigError, match=needle) as err:
        methods.build("ofmu", **hparams)
    assert "\n" not in str(err.value)
