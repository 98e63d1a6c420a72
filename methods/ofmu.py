"""OFMU: unlearning as a bi-level problem, forgetting first (inner) and utility restored under a penalty (outer).

Asif & Amiri, "OFMU: Optimization-Driven Framework for Machine Unlearning", arXiv 2509.22483 (ICLR 2026); no public
code, so this follows the paper's formulation as summarised in DESIGN.md, and the choices below are ours.

Sign conventions (read these first):
- L_f(theta) = token-mean NLL of the forget answers (HF's `model(...).loss`). Forgetting = making L_f *larger*.
- L_r(theta) = token-mean NLL of the retain answers. Utility = keeping L_r small.
- Inner problem: maximise Phi(theta) = L_f - beta * cos(grad L_f, grad L_r), the similarity-aware forget objective:
  ascend on the forget NLL while preferring directions whose forget gradient does not align with the retain
  gradient (a step along +grad L_f changes L_r by <grad L_r, grad L_f>, so a positive cosine is what costs utility).
- Outer problem, penalty form: minimise F(theta) = L_r + rho_k * ||grad Phi||^2, whose gradient is
  grad L_r + 2 rho_k * Hess(Phi) grad Phi, taken by a Hessian-vector product (double backward), with
  rho_{k+1} = min(gamma * rho_k, rho_max).

One `training_step` = one outer iteration k of the two-loop algorithm:
1. T inner steps of plain gradient ascent theta <- theta + inner_lr * grad Phi on the *real* parameters. The
   bi-level problem has one set of parameters (the inner solution is the model that is deployed), so the inner loop
   moves the model itself; a copy would leave the forgetting to the penalty alone. Inner gradients are averaged
   across workers before each move so that the workers' models stay identical.
2. One outer step at the inner solution: p.grad = grad L_r + 2 rho_k Hess(Phi) grad Phi, then `engine.step()`
   (all-reduce, the loop's optimizer with its lr_out, zero_grad).

Cost: an inner step needs first and second derivatives (the cosine's gradient contains Hessian-vector products of
L_f and L_r); the exact outer Hess(Phi) v therefore needs third derivatives. `outer_hessian="forget_only"` replaces
Hess(Phi) by Hess(L_f) (drops the curvature of the beta-weighted cosine) and needs second derivatives only.
Double backward needs an attention kernel whose backward is itself differentiable; PyTorch's fused SDPA kernels are
not (on CPU: "derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"), so the
first step switches an HF model to eager attention (`set_attn_implementation("eager")`).

First-order mode, `hessian="finite_difference"`: every Hessian-vector product (the two inside the cosine's gradient,
H_f u_f and H_r u_r, and the outer Hess(Phi) grad Phi or Hess(L_f) grad Phi) is replaced by a difference of plain
gradients along the unit direction v^ = v / ||v||:
    H v ~ (g(theta + eps v^) - g(theta - eps v^)) / (2 eps) * ||v||      (`fd_scheme="central"`, error O(eps^2))
    H v ~ (g(theta + eps v^) - g(theta)) / eps * ||v||                    (`fd_scheme="forward"`, error O(eps),
                                                                            reuses g(theta), half the evaluations)
Each g is one forward and one first-order backward (no create_graph), so the fused SDPA kernels stay (no switch to
eager) and nothing keeps a graph of a gradient. The exact outer Hess(Phi) grad Phi differences the first-order
grad Phi itself (a finite difference of finite differences); `outer_hessian="forget_only"` differences grad L_f.
The parameters are perturbed in place and then copied back from a saved copy (never "add, then subtract"), so they
come back bit for bit; the saved copy costs one more set of trainable parameters in memory.

The step is relative: eps = fd_eps * (1 + ||theta||), ||theta|| the L2 norm of the trainable parameters (the usual
scaling of a finite-difference step, e.g. Nocedal & Wright, Numerical Optimization, ch. 8). A fixed eps would not
survive a change of model size: the perturbation eps v^ spreads over n parameters of typical size
||theta|| / sqrt(n), and v^ over entries of typical size 1 / sqrt(n), so with eps ~ fd_eps * ||theta|| each entry moves
by about fd_eps of its own magnitude whatever n is. That is what decides rounding: the step must be many units in
the last place of theta's dtype, and the error of g(theta +- eps v^) is relative to g. Central differences trade
truncation (~fd_eps^2) against rounding (~u / fd_eps, and ~u / fd_eps^2 for the difference of differences of the
exact outer product). Measured in float32 on a tiny Llama (hidden 32, 2 layers) against float64 double backward:
relative error of H_f v 4e-3 / 4e-4 / 5e-5 / 8e-5 / 2e-4 and of Hess(Phi) grad Phi 0.5 / 0.07 / 8e-3 / 8e-4 / 3e-3
at fd_eps 1e-2 / 3e-3 / 1e-3 / 3e-4 / 1e-4 (forward differences: H_f v 6e-3 at 1e-3, 7e-4 at 1e-4), hence the
default 3e-4. In bfloat16 (u = 4e-3) the products are coarse at any step: keep float32 parameters for this mode.

Gradient evaluations (one forward and first-order backward of one batch part each) with beta > 0, central
(forward) differences: an inner step takes g_f and g_r, then H_f u_f and H_r u_r at 2 (1) each: 6 (4). The outer step
takes grad Phi at theta_T (6 (4); its g_r is the outer grad L_r), then one product along grad Phi: of grad L_f
(forget_only: 2 (1) more) or of grad Phi itself (exact: 2 (1) more grad Phi, 12 (4)). With beta = 0, grad Phi =
grad L_f and an inner step is a single evaluation. The gradients must be deterministic functions of theta: dropout
off (HF Llama's attention_dropout is 0), or the differences measure the noise.
Under DeepSpeed or the plain engine the contract is the exact mode's: gradients are taken with torch.autograd.grad,
the outer gradient is written to p.grad by hand and `engine.step()` applies it (the profile in methods/catalog.py
still marks OFMU as not ZeRO-ready: ZeRO partitions the parameters this mode perturbs in place).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from methods.base import Batch, BatchPart, StepEngine, UnlearningMethod, as_float_logs
from methods.collectives import average_across_workers
from methods.hyperparameters import OFMUHyperparameters
from methods.numerics import forward_logits, token_denominator, token_mean_nll

Tensors = Sequence[torch.Tensor]
GradientFn = Callable[[], list[torch.Tensor]]  # a first-order gradient at the parameters' current values


def penalty_at(step: int, rho0: float, gamma: float, rho_max: float) -> float:
    """rho_k = min(rho0 * gamma^k, rho_max): the increasing penalty schedule of the outer problem."""
    return min(rho0 * gamma**step, rho_max)


def dot(a: Tensors, b: Tensors) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def flat_norm(a: Tensors) -> torch.Tensor:
    return torch.sqrt(dot(a, a) + 1e-20)  # + tiny: finite derivative at a zero gradient


def hessian_vector_product(gradient: Tensors, params: Tensors, vector: Tensors) -> list[torch.Tensor]:
    """H v = d/dtheta <grad f(theta), v> for a `gradient` built with create_graph=True; v is held constant."""
    product = dot(gradient, [v.detach() for v in vector])
    return list(torch.autograd.grad(product, params, allow_unused=True, materialize_grads=True))


def finite_difference_step(params: Tensors, fd_eps: float) -> float:
    """eps = fd_eps * (1 + ||theta||): a step relative to the parameters' norm (see the module docstring)."""
    with torch.no_grad():
        return fd_eps * (1.0 + float(flat_norm([p.detach().float() for p in params])))


def gradient_at(params: Tensors, point: Tensors, gradient: GradientFn) -> list[torch.Tensor]:
    """`gradient()` with the parameters set to `point`; the caller restores them (see `restore`)."""
    with torch.no_grad():
        for p, x in zip(params, point):
            p.copy_(x)
    return gradient()


def restore(params: Tensors, saved: Tensors) -> None:
    """Copy the saved values back: bit-exact, unlike subtracting the perturbation again."""
    with torch.no_grad():
        for p, x in zip(params, saved):
            p.copy_(x)


def finite_difference_hvp(
    gradient: GradientFn,
    params: Tensors,
    vector: Tensors,
    eps: float,
    at_theta: Tensors | None = None,
) -> list[torch.Tensor]:
    """H v from first-order gradients only, H the Jacobian of `gradient` at the current parameters.

    Central: (g(theta + eps v^) - g(theta - eps v^)) / (2 eps) * ||v||. Forward, when `at_theta` = g(theta) is
    given: (g(theta + eps v^) - g(theta)) / eps * ||v||. v^ = v / ||v||; v = 0 gives 0 without evaluating.
    The parameters are restored from a saved copy afterwards, bit for bit."""
    norm = float(torch.sqrt(dot([v.detach().double() for v in vector], [v.detach().double() for v in vector])))
    if norm == 0.0:
        return [torch.zeros_like(p) for p in params]
    saved = [p.detach().clone() for p in params]
    step = [(v.detach() * (eps / norm)).to(p.dtype) for p, v in zip(params, vector)]
    try:
        plus = gradient_at(params, [x + d for x, d in zip(saved, step)], gradient)
        if at_theta is None:
            minus = gradient_at(params, [x - d for x, d in zip(saved, step)], gradient)
            scale = norm / (2.0 * eps)
        else:
            minus, scale = list(at_theta), norm / eps
    finally:
        restore(params, saved)
    return [(a - b) * scale for a, b in zip(plus, minus)]


@dataclass
class PhiPoint:
    """Phi and its first-order gradient at one theta, with the pieces the outer step reuses."""

    phi: torch.Tensor
    grad: list[torch.Tensor]
    grad_forget: list[torch.Tensor]
    grad_retain: list[torch.Tensor] | None  # None with beta = 0 (the retain set is not read for Phi)
    logs: dict[str, torch.Tensor]


def _use_eager_attention(model: torch.nn.Module) -> None:
    """Switch HF models to eager attention once: the fused SDPA kernels have no double backward on CPU."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if hasattr(module, "set_attn_implementation") and getattr(config, "_attn_implementation", "eager") != "eager":
            module.set_attn_implementation("eager")
            return


class OFMU(UnlearningMethod):
    """Two-loop penalty method: T ascent steps on Phi, then one descent step on L_r + rho_k ||grad Phi||^2."""

    name = "ofmu"
    Hyperparameters = OFMUHyperparameters

    def __init__(self, hparams: OFMUHyperparameters, reference: torch.nn.Module | None = None) -> None:
        super().__init__(hparams, reference)
        self.outer_step = 0  # k; not checkpointed: a resumed run restarts the schedule at rho0

    @property
    def rho(self) -> float:
        hp = self.hparams
        return penalty_at(self.outer_step, hp.rho0, hp.gamma, hp.rho_max)

    # --- the objectives -------------------------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The first-order surrogate for evaluation and logging: -L_f + L_r (OFMU trains through `training_step`)."""
        forget_nll = _nll(model, batch["forget"])
        retain_nll = _nll(model, batch["retain"])
        return -forget_nll + retain_nll, as_float_logs(forget_nll=forget_nll, retain_nll=retain_nll)

    def phi_and_gradient(
        self, model: torch.nn.Module, params: Tensors, forget: BatchPart, retain: BatchPart, create_graph: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
        """Phi = L_f - beta * cos(grad L_f, grad L_r) and grad Phi (with its graph when `create_graph`)."""
        forget_nll = _nll(model, forget)
        if self.hparams.beta == 0:
            grad = _grad(forget_nll, params, create_graph)
            return forget_nll, grad, {"forget_nll": forget_nll}
        retain_nll = _nll(model, retain)
        # the cosine depends on theta through both gradients: keep their graphs (second derivatives)
        grad_forget = _grad(forget_nll, params, create_graph=True)
        grad_retain = _grad(retain_nll, params, create_graph=True)
        cosine = dot(grad_forget, grad_retain) / (flat_norm(grad_forget) * flat_norm(grad_retain))
        phi = forget_nll - self.hparams.beta * cosine
        grad = _grad(phi, params, create_graph)
        return phi, grad, {"forget_nll": forget_nll, "retain_nll": retain_nll, "cosine": cosine}

    def phi_first_order(
        self, model: torch.nn.Module, params: Tensors, forget: BatchPart, retain: BatchPart, eps: float
    ) -> PhiPoint:
        """Phi and grad Phi from first-order gradients: grad cos by two finite-difference products.

        grad cos = H_f u_f + H_r u_r with u_f = (g^_r - cos g^_f) / ||g_f|| and u_r = (g^_f - cos g^_r) / ||g_r||
        (g^ = g / ||g||), which is d/dtheta of <g_f, g_r> / (||g_f|| ||g_r||) with H_f, H_r the Hessians of L_f, L_r."""
        hp = self.hparams
        forget_gradient = _gradient_fn(model, params, forget)
        forget_nll, grad_forget = _value_and_grad(model, params, forget)
        if hp.beta == 0:
            return PhiPoint(forget_nll, grad_forget, grad_forget, None, {"forget_nll": forget_nll})
        retain_nll, grad_retain = _value_and_grad(model, params, retain)
        norm_f, norm_r = flat_norm(grad_forget), flat_norm(grad_retain)
        unit_f = [g / norm_f for g in grad_forget]
        unit_r = [g / norm_r for g in grad_retain]
        cosine = dot(unit_f, unit_r)
        u_f = [(r - cosine * f) / norm_f for f, r in zip(unit_f, unit_r)]
        u_r = [(f - cosine * r) / norm_r for f, r in zip(unit_f, unit_r)]
        forward = hp.fd_scheme == "forward"
        h_f = finite_difference_hvp(forget_gradient, params, u_f, eps, grad_forget if forward else None)
        h_r = finite_difference_hvp(
            _gradient_fn(model, params, retain), params, u_r, eps, grad_retain if forward else None
        )
        grad = [g - hp.beta * (a + b) for g, a, b in zip(grad_forget, h_f, h_r)]
        logs = {"forget_nll": forget_nll, "retain_nll": retain_nll, "cosine": cosine}
        return PhiPoint(forget_nll - hp.beta * cosine, grad, grad_forget, grad_retain, logs)

    # --- the two loops --------------------------------------------------------------------------------------
    def training_step(self, model: torch.nn.Module, batch: Batch, engine: StepEngine) -> dict[str, float]:
        """T inner ascent steps on Phi, then p.grad = grad L_r + 2 rho_k H grad Phi and `engine.step()`."""
        hp = self.hparams
        if hp.hessian == "exact":
            _use_eager_attention(model)  # double backward; the first-order mode keeps the fused kernels
        params = [p for p in model.parameters() if p.requires_grad]
        forget, retain = batch["forget"], batch["retain"]
        inner_logs = self._inner_ascent(model, params, forget, retain)

        rho = self.rho
        outer = self._outer_terms(model, params, forget, retain)
        grad_phi_norm = flat_norm([g.detach() for g in outer.grad_phi])
        for p, g_r, hv in zip(params, outer.grad_retain, outer.curvature):
            p.grad = (g_r + 2.0 * rho * hv).to(p.dtype)  # grad of L_r + rho ||grad Phi||^2
        # On N workers the engine averages these, so the curvature term is the mean of per-worker
        # Hess(Phi_i) grad Phi_i; it equals Hess(Phi) grad Phi of the global batch only on one worker.
        engine.step()
        self.outer_step += 1
        return as_float_logs(
            loss=outer.retain_nll + rho * grad_phi_norm**2,
            retain_nll=outer.retain_nll,
            phi=outer.phi,
            grad_phi_norm=grad_phi_norm,
            rho=rho,
            **{k: v for k, v in outer.logs.items() if k != "retain_nll"},
            **inner_logs,
        )

    def _inner_ascent(
        self, model: torch.nn.Module, params: Tensors, forget: BatchPart, retain: BatchPart
    ) -> dict[str, torch.Tensor]:
        """T steps theta <- theta + inner_lr * grad Phi (clipped, averaged across workers); the first step's logs."""
        hp = self.hparams
        inner_logs: dict[str, torch.Tensor] = {}
        for t in range(hp.inner_steps):
            grad_phi, logs = self._phi_gradient(model, params, forget, retain)
            if t == 0:
                inner_logs = {f"{k}_before": v.detach() for k, v in logs.items()}
            average_across_workers(grad_phi)
            if hp.inner_max_grad_norm is not None:
                norm = float(flat_norm(grad_phi))
                if norm > hp.inner_max_grad_norm:
                    grad_phi = [g * (hp.inner_max_grad_norm / norm) for g in grad_phi]
            with torch.no_grad():
                for p, g in zip(params, grad_phi):
                    p.add_(g, alpha=hp.inner_lr)  # ascent: Phi (and the forget NLL) goes up
        return inner_logs

    def _phi_gradient(
        self, model: torch.nn.Module, params: Tensors, forget: BatchPart, retain: BatchPart
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """grad Phi (detached) and Phi's logs, by double backward or by finite differences (`hessian`)."""
        if self.hparams.hessian == "finite_difference":
            eps = finite_difference_step(params, self.hparams.fd_eps)
            point = self.phi_first_order(model, params, forget, retain, eps)
            return point.grad, point.logs
        _, grad, logs = self.phi_and_gradient(model, params, forget, retain, create_graph=False)
        return grad, logs

    def _outer_terms(
        self, model: torch.nn.Module, params: Tensors, forget: BatchPart, retain: BatchPart
    ) -> "OuterTerms":
        if self.hparams.hessian == "finite_difference":
            return self._outer_terms_first_order(model, params, forget, retain)
        return self._outer_terms_exact(model, params, forget, retain)

    def _outer_terms_exact(
        self, model: torch.nn.Module, params: Tensors, forget: BatchPart, retain: BatchPart
    ) -> "OuterTerms":
        """grad L_r, and Hess(Phi) grad Phi (or Hess(L_f) grad Phi) by double (or triple) backward."""
        retain_nll, grad_retain = _value_and_grad(model, params, retain)
        phi, grad_phi, logs = self.phi_and_gradient(model, params, forget, retain, create_graph=True)
        if self.hparams.outer_hessian == "exact":
            curvature = hessian_vector_product(grad_phi, params, grad_phi)
        else:
            grad_forget = _grad(_nll(model, forget), params, create_graph=True)
            curvature = hessian_vector_product(grad_forget, params, grad_phi)
        return OuterTerms(retain_nll, grad_retain, phi, [g.detach() for g in grad_phi], curvature, logs)

    def _outer_terms_first_order(
        self, model: torch.nn.Module, params: Tensors, forget: BatchPart, retain: BatchPart
    ) -> "OuterTerms":
        """The same terms from first-order gradients: the curvature term is a difference of grad Phi (exact) or of
        grad L_f (forget_only) along grad Phi; grad L_r at theta is the one Phi's cosine already took."""
        hp = self.hparams
        eps = finite_difference_step(params, hp.fd_eps)
        point = self.phi_first_order(model, params, forget, retain, eps)
        if point.grad_retain is not None:
            retain_nll, grad_retain = point.logs["retain_nll"], point.grad_retain
        else:
            retain_nll, grad_retain = _value_and_grad(model, params, retain)
        forward = hp.fd_scheme == "forward"
        if hp.outer_hessian == "exact":
            def grad_phi() -> list[torch.Tensor]:
                return self.phi_first_order(model, params, forget, retain, eps).grad

            curvature = finite_difference_hvp(grad_phi, params, point.grad, eps, point.grad if forward else None)
        else:
            base = point.grad_forget if forward else None
            curvature = finite_difference_hvp(_gradient_fn(model, params, forget), params, point.grad, eps, base)
        return OuterTerms(retain_nll, grad_retain, point.phi, point.grad, curvature, point.logs)


@dataclass
class OuterTerms:
    """What the outer step needs at the inner solution theta_T."""

    retain_nll: torch.Tensor
    grad_retain: list[torch.Tensor]
    phi: torch.Tensor
    grad_phi: list[torch.Tensor]  # detached
    curvature: list[torch.Tensor]  # Hess(Phi) grad Phi, or Hess(L_f) grad Phi (forget_only)
    logs: dict[str, torch.Tensor]


def _nll(model: torch.nn.Module, part: BatchPart) -> torch.Tensor:
    return token_mean_nll(forward_logits(model, part), part["labels"], token_denominator(part))


def _grad(loss: torch.Tensor, params: Tensors, create_graph: bool) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True, materialize_grads=True)
    return list(grads) if create_graph else [g.detach() for g in grads]


def _value_and_grad(model: torch.nn.Module, params: Tensors, part: BatchPart) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """L(part) (detached) and its first-order gradient."""
    loss = _nll(model, part)
    return loss.detach(), _grad(loss, params, create_graph=False)


def _gradient_fn(model: torch.nn.Module, params: Tensors, part: BatchPart) -> GradientFn:
    """grad L(part) at whatever values the parameters hold when it is called (for finite differences)."""
    return lambda: _grad(_nll(model, part), params, create_graph=False)
