"""Stop unlearning once the data to keep has become measurably harder to predict: UnDIAL's stopping rule.

UnDIAL's authors train for up to 100 epochs and stop as soon as the perplexity of held text exceeds a multiple of
its value before unlearning (dong-river/LLM_unlearning, utils/ft_utils.py `EarlyStoppingCallback`; README's headline
command `--early_stop True --early_stop_criteria 1.03`): checked at every evaluation, only once a full epoch has run,
and the model at the check that trips the rule is the one kept (no roll-back). Their held text is general text
(wikitext); ours is the run's retain data (the kept books of a text corpus, the retained people of a QA task),
which every run has and which names what the user wants kept. The check is a teacher-forced forward pass over at most
`max_examples` retain rows; every worker scores the same rows, so that ZeRO-3's gathers stay in step and every rank
reaches the same decision (the workers' mean, one scalar all-reduce, rules out a rounding difference between them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import torch

from methods.numerics import forward_logits, token_logprobs
from orchestrator.data.tokenize import EncodedRow, collate

T = TypeVar("T")


def even_spread(items: Sequence[T], max_examples: int) -> list[T]:
    """At most `max_examples` of `items`, evenly spread and in order (the retain rows the rule scores)."""
    if len(items) <= max_examples:
        return list(items)
    stride = len(items) / max_examples
    return [items[int(i * stride)] for i in range(max_examples)]


@torch.no_grad()
def token_perplexity(model: torch.nn.Module, rows: list[EncodedRow], pad_token_id: int, batch_size: int,
                     device: torch.device) -> float:
    """exp(mean NLL over every labelled token of `rows`), as HF's `eval_loss` gives it (token-weighted)."""
    was_training = model.training
    model.eval()
    nll, tokens = 0.0, 0.0
    try:
        for start in range(0, len(rows), batch_size):
            part = {k: v.to(device) for k, v in collate(rows[start:start + batch_size], pad_token_id).items()}
            logprobs, mask = token_logprobs(forward_logits(model, part), part["labels"])
            nll -= float(logprobs.sum())
            tokens += float(mask.sum())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("the early-stop rows carry no labelled tokens")
    return math.exp(nll / tokens)


@dataclass
class PerplexityStop:
    """The rule's state over one run: the perplexity before unlearning, every check since, where it stopped."""

    rows: list[EncodedRow]
    pad_token_id: int
    perplexity_rise: float
    batch_size: int
    min_epochs: float = 1.0
    initial: float | None = None
    checks: list[dict[str, float]] = field(default_factory=list)
    stopped: dict[str, float] | None = None

    @classmethod
    def from_config(cls, early_stop: dict[str, Any], retain: list[EncodedRow], pad_token_id: int,
                    batch_size: int) -> "PerplexityStop":
        """`early_stop`: `EarlyStopConfig.model_dump()`; `retain`: the run's retain rows (at least one)."""
        if not retain:
            raise ValueError("train.early_stop needs retain data to measure, and this run has none")
        return cls(even_spread(retain, early_stop["max_examples"]), pad_token_id, early_stop["perplexity_rise"],
                   batch_size, early_stop["min_epochs"])

    def start(self, model: torch.nn.Module, device: torch.device, agree: Callable[[float], float] = float) -> None:
        """Measure the model before unlearning (kept across a resume: the restored state already has it).

        `agree`: turns this worker's figure into the one every worker uses (the workers' mean)."""
        if self.initial is None:
            self.initial = agree(token_perplexity(model, self.rows, self.pad_token_id, self.batch_size, device))

    def check(self, model: torch.nn.Module, device: torch.device, epoch: float, step: int,
              agree: Callable[[float], float] = float) -> bool:
        """Score the model now; True when the rule trips (the run should end with this model)."""
        if self.initial is None:
            raise RuntimeError("PerplexityStop.check before start")
        perplexity = agree(token_perplexity(model, self.rows, self.pad_token_id, self.batch_size, device))
        ratio = perplexity / self.initial
        self.checks.append({"epoch": round(epoch, 4), "step": step, "perplexity": perplexity, "ratio": ratio})
        if epoch >= self.min_epochs and ratio > self.perplexity_rise:
            self.stopped = {"epoch": round(epoch, 4), "step": step, "ratio": ratio}
            return True
        return False

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the rule (its rows are the job's, rebuilt on resume)."""
        return {"initial": self.initial, "checks": list(self.checks), "stopped": self.stopped}

    def restore(self, state: dict[str, Any]) -> None:
        self.initial, self.checks, self.stopped = state["initial"], list(state["checks"]), state["stopped"]

    def summary(self) -> dict[str, Any]:
        """For `summary.json`'s `train.early_stop`: the rule, its yardstick, every check, where it stopped."""
        return {"perplexity_rise": self.perplexity_rise, "min_epochs": self.min_epochs, "rows": len(self.rows),
                "initial_perplexity": self.initial, "checks": self.checks, "stopped": self.stopped}
