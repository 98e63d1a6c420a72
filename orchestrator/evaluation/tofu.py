"""TOFU's metrics (Maini et al. 2024, arXiv 2401.06121): probability, truth ratio, forget quality, model utility.

Every function takes the length-normalised log-likelihoods that `likelihood.py` computes, so the formulas here are
plain numpy and can be checked by hand. Conventions follow open-unlearning (locuslab/open-unlearning):
- `src/evals/metrics/memorization.py` `probability`, `probability_w_options`, `truth_ratio`;
- `src/evals/metrics/privacy.py` `ks_test` (forget quality);
- `src/evals/metrics/utility.py` `hm_aggregate` over `configs/eval/tofu_metrics/model_utility.yaml`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import ks_2samp

# open-unlearning adds 1e-10 to every denominator of a ratio of probabilities.
EPS = 1e-10


def probability(mean_logprob: np.ndarray) -> np.ndarray:
    """`P(a|q)^(1/|a|)` per example: TOFU's "Probability" on forget and retain (open-unlearning `probability`)."""
    return np.exp(np.asarray(mean_logprob, dtype=np.float64))


def normalised_probability(
    correct_mean_logprob: np.ndarray, perturbed_mean_logprobs: Sequence[np.ndarray]
) -> np.ndarray:
    """Probability of the correct answer among the options, for TOFU's real-authors / world-facts sets.

    `p_c / (p_c + sum_w p_w)` with every `p = P(.|q)^(1/|.|)` length-normalised (open-unlearning
    `probability_w_options`). An example without perturbed options gets `nan`.
    """
    correct = probability(correct_mean_logprob)
    out = np.full(correct.shape, np.nan)
    for i, wrong in enumerate(perturbed_mean_logprobs):
        if len(wrong):
            out[i] = correct[i] / (correct[i] + probability(wrong).sum() + EPS)
    return out


def truth_ratios(correct_mean_logprob: np.ndarray, perturbed_mean_logprobs: Sequence[np.ndarray]) -> np.ndarray:
    """TOFU's truth ratio per example, `R = (prod_w P(w|q)^(1/|w|))^(1/|W|) / P(c|q)^(1/|c|)`.

    The numerator is the geometric mean of the length-normalised probabilities of the perturbed (wrong) answers, the
    denominator the length-normalised probability of the paraphrased answer on forget/retain and of the original
    answer on the real-world sets (open-unlearning `truth_ratio`: `exp(-mean avg_loss_wrong) / exp(-avg_loss_correct)`).
    `R < 1`: the model prefers the truth. An example without perturbed answers gets `nan`.
    """
    correct = np.asarray(correct_mean_logprob, dtype=np.float64)
    out = np.full(correct.shape, np.nan)
    for i, wrong in enumerate(perturbed_mean_logprobs):
        if len(wrong):
            out[i] = np.exp(np.mean(wrong)) / (np.exp(correct[i]) + EPS)
    return out


def truth_ratio_true_better(ratios: np.ndarray) -> float:
    """Utility form for data to keep: `mean max(0, 1 - R)` (TOFU; open-unlearning aggregator `true_better`)."""
    r = _finite(ratios)
    return float(np.mean(np.maximum(0.0, 1.0 - r))) if r.size else float("nan")


def truth_ratio_closer_to_one(ratios: np.ndarray) -> float:
    """Forget-set form: `mean min(R, 1/R)`, 1 when true and false answers are equally likely.

    TOFU's own aggregation for the forget set; open-unlearning aggregator `closer_to_1_better`.
    """
    r = _finite(ratios)
    return float(np.mean(np.minimum(r, 1.0 / (r + EPS)))) if r.size else float("nan")


def forget_quality(unlearned_forget_ratios: np.ndarray, retain_model_forget_ratios: np.ndarray) -> float:
    """p-value of the two-sample Kolmogorov-Smirnov test between the two models' forget-set truth ratios.

    High (near 1): the unlearned model's truth ratios are distributed like those of a model never trained on the
    forget set. Raw ratios, as open-unlearning `ks_test`; the KS statistic is invariant under the monotone maps
    (1/R, log R) that other implementations apply first.
    """
    a, b = _finite(unlearned_forget_ratios), _finite(retain_model_forget_ratios)
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(ks_2samp(a, b).pvalue)


def model_utility(values: Sequence[float]) -> float:
    """Harmonic mean of the utility components (probability, ROUGE-L recall, truth ratio per kept split).

    Any component at 0 makes the utility 0 (scipy's `hmean`, open-unlearning `hm_aggregate`); `nan` components
    (a split without perturbed answers) are left out.
    """
    v = _finite(np.asarray(values, dtype=np.float64))
    if v.size == 0:
        return float("nan")
    if np.any(v <= 0.0):
        return 0.0
    return float(v.size / np.sum(1.0 / v))


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]
