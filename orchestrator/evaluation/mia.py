"""Membership-inference attacks on the forget set, their AUC, and MUSE's privacy leakage.

Members are the forget examples (the target model was trained on them), non-members the holdout examples (same
distribution, never trained on). A well-unlearned model should look at the forget set the way a model retrained
without it does: AUC near that retain model's AUC (about 0.5).

Attack statistics follow open-unlearning (`src/evals/metrics/mia/{loss,zlib,min_k,min_k_plus_plus}.py`), including
their orientation: every score is *lower for members* (a loss-like quantity).
- loss: mean NLL of the answer (Yeom et al. 2018).
- zlib: mean NLL / zlib-compressed length of the answer in bytes (Carlini et al. 2021; their code and
  open-unlearning divide the *log-perplexity*, i.e. the mean NLL, not the NLL sum).
- min-k%: minus the mean of the lowest k% token log-probs (Shi et al. 2024, arXiv 2310.16789).
- min-k%++: the same over token log-probs standardised by the mean/std of log p(v) under the model's own
  next-token distribution (Zhang et al. 2024, arXiv 2404.02936).

Two more attacks need more than the target's scoring pass, so `attack_scores` and `ATTACKS` leave them out:
- gradnorm_l1 / gradnorm_l2 / gradnorm_linf (`GRADIENT_ATTACKS`): the size of the gradient of the example's answer
  loss w.r.t. the trainable parameters (Duan et al. 2024, arXiv 2402.17012; open-unlearning `mia/gradnorm.py`), one
  backward per example: `orchestrator.evaluation.gradient_mia.gradient_norm_scores`. Members have smaller gradients.
- reference (`REFERENCE_ATTACK`): target mean NLL minus a reference model's mean NLL of the same answer (open-unlearning
  `mia/reference.py`), `reference_scores`; needs a second model, e.g. the retain model.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
from scipy.stats import rankdata

from orchestrator.evaluation.likelihood import AnswerScores

ATTACKS = ("loss", "zlib", "min_k", "min_k++")
# `ATTACKS` above come out of one scoring pass of the target (`attack_scores`); the two attacks below do not.
# Gradient-norm attack, one name per p-norm (p = 1, 2, inf); scores from `gradient_mia.gradient_norm_scores`.
GRADIENT_NORMS: dict[str, float] = {"gradnorm_l1": 1.0, "gradnorm_l2": 2.0, "gradnorm_linf": float("inf")}
GRADIENT_ATTACKS = tuple(GRADIENT_NORMS)
# Reference-model attack (open-unlearning's "ref"); scores from `reference_scores`.
REFERENCE_ATTACK = "reference"


def gradient_attack_name(p: float) -> str:
    """The attack name of the gradient p-norm: 1 -> "gradnorm_l1", 2 -> "gradnorm_l2", inf -> "gradnorm_linf"."""
    for name, norm in GRADIENT_NORMS.items():
        if float(p) == norm:
            return name
    raise ValueError(f"gradient-norm attack: p={p!r} is not one of 1, 2, inf")


def loss_score(mean_logprob: float) -> float:
    """LOSS attack: mean NLL of the answer tokens (EOS included, as open-unlearning `evaluate_probability`)."""
    return float(-mean_logprob)


def zlib_score(mean_logprob: float, text: str) -> float:
    """zlib attack: mean NLL divided by the zlib-compressed length of the text in bytes."""
    return float(-mean_logprob) / len(zlib.compress(text.encode("utf-8")))


def min_k_score(token_logprobs: np.ndarray, k: float = 0.4) -> float:
    """Min-K% Prob: minus the mean of the lowest `max(1, int(k * n))` token log-probs; 0 for no tokens.

    k = 0.4 is open-unlearning's TOFU/MUSE config (`configs/eval/*_metrics/mia_min_k.yaml`).
    """
    lp = np.asarray(token_logprobs, dtype=np.float64)
    if lp.size == 0:
        return 0.0
    num_k = max(1, int(lp.size * k))
    return float(-np.mean(np.sort(lp)[:num_k]))


def min_k_plus_plus_score(
    token_logprobs: np.ndarray, vocab_mean: np.ndarray, vocab_std: np.ndarray, k: float = 0.4
) -> float:
    """Min-K%++: min-k% over `(log p(x_t) - mu_t) / sigma_t`, mu/sigma of log p(v) for v ~ p(.|x_<t)."""
    lp = np.asarray(token_logprobs, dtype=np.float64)
    if lp.size == 0:
        return 0.0
    z = (lp - np.asarray(vocab_mean)) / np.asarray(vocab_std)
    return min_k_score(z, k)


def attack_scores(scores: AnswerScores, texts: Sequence[str], k: float = 0.4) -> dict[str, np.ndarray]:
    """Every attack's per-example score (lower = more member-like) from a `details=True` scoring pass."""
    mean_lp = scores.mean_logprob
    n = len(texts)
    return {
        "loss": np.array([loss_score(mean_lp[i]) for i in range(n)]),
        "zlib": np.array([zlib_score(mean_lp[i], texts[i]) for i in range(n)]),
        "min_k": np.array([min_k_score(scores.token_logprobs[i], k) for i in range(n)]),
        "min_k++": np.array(
            [
                min_k_plus_plus_score(scores.token_logprobs[i], scores.vocab_mean[i], scores.vocab_std[i], k)
                for i in range(n)
            ]
        ),
    }


def reference_scores(target_nll: np.ndarray, reference_nll: np.ndarray) -> np.ndarray:
    """Reference-model attack: `target_nll - reference_nll` per example (lower = more member-like).

    Both are the per-example mean NLL of the answer with the EOS token included (`loss_score`, i.e. open-unlearning's
    `avg_loss` from `evaluate_probability`), the second under a reference model that never saw the members (the
    retain model). Subtracting it removes how hard each answer is in itself, leaving what the target learnt about it;
    open-unlearning `mia/reference.py` scores `target_loss - ref_loss` with the same orientation.
    """
    target = np.asarray(target_nll, dtype=np.float64)
    reference = np.asarray(reference_nll, dtype=np.float64)
    if target.shape != reference.shape:
        raise ValueError(f"reference attack: target scores {target.shape} and reference scores {reference.shape}")
    return target - reference


def mann_whitney_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC = P(score(positive) > score(negative)) + P(tie) / 2, via the Mann-Whitney U statistic.

    U = (sum of the positives' ranks in the pooled sample, ties given their average rank) - n_pos (n_pos + 1) / 2,
    and AUC = U / (n_pos n_neg); this equals sklearn's `roc_auc_score`. `nan` when either side is empty.
    """
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def membership_auc(forget_scores: np.ndarray, holdout_scores: np.ndarray) -> float:
    """AUC of telling forget (members) from holdout (non-members) with loss-like scores.

    = P(score(holdout) > score(forget)) + ties / 2: 1 when every forget example looks more familiar to the model
    than every holdout one, 0.5 at chance. Same number as open-unlearning `mia_auc` (labels forget 0, holdout 1).
    """
    return mann_whitney_auc(holdout_scores, forget_scores)


def privacy_leakage(auc_unlearned: float, auc_retain: float) -> float:
    """MUSE's PrivLeak (Shi et al. 2024, arXiv 2407.06460) as a fraction (MUSE prints it x100).

    MUSE defines PrivLeak = (AUC_unlearn - AUC_retrain) / AUC_retrain with its AUC oriented the other way round
    from `membership_auc` (open-unlearning `privacy.py::privleak` turns its AUC x into 1 - x before the same
    formula), so that the target model scores about -1 (under-unlearning: negative) and over-unlearning is positive.
    We do the same, so our numbers compare with the MUSE and open-unlearning tables.
    """
    unlearned, retain = 1.0 - auc_unlearned, 1.0 - auc_retain
    return float((unlearned - retain) / (retain + 1e-10))
