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
"""

from __future__ import annotations

from typing import Sequence

import torch

from methods.base import Batch, BatchPart, StepEngine, UnlearningMethod, as_float_logs
from methods.collectives import average_across_workers
from methods.hyperparameters import OFMUHyperparameters
from methods.numerics import forward_logits, token_denominator, token_mean_nll

Tensors = Sequence[torch.Tensor]


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

    # --- the two loops --------------------------------------------------------------------------------------
    def training_step(self, model: torch.nn.Module, batch: Batch, engine: StepEngine) -> dict[str, float]:
        hp = self.hparams
        _use_eager_attention(model)
        params = [p for p in model.parameters() if p.requires_grad]
        forget, retain = batch["forget"], batch["retain"]

        inner_logs: dict[str, torch.Tensor] = {}
        for t in range(hp.inner_steps):
            _, grad_phi, logs = self.phi_and_gradient(model, params, forget, retain, create_graph=False)
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

        rho = self.rho
        retain_nll = _nll(model, retain)
        grad_retain = _grad(retain_nll, params, create_graph=False)
        phi, grad_phi, logs = self.phi_and_gradient(model, params, forget, retain, create_graph=True)
        if hp.outer_hessian == "exact":
            curvature = hessian_vector_product(grad_phi, params, grad_phi)
        else:
            grad_forget = _grad(_nll(model, forget), params, create_graph=True)
            curvature = hessian_vector_product(grad_forget, params, grad_phi)
        grad_phi_norm = flat_norm([g.detach() for g in grad_phi])
        for p, g_r, hv in zip(params, grad_retain, curvature):
            p.grad = (g_r + 2.0 * rho * hv).to(p.dtype)  # grad of L_r + rho ||grad Phi||^2
        # On N workers the engine averages these, so the curvature term is the mean of per-worker
        # Hess(Phi_i) grad Phi_i; it equals Hess(Phi) grad Phi of the global batch only on one worker.
        engine.step()
        self.outer_step += 1
        return as_float_logs(
            loss=retain_nll + rho * grad_phi_norm**2,
            retain_nll=retain_nll,
            phi=phi,
            grad_phi_norm=grad_phi_norm,
            rho=rho,
            **{k: v for k, v in logs.items() if k != "retain_nll"},
            **inner_logs,
        )


def _nll(model: torch.nn.Module, part: BatchPart) -> torch.Tensor:
    return token_mean_nll(forward_logits(model, part), part["labels"], token_denominator(part))


def _grad(loss: torch.Tensor, params: Tensors, create_graph: bool) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True, materialize_grads=True)
    return list(grads) if create_graph else [g.detach() for g in grads]
