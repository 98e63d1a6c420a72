"""The data types the rest of `methods/` is built on: a method's hyperparameters base, its profile, its registry entry.

This is the bottom of the package's imports (pydantic and the standard library, no torch, no other `methods`
module), so that every layer above can use these types without importing another in a circle:
`registry.py` stores `MethodSpec`s, `hyperparameters.py` subclasses `Hyperparameters`, `catalog.py` lists the
built-in methods and the rules that turn their hyperparameters into `MethodProfile`s, and `base.py` reads a built
method's flags from its profile.

A `MethodProfile` says which batch parts a method's loss reads, whether it needs the frozen reference model,
whether it runs under DeepSpeed, whether it refines the forget set between epochs, which optimizer it prescribes,
and what changes its memory (LoRA adapters, full-vocabulary targets, double backward). It is computed without
torch and without building the method, so the driver reads it once (`methods.profile(name, hparams)`) instead of
building probe methods; the built method reads its own flags from the same profile, so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import pydantic

PART_ORDER = ("forget", "retain", "alternate", "analogous")


class Hyperparameters(pydantic.BaseModel):
    """Base of every method's hyperparameters: unknown keys are an error, values are validated on build."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    def check_model(self, num_layers: int) -> None:
        """Raise ValueError, in one line, when these hyperparameters name a part the model does not have (RMU's
        layer). Called before any work with the depth from the model's config; the default asks nothing."""

    def trainable_patterns(self, num_layers: int) -> list[str] | None:
        """Regexes (searched in HF parameter names) of the only parameters the method updates, for a model of
        `num_layers` blocks (RMU's few MLP weights), so the memory planner counts their gradients and optimizer
        states alone; None (the default): every parameter trains."""
        return None


@dataclass(frozen=True)
class LoraAdapters:
    """LoRA adapters a method trains instead of the full weights (FILA)."""

    rank: int
    target_modules: tuple[str, ...] | None  # None: every Linear but the output head


@dataclass(frozen=True)
class MethodProfile:
    """The parts of a method the loop, the planner and the CLI act on; see the module docstring."""

    name: str
    parts: tuple[str, ...] = ("forget",)  # batch parts the loss reads, in PART_ORDER
    needs_reference: bool = False
    supports_deepspeed: bool = True
    refines_forget_set: bool = False  # `on_epoch_end` may shrink the forget set (ICU)
    optimizer: Literal["adamw", "sophia"] = "adamw"  # adamw: the loop's default; sophia: the method's SophiaG
    adapters: LoraAdapters | None = None
    full_vocab_part: str | None = None  # the part on which the loss builds full-vocabulary fp32 tensors per token
    double_backward: bool = False  # gradients of gradients (OFMU): their graphs stay alive through the step

    def __post_init__(self) -> None:
        if self.parts[:1] != ("forget",) or tuple(p for p in PART_ORDER if p in self.parts) != self.parts:
            raise ValueError(f"parts must start with 'forget' and follow {PART_ORDER}, got {self.parts}")
        if self.full_vocab_part is not None and self.full_vocab_part not in self.parts:
            raise ValueError(f"full_vocab_part {self.full_vocab_part!r} is not one of the parts {self.parts}")

    @property
    def uses_retain(self) -> bool:
        return "retain" in self.parts

    @property
    def uses_alternate(self) -> bool:
        return "alternate" in self.parts

    @property
    def uses_analogous(self) -> bool:
        return "analogous" in self.parts


def parts(*used: str | None) -> tuple[str, ...]:
    """("forget", *used) in PART_ORDER; None entries (a part switched off by a hyperparameter) are dropped."""
    return tuple(p for p in PART_ORDER if p == "forget" or p in used)


@dataclass(frozen=True)
class MethodSpec:
    """One registry entry: a method's name, hyperparameters, profile rule and torch implementation."""

    name: str
    hyperparameters: type[Hyperparameters]
    profile: Callable[[Hyperparameters], MethodProfile]  # receives validated hyperparameters
    implementation: str  # "module:Class", imported on build
