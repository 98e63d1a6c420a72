"""SOUL: an unlearning loss (GA, GradDiff, GA+KL, NPO, IdkPO) optimised by the second-order optimizer Sophia.

Jia et al., "SOUL: Unlocking the Power of Second-Order Optimization for LLM Unlearning", arXiv 2404.18239. The loss
is unchanged (the paper applies Sophia to GA, GradDiff, KL, preference optimisation and NPO); what SOUL changes is
the optimizer: SophiaG, with clipped, curvature-scaled steps. Its code (OPTML-Group/SOUL) estimates the curvature
from squared gradients inside `step()`; the Sophia paper's Gauss-Newton-Bartlett estimator, sampled every k steps,
is kept as `hessian_estimator="gnb"` (Sophia, arXiv 2305.14342, Alg. 2).
"""

from __future__ import annotations

from typing import Iterable

import torch

from methods.base import Batch, BatchPart, ReferenceValue, StepEngine, UnlearningMethod, as_float_logs
from methods.collectives import average_across_workers
from methods.hyperparameters import SOULHyperparameters
from methods.numerics import IGNORE_INDEX, forward_logits, shift_for_next_token, token_denominator, token_mean_nll
from methods.registry import build
from methods.sophia import SophiaG


class SOUL(UnlearningMethod):
    """Delegates the loss and the data it needs to an inner objective; prescribes SophiaG as the optimizer."""

    name = "soul"

    Hyperparameters = SOULHyperparameters

    def __init__(self, hparams: SOULHyperparameters, reference: torch.nn.Module | None = None) -> None:
        super().__init__(hparams, reference)  # the profile takes parts and reference from the inner objective
        self.objective = build(hparams.objective, reference=reference, **hparams.objective_hparams)
        self.reference_cache = self.objective.reference_cache  # one cache: the inner loss is what fills it
        self.optimizer: SophiaG | None = None
        self._steps = 0

    @property
    def reference_values(self) -> tuple[ReferenceValue, ...]:
        return self.objective.reference_values

    @property
    def releases_reference(self) -> bool:
        return self.objective.releases_reference

    def replace_reference(self, reference: torch.nn.Module | None) -> None:
        super().replace_reference(reference)
        if hasattr(self, "objective"):  # the base's __init__ sets the first one before the objective exists
            self.objective.replace_reference(reference)

    def release_reference(self) -> None:
        self.replace_reference(None)

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective.loss(model, batch)

    def make_optimizer(
        self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
    ) -> torch.optim.Optimizer:
        """SophiaG over `params`; weight decay on matrices only.

        SOUL's `create_sophia_optimizer` exempts biases and LayerNorm/RMSNorm weights from decay by name; from a bare
        parameter list the same split for Llama-style models is "decay tensors with 2+ dimensions".
        """
        params = list(params)
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        hp = self.hparams
        self.optimizer = SophiaG(
            [g for g in groups if g["params"]],
            lr=lr,
            betas=hp.betas,
            rho=hp.rho,
            weight_decay=weight_decay,
            bs=hp.bs,
            hessian_estimator=hp.hessian_estimator,
        )
        return self.optimizer

    def training_step(self, model: torch.nn.Module, batch: Batch, engine: StepEngine) -> dict[str, float]:
        logs: dict[str, float] = {}
        if self.hparams.hessian_estimator == "gnb" and self._steps % self.hparams.hessian_interval == 0:
            logs.update(self._refresh_hessian_gnb(model, batch["forget"], engine))
        self._steps += 1
        loss, loss_logs = self.loss(model, batch)
        engine.backward(loss)
        engine.step()
        return {"loss": float(loss.detach()), **loss_logs, **logs}

    def _refresh_hessian_gnb(self, model: torch.nn.Module, forget: BatchPart, engine: StepEngine) -> dict[str, float]:
        """Gauss-Newton-Bartlett estimate (Sophia arXiv 2305.14342, Alg. 2): sample y_hat ~ p(.|x) from the model at
        the forget answer positions, back-propagate the CE to y_hat, fold grad^2 into h. The factor B of Alg. 2 is
        Sophia's `bs` in the clip denominator (as in Sophia's and SOUL's code)."""
        if self.optimizer is None:
            raise RuntimeError("SOUL with hessian_estimator='gnb' needs its optimizer: call make_optimizer first")
        logits = forward_logits(model, forget)
        shifted_logits, shifted_labels = shift_for_next_token(logits, forget["labels"])
        with torch.no_grad():
            sampled = torch.distributions.Categorical(logits=shifted_logits.detach().float()).sample()
        sampled_labels = forget["labels"].clone()
        sampled_labels[:, 1:] = torch.where(shifted_labels != IGNORE_INDEX, sampled, IGNORE_INDEX)
        sampled_nll = token_mean_nll(logits, sampled_labels, token_denominator(forget))  # same labelled positions
        engine.backward(sampled_nll)
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        average_across_workers(grads)
        self.optimizer.update_hessian()
        self.optimizer.zero_grad(set_to_none=True)
        return as_float_logs(gnb_sampled_nll=sampled_nll)
