"""`eval.attacks`: which recovery attacks run after the evaluation, and how (orchestrator/attacks/)."""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

ATTACKS = ("relearn", "quantise", "probe")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RelearnConfig(_Section):
    """Fine-tune a copy of the unlearned model on part of what it forgot, then score what it was not shown."""

    fraction: float = Field(0.25, gt=0, lt=1, description="Share of the forget set the attack trains on (chosen by "
                            "hashed id); the rest, which it never sees, is what it is scored on.")
    data: Literal["forget", "neighbour", "retain"] = Field(
        "forget", description="What the attack trains on: the forget slice, or (benign relearning) as many "
        "neighbour or retain examples, which share the forget set's people, places and topics but not its facts.")
    epochs: int = Field(1, gt=0, description="Passes over the attack's training examples.")
    lr: float | None = Field(None, gt=0, description="AdamW peak lr; default: the tiny model's fine-tuning lr "
                             "(model.finetune.lr), else 1e-5 (TOFU's fine-tuning lr for 7B models).")
    batch_size: int | None = Field(None, gt=0, description="Examples per step; default: train.batch_size.")
    seed: int = Field(0, description="Seed of the slice and of the shuffling.")
    control: bool = Field(True, description="Attack the retain model the same way too (where there is one; once "
                          "per problem, cached): what relearning teaches a model that never knew the data is "
                          "generalisation, not recovery, and what the other attacks get from it is their floor.")


class QuantiseConfig(_Section):
    """Weight-only quantisation of every linear layer but the output head, then the evaluation again."""

    bits: list[Literal[4, 8]] = Field([8, 4], min_length=1, description="Bit widths, each its own attack.")
    group_size: int = Field(128, gt=0, description="Input weights sharing one scale and zero point (RTN, as the "
                            "quantisation paper's baseline); a row narrower than this is one group.")
    method: Literal["rtn", "nf4"] = Field(
        "rtn", description="rtn: round-to-nearest, asymmetric, group-wise (any device); nf4: bitsandbytes' NF4 "
        "(4 bits only; needs a GPU and bitsandbytes).")

    @pydantic.model_validator(mode="after")
    def _nf4_is_four_bits(self) -> "QuantiseConfig":
        if self.method == "nf4" and self.bits != [4]:
            raise ValueError(f"quantise.method nf4 is a 4-bit format: set bits: [4], got {self.bits}")
        return self


class ProbeConfig(_Section):
    """The forget questions put another way: rephrased, and after retained question/answer pairs."""

    rephrase: bool = Field(True, description="Ask each forget question in its other phrasings (the synthetic "
                           "data writes two per fact; TOFU's paraphrased_question where the data has it).")
    few_shot: int = Field(3, ge=0, description="Retained question/answer pairs put before each forget question "
                          "(0: no few-shot attack).")


class AttacksConfig(_Section):
    """Recovery attacks on the unlearned model, after its evaluation, on the workers (orchestrator/attacks/)."""

    run: list[Literal["relearn", "quantise", "probe"]] = Field(
        list(ATTACKS), min_length=1, description="The attacks to run: relearn, quantise, probe.")
    relearn: RelearnConfig = Field(default_factory=RelearnConfig)
    quantise: QuantiseConfig = Field(default_factory=QuantiseConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)

    @pydantic.model_validator(mode="after")
    def _no_repeats(self) -> "AttacksConfig":
        if len(set(self.run)) != len(self.run):
            raise ValueError(f"attacks.run names an attack twice: {self.run}")
        return self


def resolved(attacks: AttacksConfig, finetune_lr: float | None, batch_size: int) -> AttacksConfig:
    """`attacks` with the relearning lr and batch size its defaults name: the tiny model's fine-tuning lr
    (`finetune_lr`; None for a user's model: 1e-5) and the run's `batch_size`."""
    relearn = attacks.relearn
    return attacks.model_copy(update={"relearn": relearn.model_copy(update={
        "lr": relearn.lr if relearn.lr is not None else (finetune_lr if finetune_lr is not None else 1e-5),
        "batch_size": relearn.batch_size if relearn.batch_size is not None else batch_size})})
