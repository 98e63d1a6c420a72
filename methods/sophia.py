"""SophiaG: the second-order clipped optimizer SOUL (arXiv 2404.18239) runs every unlearning loss under.

Sophia (Liu et al., arXiv 2305.14342, Alg. 3) keeps a momentum m and a diagonal curvature estimate h, and moves each
coordinate by `lr * clip(m / (rho * bs * h), 1)`: a Newton-like step where the curvature is trusted, a sign step of
size lr where it is not. SOUL's code (OPTML-Group/SOUL `src/optim/sophia.py`) refreshes h inside `step()` from the
squared mini-batch gradient at every step (`hessian_estimator="ema_grad2"`, the default here); the Sophia paper's
Gauss-Newton-Bartlett estimator (`"gnb"`) instead folds in squared gradients of a loss on labels sampled from the
model itself, every k steps, through `update_hessian()` (SOUL's `training_step` does the sampling).

Why an optimizer here: SOUL's claim is that the second-order clip, not the loss, is what makes GA/GradDiff/NPO
unlearn without collapsing utility; the per-coordinate step is bounded by lr, so an exploding ascent gradient cannot
move a weight by more than lr per step.
"""

from __future__ import annotations

from typing import Callable, Iterable, Literal

import torch

HessianEstimator = Literal["ema_grad2", "gnb"]
HESSIAN_ESTIMATORS: tuple[str, ...] = ("ema_grad2", "gnb")


class SophiaG(torch.optim.Optimizer):
    """SophiaG with decoupled weight decay; h from an EMA of squared gradients (SOUL) or from GNB samples.

    Per parameter, one `step()` does (SOUL `_single_tensor_sophiag`; Sophia Alg. 3):
        h <- beta2 * h + (1 - beta2) * g^2          (only with hessian_estimator="ema_grad2")
        theta <- theta * (1 - lr * weight_decay)    (decoupled decay, as AdamW)
        m <- beta1 * m + (1 - beta1) * g
        theta <- theta - lr * sign(m) * min(|m| / (rho * bs * h + eps), 1)
    so each coordinate moves by at most `lr * (1 + weight_decay * |theta|)` per step.

    `bs` is the batch-size factor of the GNB estimator (Sophia Alg. 2 multiplies the squared sampled gradient by the
    batch size B; the official code applies it in the clip denominator instead): SOUL keeps it at `step(bs=5120)`.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        rho: float = 0.04,
        weight_decay: float = 0.1,
        *,
        bs: float = 5120,
        eps: float = 1e-15,
        hessian_estimator: HessianEstimator = "ema_grad2",
    ) -> None:
        # defaults: betas (0.9, 0.95), rho 0.04, weight decay 0.1 are SOUL's TOFU configs (configs/TOFU/SO_*.json);
        # bs 5120 and eps 1e-15 are SOUL's `step(bs=5120)` and clip denominator.
        if not lr >= 0.0:
            raise ValueError(f"SophiaG: lr must be >= 0, got {lr!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"SophiaG: betas must be two numbers in [0, 1), got {betas!r}")
        if not rho >= 0.0:
            raise ValueError(f"SophiaG: rho must be >= 0, got {rho!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"SophiaG: weight_decay must be >= 0, got {weight_decay!r}")
        if not bs > 0:
            raise ValueError(f"SophiaG: bs must be > 0, got {bs!r}")
        if not eps > 0.0:
            raise ValueError(f"SophiaG: eps must be > 0, got {eps!r}")
        if hessian_estimator not in HESSIAN_ESTIMATORS:
            raise ValueError(
                f"SophiaG: hessian_estimator must be one of {', '.join(HESSIAN_ESTIMATORS)}, got {hessian_estimator!r}"
            )
        defaults = dict(lr=lr, betas=tuple(betas), rho=rho, weight_decay=weight_decay, bs=bs, eps=eps)
        super().__init__(params, defaults)
        self.hessian_estimator = hessian_estimator

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def update_hessian(self) -> None:
        """h <- beta2 * h + (1 - beta2) * grad^2 from the gradients now in `p.grad` (SOUL `update_hessian`).

        With GNB the caller has just back-propagated the loss on model-sampled labels (Sophia Alg. 2); with
        "ema_grad2" `step()` calls this itself.
        """
        for group in self.param_groups:
            _, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SophiaG does not support sparse gradients")
                self._state(p)["hessian"].mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.hessian_estimator == "ema_grad2":
            self.update_hessian()  # SOUL: h refreshed from the plain gradient inside every step()
        for group in self.param_groups:
            beta1, _ = group["betas"]
            lr, rho, bs, eps, wd = group["lr"], group["rho"], group["bs"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SophiaG does not support sparse gradients")
                state = self._state(p)
                state["step"] += 1
                p.mul_(1.0 - lr * wd)  # decoupled weight decay (SOUL `param.mul_(1 - lr * weight_decay)`)
                exp_avg = state["exp_avg"]
                # One EMA per step (Sophia Alg. 3). SOUL's step() calls update_exp_avg() and then
                # _single_tensor_sophiag updates m again: m <- beta1^2 m + (1 - beta1^2) g; we take it for an accident.
                exp_avg.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                ratio = (exp_avg.abs() / (rho * bs * state["hessian"] + eps)).clamp_(max=1.0)
                # Sophia Alg. 3 divides by max(gamma * h, eps) (gamma = rho * bs here); SOUL adds eps instead, as here.
                p.addcmul_(exp_avg.sign(), ratio, value=-lr)
        return loss
