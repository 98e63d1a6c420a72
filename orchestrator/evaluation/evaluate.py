"""The one evaluation entry: `evaluate_model(model, tokenizer, data, template, settings) -> EvalReport`.

Per split (forget, retain, neighbour, holdout, world: those non-empty) it runs two teacher-forced scoring passes
(the answers, with per-token details; then paraphrases and perturbations together) and one greedy generation pass,
and derives every metric from those three. Across splits it adds the forget-vs-holdout membership-inference AUCs
(`membership.py`), TOFU's model utility and, given the report of the retain model (trained without the forget set)
as reference, TOFU's forget quality and MUSE's privacy leakage. A benchmark's own evaluation sets (MUSE's VerbMem
and KnowMem, WMDP's and MMLU's questions: `UnlearningData.probes`) are scored as the benchmark scores them
(`probes.py`) and appear in the summary as `probe_<name>`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from orchestrator.data.schema import Example, Probe, ProbeItem, UnlearningData
from orchestrator.data.tokenize import PromptTemplate
from orchestrator.evaluation import fluency, membership, memorisation, realism, tofu
from orchestrator.evaluation.generation import generate_answers
from orchestrator.evaluation.likelihood import score_alternatives, score_answers
from orchestrator.evaluation.sharding import ExampleShards, sharded
from orchestrator.evaluation.mia import attack_scores
from orchestrator.evaluation.probes import evaluate_probes
from orchestrator.evaluation.rouge import rouge_l
from orchestrator.observe.progress import figure
from orchestrator.observe.report import PROBE_PREFIX

if TYPE_CHECKING:
    from orchestrator.observe.progress import Steps

SPLITS = ("forget", "retain", "neighbour", "holdout", "world")
# The attack behind `summary["mia_auc"]` and `summary["privacy_leakage"]`: Min-K%++ is the strongest
# reference-free attack of the four (Zhang et al. 2024) and costs nothing extra here, since the vocabulary
# statistics come out of the same forward pass. MUSE's own PrivLeak uses Min-K%; every attack's AUC is kept in
# `EvalReport.mia_auc` for anyone who wants to compare.
SUMMARY_ATTACK = "min_k++"


@dataclass(frozen=True)
class EvalSettings:
    """How much to evaluate and how."""

    max_examples: int | None = 200
    """Cap per split other than forget (deterministic subsample by hashed example id); None: all."""
    max_forget_examples: int | None = None
    """Cap on the forget split; None (default): all of it, since forget quality needs the whole distribution."""
    batch_size: int = 32
    """Rows per forward / generate call."""
    max_new_tokens: int = 48
    """Greedy generation length cap."""
    max_length: int = 512
    """Token cap of a scored row (prompt + answer + EOS) and of a prompt."""
    mia_k: float = 0.4
    """k of min-k% and min-k%++ (open-unlearning's TOFU/MUSE configs use 0.4)."""
    seed: int = 0
    """Seed of the subsample."""
    synced_generation: bool = False
    """Keep every rank forwarding until all ranks' generations have ended (HF's `synced_gpus`): needed when the
    parameters are partitioned across ranks (ZeRO-3), where each forward is a collective."""
    gradient_mia: bool = True
    """Run the gradient-norm membership attack (one backward per forget and holdout example)."""

    def __post_init__(self) -> None:
        for name in ("max_examples", "max_forget_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"EvalSettings.{name}={value}: must be >= 1 or None")
        for name in ("batch_size", "max_new_tokens", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalSettings.{name}={getattr(self, name)}: must be >= 1")
        if not 0.0 < self.mia_k <= 1.0:
            raise ValueError(f"EvalSettings.mia_k={self.mia_k}: must be in (0, 1]")


@dataclass
class SplitMetrics:
    """Means over one split's (subsampled) examples; None where a metric does not apply."""

    count: int
    rouge_l: float  # ROUGE-L recall of the greedy answer (TOFU)
    rouge_l_f1: float
    probability: float  # mean P(a|q)^(1/|a|)
    probability_normalised: float | None  # among correct + perturbed options (TOFU's real-world form)
    truth_ratio: float | None  # forget: mean min(R, 1/R); other splits: mean max(0, 1 - R) (TOFU)
    mean_nll: float  # mean per-token NLL of the answer (the LOSS attack's statistic)
    extraction_strength: float
    memorisation_accuracy: float | None  # exact memorisation: argmax == label share under teacher forcing
    verbatim_memorisation: float | None  # MUSE VerbMem over kind="text" examples
    knowledge_memorisation: float | None  # MUSE KnowMem over kind="qa" examples
    fluency: float  # ROME n-gram entropy of the generations (bits)
    degenerate_fraction: float  # empty or single-repeated-token generations
    alt_mass_top10: float | None = None  # share of the non-target mass on the 10 likeliest alternatives (realism)


@dataclass
class EvalReport:
    """What `evaluate_model` found; `to_dict()` is plain JSON (no NaN: undefined values are None)."""

    splits: dict[str, SplitMetrics]
    forget_truth_ratios: list[float]  # per forget example (those with perturbed answers): forget-quality input
    mia_auc: dict[str, float]  # attack -> AUC, forget (members) vs holdout; empty without holdout
    privacy_leakage: dict[str, float]  # attack -> MUSE PrivLeak against the reference; empty without it
    summary: dict[str, float | None]
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)  # probe name -> its ProbeResult's fields
    example_nll: dict[str, dict[str, float]] = field(default_factory=dict)  # forget/holdout: id -> mean NLL
    # Per forget example: {"rouge_l", "probability"}: what recovery attacks compare against (orchestrator/attacks/).
    forget_examples: dict[str, dict[str, float]] = field(default_factory=dict)
    attack_results: list[dict[str, Any]] = field(default_factory=list)  # AttackResult dicts, when attacks ran
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds
    # Examples each worker ran the per-example passes on, in rank order (data-parallel evaluation; empty on one).
    examples_per_rank: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalReport":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["splits"] = {name: SplitMetrics(**m) for name, m in data["splits"].items()}
        return cls(**values)


def evaluate_model(
    model: torch.nn.Module,
    tokenizer,
    data: UnlearningData,
    template: PromptTemplate,
    settings: EvalSettings = EvalSettings(),
    retain_reference: EvalReport | None = None,
    progress: Steps | None = None,
    shards: ExampleShards | None = None,
) -> EvalReport:
    """Every metric of the project on one model. Pass the retain model's report for forget quality and PrivLeak.

    `shards`: this worker's place among workers evaluating the same model together (each holding all of it): the
    per-example passes are split among them and gathered (`sharding.py`), and every worker returns the same report.

    The model is put in eval mode and given back in the mode it came in. `progress` counts the examples of each of
    the three passes per split, and is closed with a one-line summary.
    """
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    timings: dict[str, float] = {}
    splits: dict[str, SplitMetrics] = {}
    truth_ratios: dict[str, np.ndarray] = {}
    attack: dict[str, dict[str, np.ndarray]] = {}
    chosen = {}
    for name in SPLITS:
        cap = settings.max_forget_examples if name == "forget" else settings.max_examples
        chosen[name] = subsample(getattr(data, name), cap, settings.seed)
    chosen = {name: examples for name, examples in chosen.items() if examples}
    forget_examples: dict[str, dict[str, float]] = {}
    probes = tuple(_subsample_probe(probe, settings.max_examples, settings.seed) for probe in data.probes)
    if progress is not None:
        progress.set_total(3 * sum(len(examples) for examples in chosen.values())
                           + sum(len(probe.items) for probe in probes))
    try:
        for name, examples in chosen.items():
            t0 = time.perf_counter()
            if progress is not None:
                progress.describe(name)
            splits[name], truth_ratios[name], attack[name], per_example = _evaluate_split(
                model, tokenizer, examples, template, settings, forget=name == "forget",
                passed=progress.advance if progress is not None else None, shards=shards,
            )
            if name == "forget":
                forget_examples = per_example
            timings[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        probe_results = {name: asdict(result) for name, result in evaluate_probes(
            model, tokenizer, probes, batch_size=settings.batch_size, max_length=settings.max_length,
            synced=settings.synced_generation).items()}
        if progress is not None:
            progress.advance(sum(len(probe.items) for probe in probes))
        timings["probes"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mia_auc = membership.membership_aucs(
            model, tokenizer, chosen, attack, template, settings.max_length, settings.gradient_mia,
            None if retain_reference is None else retain_reference.example_nll, shards)
        timings["membership"] = time.perf_counter() - t0
    finally:
        model.train(was_training)

    forget_ratios = truth_ratios.get("forget", np.zeros(0))
    forget_ratios = [float(r) for r in forget_ratios[np.isfinite(forget_ratios)]]
    leak: dict[str, float] = {}
    quality = None
    if retain_reference is not None:
        leak = membership.privacy_leakages(mia_auc, retain_reference.mia_auc)
        quality = tofu.forget_quality(np.array(forget_ratios), np.array(retain_reference.forget_truth_ratios))
    timings["total"] = time.perf_counter() - started
    summary = _summary(splits, mia_auc, leak, quality)
    summary.update({f"{PROBE_PREFIX}{name}": result["score"] for name, result in probe_results.items()})
    if progress is not None:
        progress.close(f"{len(chosen)} splits, {sum(map(len, chosen.values()))} examples in {timings['total']:.0f}s"
                       f" (forget ROUGE-L {figure(summary['forget_rouge_l'])}, "
                       f"model utility {figure(summary['model_utility'])})")
    report = EvalReport(splits, forget_ratios, mia_auc, leak, summary, settings=asdict(settings), timings=timings,
                        probes=probe_results, example_nll=membership.example_nll(chosen, attack),
                        forget_examples=forget_examples)
    return EvalReport.from_dict(report.to_dict())  # one canonical form: NaN -> None, numpy -> float


def subsample(examples: Sequence[Example], cap: int | None, seed: int = 0) -> tuple[Example, ...]:
    """Up to `cap` examples chosen by a hash of (seed, id), in their original order.

    Depends only on the ids, so adding examples to a split keeps earlier choices mostly in place, and the same data
    gives the same subsample on every machine (unlike `hash()`, which Python salts per process).
    """
    if cap is None or len(examples) <= cap:
        return tuple(examples)
    keyed = sorted(range(len(examples)), key=lambda i: hashlib.sha256(f"{seed}:{examples[i].id}".encode()).digest())
    return tuple(examples[i] for i in sorted(keyed[:cap]))


def _subsample_probe(probe: Probe, cap: int | None, seed: int) -> Probe:
    """The probe with at most `cap` of its items, chosen by hashed id as `subsample` chooses examples."""
    if cap is None or len(probe.items) <= cap:
        return probe
    keyed = sorted(range(len(probe.items)),
                   key=lambda i: hashlib.sha256(f"{seed}:{probe.items[i].id}".encode()).digest())
    items: tuple[ProbeItem, ...] = tuple(probe.items[i] for i in sorted(keyed[:cap]))
    return replace(probe, items=items)


def _evaluate_split(
    model: torch.nn.Module,
    tokenizer,
    examples: tuple[Example, ...],
    template: PromptTemplate,
    settings: EvalSettings,
    forget: bool,
    passed: Callable[[int], None] | None = None,
    shards: ExampleShards | None = None,
) -> tuple[SplitMetrics, np.ndarray, dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """One split's metrics, its per-example truth ratios, its per-example MIA scores, and per example id its
    ROUGE-L recall and probability.

    `passed(len(examples))` is called after each of the three passes (answers, alternatives, generation)."""
    passed = passed or (lambda n: None)
    common = dict(batch_size=settings.batch_size, max_length=settings.max_length)
    main = sharded(shards, lambda ex: score_answers(model, tokenizer, ex, template, details=True, **common),
                   [examples])
    passed(len(examples))
    # The truth ratio's denominator is the paraphrase where there is one (TOFU forget/retain) and the answer itself
    # otherwise (TOFU's real-world sets); its numerator the perturbed answers.
    alternatives = [
        ([ex.paraphrased_answer] if ex.paraphrased_answer else []) + list(ex.perturbed_answers) for ex in examples
    ]
    alt_scores = sharded(shards, lambda ex, alt: score_alternatives(model, tokenizer, ex, template, alt, **common),
                         [examples, alternatives])
    passed(len(examples))
    correct = main.mean_logprob.copy()
    perturbed = []
    for i, ex in enumerate(examples):
        offset = 1 if ex.paraphrased_answer else 0
        if offset:
            correct[i] = alt_scores[i][0]
        perturbed.append(alt_scores[i][offset:])
    ratios = tofu.truth_ratios(correct, perturbed)
    has_options = any(len(p) for p in perturbed)

    generations = sharded(shards, lambda ex: generate_answers(
        model, tokenizer, ex, template, max_new_tokens=settings.max_new_tokens,
        synced=settings.synced_generation, **common
    ), [examples])
    passed(len(examples))
    rouge = rouge_l(generations.texts, generations.references)
    kinds = [ex.kind for ex in examples]

    metrics = SplitMetrics(
        count=len(examples),
        rouge_l=float(np.mean([r.recall for r in rouge])),
        rouge_l_f1=float(np.mean([r.f1 for r in rouge])),
        probability=float(np.mean(tofu.probability(main.mean_logprob))),
        probability_normalised=(
            float(np.nanmean(tofu.normalised_probability(main.mean_logprob, perturbed))) if has_options else None
        ),
        truth_ratio=(
            (tofu.truth_ratio_closer_to_one(ratios) if forget else tofu.truth_ratio_true_better(ratios))
            if has_options
            else None
        ),
        mean_nll=float(-np.mean(main.mean_logprob)),
        extraction_strength=memorisation.mean_extraction_strength(main.token_correct),
        memorisation_accuracy=memorisation.mean_exact_memorisation(main.token_correct),
        verbatim_memorisation=memorisation.verbatim_memorisation(rouge, kinds),
        knowledge_memorisation=memorisation.knowledge_memorisation(rouge, kinds),
        fluency=fluency.mean_n_gram_entropy(generations.texts),
        degenerate_fraction=fluency.degenerate_fraction(generations.texts, generations.token_ids),
        alt_mass_top10=realism.alternative_mass_share(main.alt_top_mass, main.non_target_mass),
    )
    texts = [ex.answer for ex in examples]
    per_example = {ex.id: {"rouge_l": float(r.recall), "probability": float(p)}
                   for ex, r, p in zip(examples, rouge, tofu.probability(main.mean_logprob))}
    return metrics, ratios, attack_scores(main, texts, settings.mia_k), per_example


def _summary(
    splits: dict[str, SplitMetrics], mia_auc: dict[str, float], leak: dict[str, float], quality: float | None
) -> dict[str, float | None]:
    """The flat headline numbers; every key is always present (None when its split or reference is missing)."""

    def get(split: str, metric: str) -> float | None:
        return getattr(splits[split], metric) if split in splits else None

    utility_parts: list[float | None] = []
    if "retain" in splits:
        r = splits["retain"]
        utility_parts += [r.probability, r.rouge_l, r.truth_ratio]
    if "world" in splits:
        w = splits["world"]
        prob = w.probability_normalised if w.probability_normalised is not None else w.probability
        utility_parts += [prob, w.rouge_l, w.truth_ratio]
    parts = [p for p in utility_parts if p is not None]
    return {
        "forget_quality": quality,
        "model_utility": tofu.model_utility(parts) if parts else None,
        "forget_rouge_l": get("forget", "rouge_l"),
        "retain_rouge_l": get("retain", "rouge_l"),
        "neighbour_rouge_l": get("neighbour", "rouge_l"),
        "holdout_rouge_l": get("holdout", "rouge_l"),
        "world_rouge_l": get("world", "rouge_l"),
        "forget_probability": get("forget", "probability"),
        "retain_probability": get("retain", "probability"),
        "neighbour_probability": get("neighbour", "probability"),
        "forget_truth_ratio": get("forget", "truth_ratio"),
        "extraction_strength": get("forget", "extraction_strength"),
        "holdout_extraction_strength": get("holdout", "extraction_strength"),
        "memorisation_accuracy": get("forget", "memorisation_accuracy"),
        "verbatim_memorisation": get("forget", "verbatim_memorisation"),
        "retain_verbatim_memorisation": get("retain", "verbatim_memorisation"),
        "knowledge_memorisation": get("forget", "knowledge_memorisation"),
        "mia_auc": mia_auc.get(SUMMARY_ATTACK),
        "mia_auc_gradnorm": mia_auc.get("gradnorm_l2"),
        "mia_auc_reference": mia_auc.get("reference"),
        "privacy_leakage": leak.get(SUMMARY_ATTACK),
        "privacy_leakage_min_k": leak.get("min_k"),  # MUSE's PrivLeak (as a fraction; MUSE prints it x 100)
        "fluency": get("forget", "fluency"),
        "retain_fluency": get("retain", "fluency"),
        "degenerate_fraction": get("forget", "degenerate_fraction"),
        # The realism figure of the model itself: forget and retain answers, as the target met them.
        "alt_mass_top10": _mean_present(get("forget", "alt_mass_top10"), get("retain", "alt_mass_top10")),
    }


def _mean_present(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value
