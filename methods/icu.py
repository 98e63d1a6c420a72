"""ICU, Iterative Contrastive Unlearning: ascend on the forget set, learn its nearest retained neighbour, refine.

arXiv 2407.20271; code himalalps/ICU (`train_neo_meanwhile_update.py`, the script its README runs):
    L = -uw * NLL(forget) + lw * NLL(analogous) + kl * CE(p_original, p_current) on the analogous batch
with uw 1, lw 0.5, kl 1 (README: `--uw 1.0 --lw 0.5 --kl 1.0`), here `alpha` = lw and `beta` = kl. After each epoch a
forget sample whose greedy continuation no longer reproduces its true answer leaves the forget set (code: BERTScore-F1
< 0.3 or BLEU < 0.01), and training stops when memorisation accuracy and extraction likelihood on the forget set fall
below those of data the model never saw (code: `--acc 0.5994 --el 0.0499`, constants measured that way).

The refinement metrics (BLEU, the BERTScore substitute, memorisation accuracy, extraction likelihood) live in
`methods/icu_metrics.py`.
"""

from __future__ import annotations

import torch

from methods.base import Batch, ForgetSample, ReferenceValue, UnlearningMethod, as_float_logs, reference_log_softmax
from methods.hyperparameters import ICUHyperparameters
from methods.icu_metrics import (
    extraction_likelihood,
    greedy_continuations,
    memorisation_accuracy,
    rouge_l_f1,
    sentence_bleu,
    token_f1,
)
from methods.numerics import (
    forward_logits,
    labelled_rows,
    labelled_token_mean,
    soft_cross_entropy,
    token_denominator,
    token_mean_nll,
)


class ICU(UnlearningMethod):
    """-NLL(forget) + alpha * NLL(analogous) + beta * CE(p_original || p) on analogous; epoch-end refinement."""

    name = "icu"
    Hyperparameters = ICUHyperparameters
    ORIGINAL = reference_log_softmax("analogous")
    keeps_reference = True  # the holdout's never-seen level is measured on the original model (`_should_stop`)

    @property
    def reference_values(self) -> tuple[ReferenceValue, ...]:
        return (self.ORIGINAL,)

    def __init__(self, hparams: ICUHyperparameters, reference: torch.nn.Module | None = None) -> None:
        super().__init__(hparams, reference)
        self._holdout_baseline: tuple[float, float] | None = None
        self.last_refinement: dict[str, float] = {}

    # --- the loss ---------------------------------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        forget, analogous = batch["forget"], batch["analogous"]
        forget_nll = token_mean_nll(forward_logits(model, forget), forget["labels"], token_denominator(forget))
        analogous_logits = forward_logits(model, analogous)
        analogous_tokens = token_denominator(analogous)
        analogous_nll = token_mean_nll(analogous_logits, analogous["labels"], analogous_tokens)
        rows, _ = labelled_rows(analogous_logits, analogous["labels"])
        log_p_original = self.reference_rows(self.ORIGINAL, analogous)
        # ICU code: kl_loss = -(prob_p * log(prob_q + 1e-12)).sum(-1).mean(), p = original model (precomputed),
        # q = current. The code averages over every position of the padded sequence; we average over the labelled
        # answer tokens (cached rows exist only there), like every token mean in methods/. CE = KL + H(p_original):
        # same gradient as KL(p_original || p_current). p_original is renormalised after its float16 cache.
        cross_entropy = labelled_token_mean(soft_cross_entropy(rows, log_p_original), analogous_tokens)
        hp = self.hparams
        loss = -forget_nll + hp.alpha * analogous_nll + hp.beta * cross_entropy  # code: -uw*unlearn + lw*learn + kl*kl
        return loss, as_float_logs(
            forget_nll=forget_nll, analogous_nll=analogous_nll, analogous_ce_original=cross_entropy
        )

    # --- iterative refinement -----------------------------------------------------------------------------
    def on_epoch_end(
        self, model: torch.nn.Module, forget: list[ForgetSample], holdout: list[ForgetSample]
    ) -> set[int] | None:
        """Indices of the forget samples the model still reproduces; empty when the stop rule fires.

        A sample stays while its greedy continuation (max_new_tokens = answer length) keeps BLEU >= bleu_threshold
        and similarity >= similarity_threshold to the true answer (ICU `val_score`: dropped when F1 < f1 or
        BLEU < bleu). ICU checks its stop rule (`val`: acc < --acc and el < --el) on the whole forget set; the loop
        here hands us the samples still kept, so the rule is checked on those.
        """
        hp = self.hparams
        if not forget:
            return set()
        continuations = greedy_continuations(
            model, [s.prompt_ids for s in forget], [len(s.answer_ids) for s in forget], hp.generation_batch_size
        )
        similarity = token_f1 if hp.similarity == "token_f1" else rouge_l_f1
        kept: set[int] = set()
        bleus, sims = [], []
        for sample, continuation in zip(forget, continuations):
            candidate, reference = continuation.tolist(), sample.answer_ids.tolist()
            bleu, sim = sentence_bleu(candidate, reference), similarity(candidate, reference)
            bleus.append(bleu)
            sims.append(sim)
            if bleu >= hp.bleu_threshold and sim >= hp.similarity_threshold:
                kept.add(sample.index)
        self.last_refinement = {
            "kept": float(len(kept)),
            "bleu": sum(bleus) / len(bleus),
            "similarity": sum(sims) / len(sims),
        }
        if hp.stop_on_holdout and self._should_stop(model, forget, holdout):
            return set()
        return kept

    def _should_stop(self, model: torch.nn.Module, forget: list[ForgetSample], holdout: list[ForgetSample]) -> bool:
        """ICU `val`: stop when MA(forget) and EL(forget) are at or below the never-seen level.

        "At or below" rather than ICU's strict "<" so that a zero EL on unseen data (common for short answers) can
        be matched. The never-seen level is the *original* model's MA/EL on the holdout (ICU's --acc/--el constants
        were measured once, before unlearning), computed once and kept; fixed thresholds override it.
        """
        hp = self.hparams
        n, batch = hp.extraction_ngram, hp.generation_batch_size
        ma_threshold, el_threshold = hp.memorisation_threshold, hp.extraction_threshold
        if ma_threshold is None or el_threshold is None:
            if not holdout:
                return False
            if self._holdout_baseline is None:
                original = self.reference if self.reference is not None else model
                self._holdout_baseline = (
                    memorisation_accuracy(original, holdout, batch),
                    extraction_likelihood(original, holdout, n, batch),
                )
            ma_threshold = self._holdout_baseline[0] if ma_threshold is None else ma_threshold
            el_threshold = self._holdout_baseline[1] if el_threshold is None else el_threshold
        ma_forget = memorisation_accuracy(model, forget, batch)
        el_forget = extraction_likelihood(model, forget, n, batch)
        self.last_refinement.update(
            memorisation_accuracy=ma_forget,
            extraction_likelihood=el_forget,
            memorisation_threshold=ma_threshold,
            extraction_threshold=el_threshold,
        )
        return ma_forget <= ma_threshold and el_forget <= el_threshold
