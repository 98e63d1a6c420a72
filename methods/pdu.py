"""Primal-dual unlearning (PDU): flatten the forget logits, subject to a bound on the retain NLL, by dual ascent.

Entesari et al., "Constrained Entropic Unlearning: A Primal-Dual Framework for Large Language Models",
arXiv 2506.05314: unlearning as the constrained problem
    min_theta  gamma * F(theta)   s.t.  R(theta) <= eps,
F the logit-margin flattening loss on the forget set, mean over answer positions of (max_v z_v - mean_v z_v)^2
(zero exactly when the next-token distribution is uniform), R the token-mean NLL on the retain set. It is solved on
the Lagrangian L = gamma * F + lambda * (R - eps): a gradient step on theta, then the dual ascent step
    lambda <- max(0, lambda + dual_step_size * (R - eps)),
lambda starting at `alpha` (the retain preference) and held fixed for the first `dual_warmup_epochs` epochs.

Reference code: locuslab/open-unlearning `src/trainer/unlearn/pdu.py` (`PDU.compute_loss`, `final_loss_value`,
`post_epoch_dual_param_update`, `DualOptimizationCallback`) and configs/trainer/PDU.yaml; the authors' TOFU values
from community/methods/PDU/run.sh. Conventions followed:
- Forget loss: (max - mean over the vocabulary of the logits)^2 per position, averaged over the labelled positions
  (the masked version of pdu.py, commit "masked loss PDU"); retain loss: GradDiff's NLL (`model(...).loss`).
- The loss is gamma * F + lambda * (R - eps) (the shift by eps changes the value, not the gradient), computed with
  the lambda of before this step's dual update.
- Per-step updates use this step's R; updates start once `dual_warmup_epochs` epochs are done (the callback's
  `state.epoch >= dual_warmup_epochs` at an epoch's end); with per-epoch updates, each epoch end from then on
  moves lambda once.
Deviations, on purpose:
- Positions: the logits at t - 1 produce the answer token at t, so they are the ones flattened (the shift every loss
  of this package uses). pdu.py masks the unshifted logits with labels[t], which flattens the distribution after
  the last answer token and leaves the one that produces the first answer token alone.
- R in the dual update is averaged across workers, so that every worker holds the same lambda (under accelerate each
  process of the reference updates its own from its own shard, and the copies drift apart).
- Per-epoch updates use the mean of the epoch's per-step R (no extra pass); pdu.py re-evaluates R over the whole
  retain loader, in eval mode, after the epoch.
- While lambda is 0 the retain forward runs without a graph (its term has no gradient then); R is still measured.
- max and mean are taken over the model-dtype logits (the mean accumulated in float32), so no float32 copy of the
  full-vocabulary tensor is made; their difference is squared in float32.
"""

from __future__ import annotations

from typing import Any

import torch

from methods.base import Batch, ForgetSample, StepEngine, UnlearningMethod, as_float_logs
from methods.collectives import average_across_workers
from methods.hyperparameters import PDUHyperparameters
from methods.numerics import (
    forward_logits,
    masked_token_mean,
    shift_for_next_token,
    token_denominator,
    token_mask,
    token_mean_nll,
)

_STATE_KEYS = ("dual", "epochs_done", "epoch_retain_nll_sum", "epoch_steps")


def logit_flattening(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position (max_v z_v - mean_v z_v)^2 `[batch, seq - 1]`, float32, after the next-token shift; and the mask."""
    shifted_logits, shifted_labels = shift_for_next_token(logits, labels)
    margin = shifted_logits.max(dim=-1).values.float() - shifted_logits.mean(dim=-1, dtype=torch.float32)
    return margin.pow(2), token_mask(shifted_labels)


def dual_ascent(dual: float, retain_nll: float, eps: float, step_size: float) -> float:
    """lambda <- max(0, lambda + step_size * (R - eps)): projected gradient ascent on the Lagrangian's dual."""
    return max(0.0, dual + step_size * (retain_nll - eps))


class PDU(UnlearningMethod):
    """gamma * flattening(forget) + lambda * (NLL(retain) - eps), lambda moved by dual ascent after every step or
    epoch; `dual` is lambda, and `method_state()` / `load_method_state()` carry it through a checkpoint."""

    name = "pdu"
    Hyperparameters = PDUHyperparameters

    def __init__(self, hparams: PDUHyperparameters, reference: torch.nn.Module | None = None) -> None:
        super().__init__(hparams, reference)
        self.dual: float = float(hparams.alpha)  # lambda, the retain preference
        self.epochs_done = 0  # counted by on_epoch_end
        self.epoch_retain_nll_sum = 0.0  # per-epoch updates: this epoch's worker-averaged R, summed over its steps
        self.epoch_steps = 0
        self._retain_nll: torch.Tensor | None = None  # this step's R (this worker's share), for the dual update

    @property
    def updates_dual(self) -> bool:
        """Whether the dual variable moves now: primal-dual, and the warm-up epochs are over."""
        return self.hparams.primal_dual and self.epochs_done >= self.hparams.dual_warmup_epochs

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        forget = batch["forget"]
        per_position, mask = logit_flattening(forward_logits(model, forget), forget["labels"])
        forget_pdu = masked_token_mean(per_position, mask, token_denominator(forget))
        loss = self.hparams.gamma * forget_pdu
        logs: dict[str, Any] = {"forget_pdu": forget_pdu, "dual": self.dual}
        self._retain_nll = None
        if self.uses_retain:
            retain = batch["retain"]
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.dual > 0):
                retain_nll = token_mean_nll(forward_logits(model, retain), retain["labels"], token_denominator(retain))
            loss = loss + self.dual * (retain_nll - self.hparams.retain_loss_eps)
            self._retain_nll = retain_nll.detach()
            logs["retain_nll"] = retain_nll
        return loss, as_float_logs(**logs)

    def training_step(self, model: torch.nn.Module, batch: Batch, engine: StepEngine) -> dict[str, float]:
        logs = super().training_step(model, batch, engine)
        if self.hparams.primal_dual and self._retain_nll is not None:
            retain_nll = self._retain_nll.clone().float()
            average_across_workers([retain_nll])  # every worker's share averages to the global batch's R
            self.observe_retain_nll(float(retain_nll))
        return logs

    def observe_retain_nll(self, retain_nll: float) -> None:
        """One step's global-batch R: a per-step dual update now, or a term of the epoch's mean."""
        if self.hparams.dual_update_upon == "step":
            if self.updates_dual:
                self.dual = dual_ascent(self.dual, retain_nll, self.hparams.retain_loss_eps,
                                        self.hparams.dual_step_size)
        else:
            self.epoch_retain_nll_sum += retain_nll
            self.epoch_steps += 1

    def on_epoch_end(
        self, model: torch.nn.Module, forget: list[ForgetSample], holdout: list[ForgetSample]
    ) -> set[int] | None:
        """Count the epoch (the warm-up reads the count); per-epoch updates move lambda on the epoch's mean R.
        Never refines the forget set: returns None."""
        self.epochs_done += 1
        if self.hparams.dual_update_upon == "epoch" and self.updates_dual and self.epoch_steps:
            mean = self.epoch_retain_nll_sum / self.epoch_steps
            self.dual = dual_ascent(self.dual, mean, self.hparams.retain_loss_eps, self.hparams.dual_step_size)
        self.epoch_retain_nll_sum, self.epoch_steps = 0.0, 0
        return None

    # --- resumable state: plain data for a checkpoint --------------------------------------------------------
    def method_state(self) -> dict[str, float | int]:
        """The dual variable, the epoch count and the running epoch mean, as plain numbers."""
        return {"dual": self.dual, "epochs_done": self.epochs_done,
                "epoch_retain_nll_sum": self.epoch_retain_nll_sum, "epoch_steps": self.epoch_steps}

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Restore what `method_state()` returned; a one-line ValueError names missing or unknown keys."""
        missing, unknown = set(_STATE_KEYS) - set(state), set(state) - set(_STATE_KEYS)
        if missing or unknown:
            raise ValueError(f"PDU method state: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
        self.dual = float(state["dual"])
        self.epochs_done = int(state["epochs_done"])
        self.epoch_retain_nll_sum = float(state["epoch_retain_nll_sum"])
        self.epoch_steps = int(state["epoch_steps"])
