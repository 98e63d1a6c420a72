"""The built-in methods: for each, its hyperparameters, the rule that turns them into a profile, and its torch code.

`BUILTIN` lists every built-in method: its hyperparameters (`methods/hyperparameters.py`), the rule that turns them
into a `MethodProfile` (what the training loop and the memory plan need to know about it; see `methods/spec.py`),
and where its torch implementation lives (imported only when the method is built). Importing this module registers
them (`methods/__init__.py` imports it, so every import of `methods` does); `registry.py` lists no method of its own.

The module sits above the registry, not below it: SOUL's profile is its inner objective's, looked up by name.
`LoraAdapters`, `MethodProfile`, `MethodSpec`, `PART_ORDER` and `parts` are defined in `methods/spec.py` and
re-exported here.
"""

from __future__ import annotations

from methods import hyperparameters as hp
from methods import registry
from methods.spec import PART_ORDER, LoraAdapters, MethodProfile, MethodSpec, parts  # noqa: F401  (re-exported)


def _retain_if(alpha: float) -> str | None:
    return "retain" if alpha > 0 else None  # alpha 0 drops the retain term, so its batches are not loaded


def _graddiff(h: hp.GradDiffHyperparameters) -> MethodProfile:
    kl = h.alpha > 0 and h.retain_loss == "kl"
    return MethodProfile("graddiff", parts(_retain_if(h.alpha)), needs_reference=kl,
                         full_vocab_part="retain" if kl else None)


def _soul(h: hp.SOULHyperparameters) -> MethodProfile:
    inner = registry.profile(h.objective, h.objective_hparams)  # the inner objective's own rule, from this table
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


def _rmu(h: hp.RMUHyperparameters) -> MethodProfile:
    # The frozen original model gives the retain activations the retain term holds; alpha 0 needs neither.
    return MethodProfile("rmu", parts(_retain_if(h.alpha)), needs_reference=h.alpha > 0)


def _pdu(h: hp.PDUHyperparameters) -> MethodProfile:
    # The dual variable may grow from 0, so a primal-dual run always reads the retain set.
    return MethodProfile("pdu", parts("retain" if h.primal_dual or h.alpha > 0 else None))


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
    MethodSpec("rmu", hp.RMUHyperparameters, _rmu, "methods.rmu:RMU"),
    MethodSpec("wga", hp.WGAHyperparameters,
               lambda h: MethodProfile("wga", parts(_retain_if(h.alpha))), "methods.wga:WGA"),
    MethodSpec("satimp", hp.SatImpHyperparameters,
               lambda h: MethodProfile("satimp", parts(_retain_if(h.alpha))), "methods.satimp:SatImp"),
    # The target distribution (the model's own, the true token removed) is a full-vocabulary fp32 tensor per token.
    MethodSpec("ceu", hp.CEUHyperparameters, lambda h: MethodProfile("ceu", full_vocab_part="forget"),
               "methods.ceu:CEU"),
    MethodSpec("pdu", hp.PDUHyperparameters, _pdu, "methods.pdu:PDU"),
)


def _register_builtins() -> None:
    for spec in BUILTIN:
        registry.register(spec)


_register_builtins()
