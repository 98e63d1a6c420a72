"""Every built-in method's hyperparameters, with their paper defaults and one help text each.

Kept apart from the losses, and free of torch, so that loading a config, `unlearn methods` and the memory plan can
validate and describe hyperparameters without importing torch (a second or more on every command). The loss files
(`methods/<name>.py`) cite the same papers and reference code; each method class points at its model here.

The base class `Hyperparameters` is defined in `methods/spec.py` (below the registry) and re-exported here. This
module sits above the registry: SOUL validates its inner objective's hyperparameters by the objective's name.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import pydantic

from methods import registry
from methods.spec import Hyperparameters


class GAHyperparameters(Hyperparameters):
    """GA has no hyperparameters of its own; the learning rate and step count belong to the training loop."""


class GradDiffHyperparameters(Hyperparameters):
    """GradDiff: open-unlearning configs/trainer/GradDiff.yaml (gamma 1, alpha 1)."""

    gamma: float = pydantic.Field(1.0, gt=0, description="weight of the forget (ascent) term (open-unlearning)")
    alpha: float = pydantic.Field(1.0, ge=0, description="weight of the retain term; 0 drops it")
    retain_loss: Literal["nll", "kl"] = pydantic.Field(
        "nll", description="retain term: token-mean NLL, or KL(p_ref || p) to the frozen original model"
    )


class KLHyperparameters(Hyperparameters):
    """TOFU's "KL Minimization": GA on the forget set + alpha * KL(p_ref || p) on the retain set."""

    gamma: float = pydantic.Field(1.0, gt=0, description="weight of the forget (ascent) term (open-unlearning)")
    alpha: float = pydantic.Field(1.0, gt=0, description="weight of KL(p_ref || p) on the retain set")


class NPOHyperparameters(Hyperparameters):
    """NPO: arXiv 2404.05868; open-unlearning configs/trainer/NPO.yaml (beta 0.1, gamma 1, alpha 1)."""

    beta: float = pydantic.Field(0.1, gt=0, description="inverse temperature of the preference loss (paper: 0.1)")
    gamma: float = pydantic.Field(1.0, gt=0, description="weight of the NPO forget term (open-unlearning)")
    alpha: float = pydantic.Field(1.0, ge=0, description="weight of the retain NLL; 0 drops it")


class SimNPOHyperparameters(Hyperparameters):
    """SimNPO: arXiv 2410.07163 with open-unlearning's names (configs/trainer/SimNPO.yaml)."""

    beta: float = pydantic.Field(4.5, gt=0, description="inverse temperature (open-unlearning TOFU: 4.5)")
    delta: float = pydantic.Field(
        0.0, ge=0, description="margin on the length-normalised NLL; the paper's gamma is beta * delta"
    )
    gamma: float = pydantic.Field(0.125, gt=0, description="weight of the SimNPO forget term (open-unlearning)")
    alpha: float = pydantic.Field(1.0, ge=0, description="weight of the retain NLL; 0 drops it")


class IdkPOHyperparameters(Hyperparameters):
    """IdkPO (DPO toward refusals): open-unlearning configs/trainer/DPO.yaml (beta 0.1, gamma 1, alpha 1)."""

    beta: float = pydantic.Field(0.1, gt=0, description="DPO inverse temperature (open-unlearning: 0.1)")
    gamma: float = pydantic.Field(1.0, gt=0, description="weight of the preference term (open-unlearning)")
    alpha: float = pydantic.Field(1.0, ge=0, description="weight of the retain NLL; 0 drops it")


class UnDIALHyperparameters(Hyperparameters):
    """UnDIAL: arXiv 2402.10052."""

    gamma: float = pydantic.Field(
        10.0,
        gt=0,
        description="logit penalty on the true next token (open-unlearning UNDIAL.yaml `beta`: 10; "
        "UnDIAL's own code defaults to 5, its README uses 3; suggested grid {3, 10, 30})",
    )
    teacher_top_k: int | None = pydantic.Field(
        None,
        ge=1,
        description="keep the teacher's adjusted distribution at its k likeliest tokens plus the true one, the "
        "rest of its mass spread evenly over the other tokens (the reference values then take 8(k+1) bytes a token "
        "instead of 2 x vocabulary; the spread mass is logged as teacher_tail_mass); None keeps the whole vocabulary",
    )


class IHLHyperparameters(Hyperparameters):
    """IHL: arXiv 2408.06621; reference code csm9493/efficient-llm-unlearning (retain weight 1)."""

    alpha: float = pydantic.Field(1.0, ge=0, description="weight of the retain NLL (reference code: 1); 0 drops it")


class IHLFILAHyperparameters(IHLHyperparameters):
    """IHL on FILA-initialised LoRA adapters."""

    # The reference sweeps r in {4, 8, 16, 32} with lora_alpha = 2r and no dropout (TOFU/run_forget.sh).
    rank: int = pydantic.Field(8, gt=0, description="LoRA rank r (reference sweeps 4, 8, 16, 32)")
    lora_alpha: float = pydantic.Field(16.0, gt=0, description="LoRA alpha; scaling = lora_alpha / rank (ref: 2r)")
    target_modules: list[str] | None = pydantic.Field(
        None,
        description="Linear modules to adapt (full names or name suffixes, as peft matches them); "
        "default: every torch.nn.Linear except the output head",
    )


SOUL_OBJECTIVES = ("ga", "graddiff", "kl", "npo", "idkpo")


class SOULHyperparameters(Hyperparameters):
    """SOUL: arXiv 2404.18239; values from OPTML-Group/SOUL's TOFU configs."""

    objective: Literal["ga", "graddiff", "kl", "npo", "idkpo"] = pydantic.Field(
        "graddiff", description="the unlearning loss Sophia optimises (SOUL's TOFU recipe: GradDiff)"
    )
    objective_hparams: dict[str, Any] = pydantic.Field(
        default_factory=dict, description="hyperparameters of the inner objective (its own defaults otherwise)"
    )
    rho: float = pydantic.Field(0.04, gt=0, description="Sophia clip scale rho (SOUL configs/TOFU/SO_*.json)")
    betas: tuple[float, float] = pydantic.Field(
        (0.9, 0.95), description="Sophia (beta1, beta2): momentum and Hessian EMA rates (SOUL TOFU configs)"
    )
    bs: float = pydantic.Field(5120, gt=0, description="batch-size factor in the clip denominator (SOUL step())")
    hessian_estimator: Literal["ema_grad2", "gnb"] = pydantic.Field(
        "ema_grad2",
        description="curvature: EMA of squared gradients every step (SOUL's code) or Gauss-Newton-Bartlett "
        "on model-sampled labels every hessian_interval steps (Sophia paper)",
    )
    hessian_interval: int = pydantic.Field(
        10, gt=0, description="k: steps between GNB refreshes (Sophia paper: 10); unused with ema_grad2"
    )

    @pydantic.field_validator("betas")
    @classmethod
    def _betas_in_unit_interval(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"both betas must lie in [0, 1), got {betas}")
        return betas

    @pydantic.field_validator("objective_hparams")
    @classmethod
    def _inner_objective_valid(cls, value: dict[str, Any], info: pydantic.ValidationInfo) -> dict[str, Any]:
        # MethodConfigError is a ValueError: pydantic reports it under 'objective_hparams'.
        if "objective" in info.data:  # absent when `objective` itself was invalid
            registry.validate_hyperparameters(info.data["objective"], value)
        return value


class ICUHyperparameters(Hyperparameters):
    """ICU: arXiv 2407.20271; values from himalalps/ICU's README command line."""

    alpha: float = pydantic.Field(0.5, ge=0, description="weight of NLL on the analogous batch (ICU code --lw 0.5)")
    beta: float = pydantic.Field(
        1.0, ge=0, description="weight of CE(p_original, p_current) on the analogous batch (ICU code --kl 1.0)"
    )
    bleu_threshold: float = pydantic.Field(
        0.01, ge=0, le=1, description="a forget sample whose continuation's BLEU falls below this is forgotten"
    )
    similarity: Literal["token_f1", "rouge_l"] = pydantic.Field(
        "token_f1",
        description="offline substitute for BERTScore-F1: bag-of-tokens F1 (order-free matching, as BERTScore's "
        "greedy matching) or ROUGE-L F1",
    )
    similarity_threshold: float = pydantic.Field(
        0.3, ge=0, le=1, description="below this similarity a sample is forgotten (ICU code: BERTScore-F1 0.3)"
    )
    extraction_ngram: int = pydantic.Field(
        10, gt=0, description="n of the extraction likelihood EL_n (ICU code el_n = [10]); capped at answer length"
    )
    stop_on_holdout: bool = pydantic.Field(
        True, description="stop when forget MA and EL are at or below the original model's on the holdout set"
    )
    memorisation_threshold: float | None = pydantic.Field(
        None, ge=0, le=1, description="fixed MA threshold instead of the holdout's (ICU code --acc 0.5994)"
    )
    extraction_threshold: float | None = pydantic.Field(
        None, ge=0, le=1, description="fixed EL threshold instead of the holdout's (ICU code --el 0.0499)"
    )
    generation_batch_size: int = pydantic.Field(32, gt=0, description="rows per batched greedy generation")


class OFMUHyperparameters(Hyperparameters):
    """OFMU: arXiv 2509.22483 (no public code)."""

    # The paper's values for these were not available to us offline; the defaults are ours (see the report).
    inner_steps: int = pydantic.Field(5, gt=0, description="T, ascent steps on Phi per outer step (paper: 5-10)")
    # With grad Phi clipped to norm 1, inner_lr is the L2 length of an inner step: 0.1 moves a 7B model about as
    # far per outer step (T = 5) as one AdamW step at lr 1e-5 (~0.8), so forgetting and repair keep pace.
    inner_lr: float = pydantic.Field(0.1, gt=0, description="step size of the inner gradient ascent on Phi")
    inner_max_grad_norm: float | None = pydantic.Field(
        1.0, gt=0, description="clip the norm of grad Phi before each inner step (None: no clipping)"
    )
    beta: float = pydantic.Field(
        0.1, ge=0, description="weight of the similarity penalty cos(grad L_f, grad L_r) in Phi; 0 = plain GA"
    )
    rho0: float = pydantic.Field(0.01, gt=0, description="initial penalty weight rho_0 on ||grad Phi||^2")
    gamma: float = pydantic.Field(1.05, ge=1, description="penalty growth per outer step: rho_{k+1} = gamma rho_k")
    rho_max: float = pydantic.Field(1.0, gt=0, description="cap on rho_k, so the outer step stays bounded")
    outer_hessian: Literal["exact", "forget_only"] = pydantic.Field(
        "exact",
        description="Hess(Phi) in the outer step: exact (third derivatives) or Hess(L_f) (second derivatives)",
    )
    # First-order mode (methods/ofmu.py's docstring): no double backward, so fused SDPA attention stays on.
    hessian: Literal["exact", "finite_difference"] = pydantic.Field(
        "exact",
        description="Hessian-vector products: exact (double backward, eager attention) or finite differences of "
        "first-order gradients",
    )
    fd_eps: float = pydantic.Field(
        3e-4, gt=0, le=1, allow_inf_nan=False,
        description="finite-difference step relative to the parameters: eps = fd_eps * (1 + ||theta||) "
        "(hessian=finite_difference)",
    )
    fd_scheme: Literal["central", "forward"] = pydantic.Field(
        "central",
        description="finite differences: central (error O(eps^2), 2 gradients per product) or forward "
        "(O(eps), 1 gradient per product)",
    )

    @pydantic.model_validator(mode="after")
    def _rho_max_at_least_rho0(self) -> "OFMUHyperparameters":
        if self.rho_max < self.rho0:
            raise ValueError(f"rho_max ({self.rho_max}) must be >= rho0 ({self.rho0})")
        return self


class RMUHyperparameters(Hyperparameters):
    """RMU: arXiv 2403.03218 (WMDP); open-unlearning configs/trainer/RMU.yaml (steering 2, alpha 1, gamma 1)."""

    layer: int | None = pydantic.Field(
        None,
        ge=0,
        description="decoder layer (0-based) whose output is steered on forget data and held on retain data; "
        "default min(7, num_layers // 2): layer 7 (WMDP, open-unlearning) on models of 14 layers or more",
    )
    steering_coeff: float = pydantic.Field(
        2.0, gt=0, description="norm c of the control vector c*u (open-unlearning: 2; WMDP code: 20, README: 6.5)"
    )
    alpha: float = pydantic.Field(
        1.0, ge=0, description="weight of the retain activation MSE (open-unlearning: 1; WMDP: 100-1200); 0 drops it"
    )
    gamma: float = pydantic.Field(1.0, gt=0, description="weight of the forget activation MSE (open-unlearning)")
    trainable_params_regex: list[str] | None = pydantic.Field(
        None,
        min_length=1,
        description="parameters to update: regexes searched in each parameter's name (open-unlearning's TOFU "
        "config: ['.*'], every parameter); default WMDP's: mlp.down_proj of layers layer-2..layer",
    )
    control_seed: int = pydantic.Field(
        42, description="seed of the random unit vector u (uniform entries, normalised; WMDP seed 42)"
    )

    @pydantic.field_validator("trainable_params_regex")
    @classmethod
    def _regexes_compile(cls, patterns: list[str] | None) -> list[str] | None:
        for pattern in patterns or []:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"{pattern!r} is not a regular expression ({err})") from None
        return patterns

    def resolved_layer(self, num_layers: int) -> int:
        """The steered layer on a model of `num_layers` decoder layers; a one-line ValueError if it has no such layer.

        Torch-free, so that a run can be refused before any model is loaded (the model config's num_hidden_layers).
        """
        layer = min(7, num_layers // 2) if self.layer is None else self.layer
        if not 0 <= layer < num_layers:
            raise ValueError(f"RMU layer {layer} is out of range: the model has {num_layers} decoder layers "
                             f"(0..{num_layers - 1})")
        return layer

    def check_model(self, num_layers: int) -> None:
        """The steered layer must exist: `resolved_layer`'s one-line ValueError otherwise."""
        self.resolved_layer(num_layers)

    def trainable_patterns(self, num_layers: int) -> list[str] | None:
        return self.resolved_trainable_patterns(num_layers)

    def resolved_trainable_patterns(self, num_layers: int) -> list[str]:
        """`trainable_params_regex`, or WMDP's default: the mlp.down_proj weights of layers layer-2..layer.

        The default also matches peft's names for those weights (`...down_proj.base_layer.weight`, frozen by peft,
        and `...down_proj.lora_A.default.weight`), so LoRA adapters on down_proj stay trainable.
        """
        if self.trainable_params_regex is not None:
            return list(self.trainable_params_regex)
        layer = self.resolved_layer(num_layers)
        return [rf"(^|\.)layers\.{i}\.mlp\.down_proj\.(.+\.)?weight$" for i in range(max(0, layer - 2), layer + 1)]


class WGAHyperparameters(Hyperparameters):
    """WGA: arXiv 2502.19301; open-unlearning configs/trainer/WGA.yaml (beta 1, gamma 1, alpha 1)."""

    beta: float = pydantic.Field(
        1.0, ge=0, description="each forget token's ascent is weighted by p(y_t)^beta (paper: 1); 0 is plain GA"
    )
    gamma: float = pydantic.Field(1.0, gt=0, description="weight of the weighted-ascent forget term")
    alpha: float = pydantic.Field(1.0, ge=0, description="weight of the retain NLL; 0 drops it")


class SatImpHyperparameters(Hyperparameters):
    """SatImp: arXiv 2505.11953; open-unlearning configs/trainer/SatImp.yaml (beta1 5, beta2 1, gamma 0.1, alpha 1)."""

    beta1: float = pydantic.Field(
        5.0, ge=0, description="saturation exponent: token weight p(y_t)^beta1 * (1 - p(y_t))^beta2 (paper: 5)"
    )
    beta2: float = pydantic.Field(1.0, ge=0, description="importance exponent on (1 - p(y_t)) (paper: 1)")
    gamma: float = pydantic.Field(
        0.1, gt=0, description="weight of the forget term (open-unlearning SatImp.yaml: 0.1; its README: 1)"
    )
    alpha: float = pydantic.Field(
        1.0, ge=0, description="weight of the retain NLL (SatImp.yaml: 1; its README: 0.1); 0 drops it"
    )


class CEUHyperparameters(Hyperparameters):
    """CE-U: arXiv 2503.01224; open-unlearning configs/trainer/CEU.yaml (ignore_first_n_answer_tokens 1)."""

    ignore_first_n_answer_tokens: int = pydantic.Field(
        1, ge=0, description="answer tokens at the start of each row left out of the loss (paper's footnote: 1)"
    )


class PDUHyperparameters(Hyperparameters):
    """PDU: arXiv 2506.05314; open-unlearning configs/trainer/PDU.yaml, with the authors' TOFU values
    (community/methods/PDU/run.sh: retain preference 100, dual step 5, retain_loss_eps 0.3, warm-up 5 epochs)."""

    gamma: float = pydantic.Field(1.0, gt=0, description="weight of the logit-flattening forget loss")
    alpha: float = pydantic.Field(
        100.0, ge=0, description="retain preference: the dual variable's start (authors' TOFU: 100; PDU.yaml: 1)"
    )
    retain_loss_eps: float = pydantic.Field(
        0.3, ge=0, description="the constraint NLL(retain) <= eps; set it somewhat above the target's retain NLL "
        "(authors' TOFU: 0.3; PDU.yaml leaves it required)"
    )
    primal_dual: bool = pydantic.Field(True, description="update the retain preference as a dual variable")
    dual_step_size: float = pydantic.Field(
        5.0, gt=0, description="dual ascent step: alpha += step * (NLL(retain) - eps) (authors' TOFU: 5; PDU.yaml: 1)"
    )
    dual_update_upon: Literal["step", "epoch"] = pydantic.Field(
        "step", description="update the dual variable every step, or once an epoch (on that epoch's mean retain NLL)"
    )
    dual_warmup_epochs: int = pydantic.Field(
        5, ge=0, description="epochs before the dual variable starts to move (PDU.yaml and authors' TOFU: 5)"
    )
