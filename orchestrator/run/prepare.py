"""Preparation shared by every run of the same problem: data, tokenizer, target and retain models, their reports.

All of it is content-addressed in the cache, so the first `unlearn run` pays for fine-tuning the tiny models and
every later run, sweep trial or stream request with the same data and model finds them ready.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.attacks.config import AttacksConfig, resolved
from orchestrator.cache import ArtifactCache, content_key
from orchestrator.config import DataConfig, EvalConfig, ExperimentConfig
from orchestrator.data.schema import UnlearningData
from orchestrator.data.tokenize import PromptTemplate
from orchestrator.evaluation import EvalReport, EvalSettings, evaluate_model
from orchestrator.observe.progress import Progress, Steps
from orchestrator.models.loading import load_tokenizer
from orchestrator.run.baselines import AttackModel, BaselineRunner, EvaluateModel

REPORT_FILE = "report.json"
ATTACKS_FILE = "attacks.json"
# Bumped when a cached report gains what later evaluations read from it (2: per-example NLL for the reference
# attack, gradient-norm AUCs, probes; 3: per-example forget ROUGE-L and probability, for recovery attacks).
REPORT_VERSION = 3


@dataclass(frozen=True)
class Prepared:
    """What every unlearning run of one problem starts from."""

    data: UnlearningData
    data_fingerprint: str
    template: PromptTemplate
    tokenizer_dir: str
    target_dir: str
    retain_dir: str | None
    target_report: EvalReport
    retain_report: EvalReport | None
    # The same attacks (`eval.attacks`) on the models around the unlearned one, once per problem: "retain_model" (every
    # attack: what it gives a model that never saw the forget set, relearning's control) and "target" (every attack
    # but relearning: how the model before unlearning answers under it). Name -> AttackResult dict.
    attack_baselines: dict[str, dict[str, dict[str, Any]]] | None = None


def load_data(cfg: DataConfig) -> UnlearningData:
    """Build or load the configured data set and check it is usable."""
    from orchestrator.data.splits import validate

    if cfg.source == "synthetic":
        from orchestrator.data.synthetic import make_synthetic_data

        data = make_synthetic_data(
            seed=cfg.synthetic.seed,
            n_people=cfg.synthetic.n_people,
            questions_per_person=cfg.synthetic.questions_per_person,
            forget_fraction=cfg.forget_fraction,
        )
    elif cfg.source == "tofu":
        from orchestrator.data.tofu import load_tofu

        data = load_tofu(forget_split=f"forget{round(cfg.forget_fraction * 100):02d}", path=cfg.tofu_path)
    elif cfg.source == "muse":
        from orchestrator.data.muse import load_muse

        m = cfg.muse
        data = load_muse(m.corpus, m.path, knowmem_icl=m.knowmem_icl, max_chars=m.max_chars,
                         retain_split=m.retain_split, holdout_source=m.holdout_source)
    elif cfg.source == "wmdp":
        from orchestrator.data.wmdp import load_wmdp

        w = cfg.wmdp
        data = load_wmdp(tuple(w.subsets), corpora_path=w.corpora_path, questions_path=w.questions_path,
                         mmlu_path=w.mmlu_path, mmlu_subjects=w.mmlu_subjects, bio_forget_file=w.bio_forget_file,
                         max_chars=w.max_chars, min_chars=w.min_chars, passages_per_document=w.passages_per_document,
                         max_documents=w.max_documents, holdout_fraction=w.holdout_fraction,
                         max_questions=w.max_questions, seed=w.seed, streaming=w.streaming)
    elif cfg.source == "hazard":
        from orchestrator.data.hazard import make_hazard_data

        h = cfg.hazard
        data = make_hazard_data(seed=h.seed, n_hazard_facts=h.n_hazard_facts, n_neighbour_facts=h.n_neighbour_facts,
                                n_holdout_facts=h.n_holdout_facts, facts_per_passage=h.facts_per_passage,
                                n_neighbour_subfields=h.n_neighbour_subfields, question_style=h.question_style)
    else:
        from orchestrator.data.text_corpus import load_text_corpus

        assert cfg.text is not None
        data = load_text_corpus(cfg.text.forget, cfg.text.retain, cfg.text.holdout, max_chars=cfg.text.max_chars)
    validate(data)
    return data


def fingerprint(data: UnlearningData) -> str:
    """Hash of every example of every split: two data sets with the same fingerprint are the same problem."""
    digest = hashlib.sha256()
    for split in ("forget", "retain", "neighbour", "holdout", "world"):
        for example in getattr(data, split):
            digest.update(json.dumps([split, example.id, example.question, example.answer,
                                      example.paraphrased_answer, list(example.perturbed_answers),
                                      example.idk_answer]).encode())
            if example.paraphrased_questions:  # evaluated (the rephrasing attack), never trained on
                digest.update(json.dumps(list(example.paraphrased_questions)).encode())
    for probe in data.probes:  # a benchmark's own questions: never trained on, but part of what is evaluated
        digest.update(json.dumps(["probe", probe.name, probe.kind, probe.role, probe.prefix, probe.max_new_tokens,
                                  list(probe.stop)]).encode())
        for item in probe.items:
            digest.update(json.dumps([item.id, item.prompt, item.target, list(item.choices), item.answer]).encode())
    return digest.hexdigest()[:16]


def eval_settings(cfg: EvalConfig, max_length: int) -> EvalSettings:
    return EvalSettings(max_examples=cfg.max_per_split, batch_size=cfg.batch_size,
                        max_new_tokens=cfg.max_new_tokens, max_length=max_length, gradient_mia=cfg.gradient_mia)


def evaluate_dir(model_dir: str | Path, tokenizer, data: UnlearningData, template: PromptTemplate,
                 settings: EvalSettings, retain_reference: EvalReport | None = None,
                 progress: Steps | None = None) -> EvalReport:
    from orchestrator.models.loading import load_causal_lm

    model = load_causal_lm(model_dir)
    return evaluate_model(model, tokenizer, data, template, settings, retain_reference=retain_reference,
                          progress=progress)


def prepare(config: ExperimentConfig, cache: ArtifactCache | None = None, progress: Progress = print,
            data: UnlearningData | None = None, workers: Any = None, cpus_per_worker: int | None = None) -> Prepared:
    """Data, tokenizer, target and retain models and their evaluations, from the cache where possible.

    The evaluations (and attacks) of the target and retain models run on a Ray worker of the run's shape, or on the
    caller's resident group `workers` when it is up (`orchestrator/run/baselines.py`): the driver loads no weights.
    `data`: `load_data(config.data)` when the caller already loaded it (to fail early, before Ray started).
    `cpus_per_worker`: the run's, when the caller has fixed it (else read from Ray's free CPUs before the first task)."""
    cache = cache or ArtifactCache(progress=progress)
    runner = BaselineRunner(config, workers, progress, cpus_per_worker)
    template = PromptTemplate()
    data = data if data is not None else load_data(config.data)
    data_fp = fingerprint(data)
    progress(f"data: {data.name}: forget {len(data.forget)}, retain {len(data.retain)}, "
             f"neighbour {len(data.neighbour)}, holdout {len(data.holdout)}, world {len(data.world)} examples")
    settings = eval_settings(config.eval, config.data.max_length)
    eval_spec = {"eval": config.eval.model_dump(exclude={"attacks"}), "data": data_fp, "max_length": config.data.max_length,
                 "report": REPORT_VERSION, "dtype": config.model.dtype}

    if config.model.name == "tiny":
        from orchestrator.models.tiny import build_tiny_models

        tiny = build_tiny_models(cache, config, data, data_fp, template, progress)
        tokenizer_dir, target_dir = tiny.tokenizer_dir, tiny.target_dir
        retain_dir: str | None = tiny.retain_dir
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        tokenizer_dir = config.model.tokenizer or config.model.name
        tokenizer = load_tokenizer(tokenizer_dir)
        target_dir, retain_dir = config.model.name, config.model.retain_model

    retain_report = None
    if retain_dir is not None:
        retain_report = _cached_report(cache, runner, "retain-report", EvaluateModel(
            str(retain_dir), str(tokenizer_dir), data, template, settings, runner.placement), eval_spec)
    target_report = _cached_report(cache, runner, "target-report", EvaluateModel(
        str(target_dir), str(tokenizer_dir), data, template, settings, runner.placement, retain_report), eval_spec)
    baselines = None
    attacks = attack_plan(config)
    if attacks is not None:
        baselines = {"target": _cached_attacks(cache, runner, "target", target_dir, str(tokenizer_dir), eval_spec,
                                               attacks, data, template, settings)}
        if retain_dir is not None and attacks.relearn.control:
            baselines["retain_model"] = _cached_attacks(cache, runner, "retain", retain_dir, str(tokenizer_dir),
                                                        eval_spec, attacks, data, template, settings)
    return Prepared(data, data_fp, template, str(tokenizer_dir), str(target_dir),
                    None if retain_dir is None else str(retain_dir), target_report, retain_report, baselines)


def with_default_attacks(config: ExperimentConfig) -> ExperimentConfig:
    """`config` with `eval.attacks` at its defaults (every attack) where it names none: what `sweep.attacks` and
    `stream.attack_every` attack with."""
    if config.eval.attacks is not None:
        return config
    return config.with_overrides(**{"eval.attacks": {}})


def attack_plan(config: ExperimentConfig) -> AttacksConfig | None:
    """`eval.attacks` with its relearning defaults filled in for this model and run; None without attacks."""
    if config.eval.attacks is None:
        return None
    return resolved(config.eval.attacks, config.model.finetune.lr if config.model.name == "tiny" else None,
                    config.train.batch_size)


def _cached_attacks(cache: ArtifactCache, runner: BaselineRunner, role: str, model_dir: str, tokenizer_dir: str,
                    eval_spec: dict, attacks: AttacksConfig, data: UnlearningData, template: PromptTemplate,
                    settings: EvalSettings) -> dict[str, dict[str, Any]]:
    """The attacks on the target (all but relearning, which would teach it what it knows) or the retain model (all),
    cached: what every run's attacks are read against."""
    run = [name for name in attacks.run if role != "target" or name != "relearn"]
    if not run:
        return {}
    plan = attacks.model_copy(update={"run": run})
    spec = {"model": _model_identity(model_dir), **eval_spec, "attacks": plan.model_dump()}

    def build(folder: Path) -> None:
        from orchestrator.evaluation.evaluate import subsample

        runner.progress(f"attacking the {role} model ({', '.join(run)}) on a Ray worker: what every run's attacks "
                        "are read against")
        forget = subsample(data.forget, settings.max_forget_examples, settings.seed)
        results = runner(AttackModel(str(model_dir), tokenizer_dir, data, tuple(forget), template, settings, plan,
                                     runner.placement))
        (folder / ATTACKS_FILE).write_text(json.dumps(results))

    folder, _ = cache.get_or_build(content_key(f"{role}-attacks", spec), build, spec)
    return json.loads((folder / ATTACKS_FILE).read_text())


def _cached_report(cache: ArtifactCache, runner: BaselineRunner, kind: str, task: EvaluateModel,
                   eval_spec: dict) -> EvalReport:
    reference = task.retain_reference
    spec = {"model": _model_identity(task.model_dir), **eval_spec,
            "reference": None if reference is None else reference.summary.get("forget_truth_ratio")}

    def build(folder: Path) -> None:
        runner.progress(f"evaluating the {kind.removesuffix('-report')} model on a Ray worker")
        (folder / REPORT_FILE).write_text(json.dumps(runner(task)))

    folder, _ = cache.get_or_build(content_key(kind, spec), build, spec)
    return EvalReport.from_dict(json.loads((folder / REPORT_FILE).read_text()))


def _model_identity(model_dir: str) -> str:
    """A model folder's content identity (its weight files' sizes and mtimes), or the hub id as given."""
    path = Path(model_dir)
    if not path.is_dir():
        return model_dir
    files = sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".bin", ".json"})
    return json.dumps([[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in files] + [str(path.resolve())])
