"""MUSE's metrics (Shi et al. 2024, arXiv 2407.06460) by MUSE's own code (github swj0419/muse_bench), as pure
functions on texts and numbers. The model passes are `evaluation.probes.evaluate_probes` (generation) and the
MIA scores of `evaluation.mia` (Min-K%).

VerbMem and KnowMem (`metrics/verbmem.py`, `metrics/knowmem.py`, `metrics/logger.py`): greedy generation, then
`rouge_scorer.RougeScorer([...], use_stemmer=False).score(gt, output)["rougeL"].fmeasure` per item; the headline is
`mean_rougeL`, the mean of those F1s (`eval.py`: `verbmem_agg_key='mean_rougeL'`, `knowmem_agg_key='mean_rougeL'`;
`rougeL_recall` is logged beside it), printed x100. Two details of MUSE's code:
- MUSE scores *without* a stemmer; `evaluation.rouge` (TOFU, open-unlearning `eval_text_similarity`) stems. Here
  `stemmer=False` by default, so "runs" and "running" do not match, as in MUSE.
- VerbMem's reference is the ground truth cut to its first `max_new_tokens` tokens *counted with the BOS token*
  (`tokenizer(gt, add_special_tokens=True).input_ids[:, :128]`, decoded without special tokens): 127 text tokens
  for Llama. `verbmem_reference` / `truncate_verbmem_targets` do that cut; open-unlearning scores the whole `gt`.
- KnowMem's output is cut before the first of "\\n\\n", "\\nQuestion", "Question:" (`get_prefix_before_words_occur`),
  not stripped (`cut_at_stops` strips too; ROUGE ignores whitespace, so the scores agree).

PrivLeak (`metrics/privleak.py`, `eval.py`): per text, Min-40% = minus the mean of the lowest int(0.4 n) token
log-probs (`mia.min_k_score` with k = 0.4, the same number for n >= 3 tokens; MUSE's has no floor of 1 token);
AUC from `roc_curve(y, -score)` with the forget texts labelled 0 and the holdout texts 1
(`auc["forget_holdout_Min-40%"]`), i.e. AUC_MUSE = P(score(forget) > score(holdout)) + ties / 2 =
1 - `mia.membership_auc(forget, holdout)`. So a model that still knows its forget set has AUC_MUSE near 0, and
PrivLeak = (AUC_MUSE(unlearned) - AUC_MUSE(retrain)) / AUC_MUSE(retrain) x 100 is near -100 (under-unlearning);
positive means over-unlearning. `mia.privacy_leakage` is this formula on `membership_auc` AUCs (it flips them the
same way, as open-unlearning `src/evals/metrics/privacy.py::privleak` does) as a fraction: `muse_privleak` is it
x 100. Without a retrain model MUSE uses its published retrain AUC (`constants.py` AUC_RETRAIN[corpus]
["forget_holdout_Min-40%"]: News 0.4772, Books 0.5393; `MUSE_RETRAIN_AUC`); open-unlearning's fallback is 0.5
(`configs/eval/muse_metrics/privleak.yaml`: `ref_value: 0.5`). (MUSE's `eval.py` indexes `AUC_RETRAIN[key]` without
the corpus, a KeyError as released; the constants are per corpus.)
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
from rouge_score import rouge_scorer

from orchestrator.data.muse import KNOWMEM_STOP
from orchestrator.data.schema import Probe
from orchestrator.evaluation import mia

logging.getLogger("absl").setLevel(logging.WARNING)  # rouge_score logs every call at INFO

MUSE_MIN_K = 0.4  # eval.py privleak_auc_key 'forget_holdout_Min-40%'
# AUC_MUSE of MUSE's retrain models, forget vs holdout, Min-40% (constants.py AUC_RETRAIN), MUSE's orientation.
MUSE_RETRAIN_AUC: dict[str, float] = {"news": 0.47719999999999996, "books": 0.5392999999999999}


@lru_cache(maxsize=2)
def _scorer(stemmer: bool) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer)


def rouge_l(generation: str, reference: str, *, stemmer: bool = False) -> tuple[float, float]:
    """(F1, recall) of ROUGE-L of `generation` against `reference`, MUSE's scorer (no stemmer) by default."""
    score = _scorer(stemmer).score(reference, generation)["rougeL"]
    return float(score.fmeasure), float(score.recall)


def mean_rouge_l_f1(generations: Sequence[str], references: Sequence[str], *, stemmer: bool = False) -> float:
    """MUSE's `mean_rougeL`: the mean over items of ROUGE-L F1, a fraction in [0, 1]; nan for no items."""
    if len(generations) != len(references):
        raise ValueError(f"{len(generations)} generations for {len(references)} references")
    if not generations:
        return float("nan")
    return float(np.mean([rouge_l(g, r, stemmer=stemmer)[0] for g, r in zip(generations, references)]))


def verbmem_score(continuations: Sequence[str], references: Sequence[str], *, stemmer: bool = False) -> float:
    """VerbMem: mean ROUGE-L F1 of the generated continuations against the (cut, see `verbmem_reference`) truths."""
    return mean_rouge_l_f1(continuations, references, stemmer=stemmer)


def knowmem_score(outputs: Sequence[str], answers: Sequence[str], *, stemmer: bool = False) -> float:
    """KnowMem: mean ROUGE-L F1 of the answers (cut at the stop strings, `cut_knowmem_output`) against the truths."""
    return mean_rouge_l_f1([cut_knowmem_output(o) for o in outputs], answers, stemmer=stemmer)


def cut_knowmem_output(text: str, stops: Sequence[str] = KNOWMEM_STOP) -> str:
    """MUSE's `get_prefix_before_words_occur`: the text before the first occurrence of any stop string."""
    for stop in stops:
        text = text.split(stop)[0]
    return text


def verbmem_reference(tokenizer: Any, ground_truth: str, max_new_tokens: int = 128) -> str:
    """The ground truth MUSE scores VerbMem against: its first `max_new_tokens` tokens, BOS included in the count
    (`tokenizer.encode(gt, add_special_tokens=True)[:max_new_tokens]`), decoded without special tokens."""
    ids = tokenizer.encode(ground_truth, add_special_tokens=True)[:max_new_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)


def truncate_verbmem_targets(probe: Probe, tokenizer: Any) -> Probe:
    """`probe` with every target cut as MUSE cuts VerbMem's ground truth (`verbmem_reference`), at the probe's
    `max_new_tokens` (128 for MUSE's VerbMem)."""
    limit = probe.max_new_tokens or 128
    items = tuple(replace(item, target=verbmem_reference(tokenizer, item.target, limit)) for item in probe.items)
    return replace(probe, items=items)


def min_k_score(token_logprobs: np.ndarray, k: float = MUSE_MIN_K) -> float:
    """Min-K% Prob of one text as MUSE computes it: minus the mean of its int(k n) lowest token log-probs
    (`metrics/privleak.py`); `mia.min_k_score` gives the same whenever int(k n) >= 1 and 1 token where it is 0
    (MUSE's is then nan)."""
    return mia.min_k_score(token_logprobs, k)


def muse_auc(forget_scores: np.ndarray, holdout_scores: np.ndarray) -> float:
    """MUSE's MIA AUC (`roc_curve(y, -score)`, forget labelled 0, holdout 1) of loss-like scores:
    P(score(forget) > score(holdout)) + ties / 2 = 1 - `mia.membership_auc`. Near 0 when the model knows its forget
    set; about 0.5 for a model that never saw it."""
    return mia.mann_whitney_auc(forget_scores, holdout_scores)


def muse_privleak(auc_unlearned: float, auc_retrain: float | None = None, corpus: str | None = None) -> float:
    """PrivLeak in percent from `mia.membership_auc` AUCs (the ones `EvalReport.mia_auc` holds).

    = 100 * `mia.privacy_leakage(auc_unlearned, auc_retrain)` = 100 (AUC_MUSE(u) - AUC_MUSE(r)) / AUC_MUSE(r),
    AUC_MUSE = 1 - AUC. Without `auc_retrain`, MUSE's published retrain AUC for `corpus` (`MUSE_RETRAIN_AUC`).
    """
    if auc_retrain is None:
        if corpus not in MUSE_RETRAIN_AUC:
            raise ValueError(f"muse_privleak: no auc_retrain and corpus {corpus!r} is not one of "
                             f"{', '.join(MUSE_RETRAIN_AUC)}")
        auc_retrain = 1.0 - MUSE_RETRAIN_AUC[corpus]
    return 100.0 * mia.privacy_leakage(auc_unlearned, auc_retrain)


def muse_privleak_from_muse_auc(auc_unlearned: float, auc_retrain: float) -> float:
    """PrivLeak in percent from AUCs in MUSE's own orientation (`muse_auc`, MUSE's tables): (u - r) / r x 100."""
    return float((auc_unlearned - auc_retrain) / (auc_retrain + 1e-10) * 100.0)


def muse_summary(
    probe_scores: Mapping[str, Any],
    auc_unlearned: float | None = None,
    auc_retrain: float | None = None,
    corpus: str | None = None,
) -> dict[str, float | None]:
    """MUSE's four headline numbers, as MUSE prints them (`eval.py`): verbmem_f, knowmem_f, knowmem_r (mean ROUGE-L
    F1 x 100) and privleak (percent).

    `probe_scores`: by probe name ("verbmem_forget", "knowmem_forget", "knowmem_retain"), a fraction in [0, 1], a
    `ProbeResult` or its dict (`EvalReport.probes`): the `score`. `auc_unlearned` / `auc_retrain`:
    `mia.membership_auc` of Min-40% on forget vs holdout of the evaluated and of the retrain model (`auc_retrain`
    None: MUSE's for `corpus`; `EvalReport.mia_auc["min_k"]`). A number whose inputs are missing is None.
    """

    def percent(name: str) -> float | None:
        value = probe_scores.get(name)
        value = value.get("score") if isinstance(value, Mapping) else getattr(value, "score", value)
        return None if value is None else 100.0 * float(value)

    privleak = None
    if auc_unlearned is not None and (auc_retrain is not None or corpus in MUSE_RETRAIN_AUC):
        privleak = muse_privleak(auc_unlearned, auc_retrain, corpus)
    return {
        "verbmem_f": percent("verbmem_forget"),
        "knowmem_f": percent("knowmem_forget"),
        "knowmem_r": percent("knowmem_retain"),
        "privleak": privleak,
    }
