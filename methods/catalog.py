"""What the training loop and the memory plan need to know about a method, from its name and hyperparameters alone.

A `MethodProfile` says which batch parts a method's loss reads, whether it needs the frozen reference model,
whether it runs under DeepSpeed, whether it refines the forget set between epochs, which optimizer it prescribes,
and what changes its memory (LoRA adapters, full-vocabulary targets, double backward). It is computed without
torch and without building the method, so the driver reads it once (`methods.profile(name, hparams)`) instead of
building probe methods; the built method reads its own flags from the same profile, so the two cannot disagree.

`BUILTIN` lists every built-in method: its hyperparameters (`methods/hyperparameters.py`), the rule that turns them
into a profile, and where its torch implementation lives (imported only when the method is built).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from methods import hyperparameters as hp

PART_ORDER = ("forget", "retain", "alternate", "analogous")


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
    hyperparameters: type[hp.Hyperparameters]
    profile: Callable[[hp.Hyperparameters], MethodProfile]  # receives validated hyperparameters
    implementation: str  # "module:Class", imported on build


def _retain_if(alpha: float) -> str | None:
    return "retain" if alpha > 0 else None  # alpha 0 drops the retain term, so its batches are not loaded


def _graddiff(h: hp.GradDiffHyperparameters) -> MethodProfile:
    kl = h.alpha > 0 and h.retain_loss == "kl"
    return MethodProfile("graddiff", parts(_retain_if(h.alpha)), needs_reference=kl,
                         full_vocab_part="retain" if kl else None)


def _soul(h: hp.SOULHyperparameters) -> MethodProfile:
    from methods.registry import profile  # the inner objective's own rule, from this same table

    inner = profile(h.objective, h.objective_hparams)
    return MethodProfile(
        "soul", inner.parts, needs_reference=inner.needs_reference,
        # GNB reads p.grad outside the engine's step; ZeRO keeps gradients partitioned inside DeepSpeed instead.
        supports_deepspeed=inner.supports_deepspeed and h.hessian_estimator == "ema_grad2",
        optimizer="sophia", adapters=inner.adapters, full_vocab_part=inner.full_vocab_part,
        double_backward=inner.double_backward,
    )


def _ihl_fila(h: hp.IHLFILAHyperparameters) -> MethodProfile:
    targets = tuple(h.target_modules) if h.target_modules is not None else None
    return MethodProfile("ihl_fila", parts(_retain_if(h.alpha)), full_vocab_part="forget",
                         adapters=LoraAdapters(h.rank, targets))


BUILTIN: tuple[MethodSpec, ...] = (
    MethodSpec("ga", hp.GAHyperparameters, lambda h: MethodProfile("ga"), "methods.ga:GradientAscent"),
    MethodSpec("graddiff", hp.GradDiffHyperparameters, _graddiff, "methods.graddiff:GradDiff"),
    MethodSpec("kl", hp.KLHyperparameters,
               lambda h: MethodProfile("kl", parts("retain"), needs_reference=True, full_vocab_part="retain"),
               "methods.graddiff:GradAscentKL"),
    MethodSpec("npo", hp.NPOHyperparameters,
               lambda h: MethodProfile("npo", parts(_retain_if(h.alpha)), needs_reference=True), "methods.npo:NPO"),
    MethodSpec("simnpo", hp.SimNPOHyperparameters,
               lambda h: MethodProfile("simnpo", parts(_retain_if(h.alpha))), "methods.simnpo:SimNPO"),
    MethodSpec("idkpo", hp.IdkPOHyperparameters,
               lambda h: MethodProfile("idkpo", parts(_retain_if(h.alpha), "alternate"), needs_reference=True),
               "methods.idkpo:IdkPO"),
    MethodSpec("undial", hp.UnDIALHyperparameters,
               lambda h: MethodProfile("undial", needs_reference=True, full_vocab_part="forget"),
               "methods.undial:UnDIAL"),
    MethodSpec("ihl", hp.IHLHyperparameters,
               lambda h: MethodProfile("ihl", parts(_retain_if(h.alpha)), full_vocab_part="forget"),
               "methods.ihl:InvertedHingeLoss"),
    MethodSpec("ihl_fila", hp.IHLFILAHyperparameters, _ihl_fila, "methods.ihl:InvertedHingeLossFILA"),
    MethodSpec("soul", hp.SOULHyperparameters, _soul, "methods.soul:SOUL"),
    MethodSpec("icu", hp.ICUHyperparameters,
               lambda h: MethodProfile("icu", parts("analogous"), needs_reference=True, refines_forget_set=True,
                                       full_vocab_part="analogous"),
               "methods.icu:ICU"),
    # OFMU sets p.grad by hand and moves parameters in its inner loop; ZeRO partitions both.
    MethodSpec("ofmu", hp.OFMUHyperparameters,
               lambda h: MethodProfile("ofmu", parts("retain"), supports_deepspeed=False, double_backward=True),
               "methods.ofmu:OFMU"),
)
