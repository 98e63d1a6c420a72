"""Membership inference across splits: forget (members) against holdout (never trained), every attack we have.

- the four attacks of one scoring pass (`mia.ATTACKS`: loss, zlib, min-k%, min-k%++), from the split passes;
- the gradient-norm attack (`mia.GRADIENT_ATTACKS`, p = 1, 2, inf): one backward per example, on models whose
  parameters are whole on this process (a ZeRO-3 shard's gradient norm would mean nothing, so it is left out
  there, and the report says so in `EvalReport.settings`);
- the reference-model attack (`mia.REFERENCE_ATTACK`): this model's per-example NLL minus the retain model's, read
  from the retain model's own report (`EvalReport.example_nll`), so no second model is loaded.

MUSE's PrivLeak for each attack is its AUC relative to the retain model's AUC on the same attack.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from orchestrator.data.schema import Example
from orchestrator.data.tokenize import PromptTemplate
from orchestrator.evaluation import mia
from orchestrator.evaluation.gradient_mia import gradient_norm_scores
from orchestrator.evaluation.sharding import ExampleShards, sharded

# Splits whose per-example NLL the report keeps, for the reference attack of a later model against this one.
NLL_SPLITS = ("forget", "holdout")


def is_partitioned(model: torch.nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 holds only a shard of the parameters on this process."""
    return any(hasattr(p, "ds_numel") for p in model.parameters())


def example_nll(chosen: dict[str, Sequence[Example]], scores: dict[str, dict[str, np.ndarray]]
                ) -> dict[str, dict[str, float]]:
    """Per split of `NLL_SPLITS`, example id -> mean answer NLL (EOS included: the LOSS attack's score)."""
    return {split: {ex.id: float(s) for ex, s in zip(chosen[split], scores[split]["loss"])}
            for split in NLL_SPLITS if split in chosen}


def membership_aucs(
    model: torch.nn.Module,
    tokenizer,
    chosen: dict[str, Sequence[Example]],
    scores: dict[str, dict[str, np.ndarray]],
    template: PromptTemplate,
    max_length: int,
    gradient_attack: bool,
    reference_nll: dict[str, dict[str, float]] | None,
    shards: ExampleShards | None = None,
) -> dict[str, float]:
    """Attack -> AUC of forget against holdout; empty without both splits.

    `reference_nll`: the retain model's `example_nll`, for the reference attack (left out where it lacks an
    example). `gradient_attack`: run the gradient-norm attack (skipped on a ZeRO-3-partitioned model)."""
    if "forget" not in scores or "holdout" not in scores:
        return {}
    aucs = {a: mia.membership_auc(scores["forget"][a], scores["holdout"][a]) for a in mia.ATTACKS}
    if gradient_attack and not is_partitioned(model):
        norms = {split: sharded(shards, lambda ex: gradient_norm_scores(model, tokenizer, ex, template, max_length),
                                [chosen[split]])
                 for split in ("forget", "holdout")}
        aucs.update({a: mia.membership_auc(norms["forget"][a], norms["holdout"][a]) for a in mia.GRADIENT_ATTACKS})
    if reference_nll is not None:
        relative = {}
        for split in ("forget", "holdout"):
            known = reference_nll.get(split, {})
            if not all(ex.id in known for ex in chosen[split]):
                break
            relative[split] = mia.reference_scores(scores[split]["loss"],
                                                   np.array([known[ex.id] for ex in chosen[split]]))
        else:
            aucs[mia.REFERENCE_ATTACK] = mia.membership_auc(relative["forget"], relative["holdout"])
    return aucs


def privacy_leakages(aucs: dict[str, float], retain_aucs: dict[str, float | None]) -> dict[str, float]:
    """Attack -> MUSE PrivLeak of this model's AUC against the retain model's, for the attacks both have."""
    return {a: mia.privacy_leakage(aucs[a], retain_aucs[a])
            for a in aucs if retain_aucs.get(a) is not None}
