"""The embedded tiny models: a tokenizer, a pretrained base, and the target and retain models fine-tuned from it.

The stages a real unlearning benchmark's models went through, in miniature and cached by content:
1. tokenizer and pretrained checkpoint: trained on the general corpus of `orchestrator/data/pretraining.py`, which
   depends on `model.pretrain` alone, so every task (each forget fraction, the synthetic people, a text corpus)
   starts from the same checkpoint, as every TOFU model starts from the same Llama-2-chat;
2. the target: fine-tuned from it on everything the task trains on, keyed by the content of those examples (not
   by the split), so the forget01/05/10 tasks share one target, as TOFU's do;
3. the retain model: the same from the retain data alone (the forget-quality reference).

QA tasks fine-tune for a fixed number of epochs, as TOFU does. Text corpora fine-tune until the model recites
them: the stop rule checks verbatim memorisation (greedy continuation of each probed passage's first half,
ROUGE-L recall) every few epochs and stops at the threshold or the cap. With `model.pretrain: null` the models
start from random weights and the tokenizer is trained on the task's own data (the foundation's behaviour).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from orchestrator.cache import ArtifactCache, content_key
from orchestrator.config import ExperimentConfig, PretrainConfig
from orchestrator.data.schema import Example, UnlearningData
from orchestrator.data.tokenize import EncodedRow, PromptTemplate, encode
from orchestrator.observe.progress import Progress

PROBE_PASSAGES = 32  # passages the text stop rule checks (a deterministic subsample)
STATE_FILE = "finetune_state.json"


@dataclass(frozen=True)
class TinyModels:
    tokenizer_dir: str
    pretrained_dir: str | None
    target_dir: str
    retain_dir: str


def build_tiny_models(cache: ArtifactCache, config: ExperimentConfig, data: UnlearningData, data_fp: str,
                      template: PromptTemplate, progress: Progress) -> TinyModels:
    """Tokenizer, pretrained base (unless `model.pretrain` is null), target and retain models, from the cache."""
    from orchestrator.models.loading import load_tokenizer

    pretrain = config.model.pretrain
    tokenizer_dir = _tokenizer(cache, config, data, data_fp, template, progress)
    tokenizer = load_tokenizer(tokenizer_dir)
    pretrained = None if pretrain is None else _pretrained(cache, config, pretrain, tokenizer, tokenizer_dir, template,
                                                           progress)
    start = pretrained or f"random-init/{Path(tokenizer_dir).name}"
    target = _finetuned(cache, "target", data.training_examples(), data.forget, tokenizer, start, template, config,
                        progress)
    retain_probe = _probe(data.retain)
    retain = _finetuned(cache, "retain", data.retain_training_examples(), retain_probe, tokenizer, start, template,
                        config, progress)
    return TinyModels(tokenizer_dir, pretrained, target, retain)


@functools.lru_cache(maxsize=2)
def _corpus(spec: PretrainConfig, template: PromptTemplate) -> tuple[str, ...]:
    from orchestrator.data.pretraining import pretraining_documents

    return tuple(pretraining_documents(spec.seed, spec.n_people, spec.n_stories, template))


def _corpus_spec(pretrain: PretrainConfig, template: PromptTemplate) -> dict:
    from orchestrator.data.pretraining import CORPUS_VERSION

    return {"version": CORPUS_VERSION, "seed": pretrain.seed, "n_people": pretrain.n_people,
            "n_stories": pretrain.n_stories, "template": template.__dict__}


def _tokenizer(cache: ArtifactCache, config: ExperimentConfig, data: UnlearningData, data_fp: str,
               template: PromptTemplate, progress: Progress) -> str:
    from orchestrator.data.tokenizer import corpus_texts, train_tokenizer

    vocab = config.model.tiny.vocab_size
    pretrain = config.model.pretrain
    if pretrain is None:
        spec: dict = {"data": data_fp, "vocab_size": vocab, "template": template.__dict__}
        texts: Callable[[], Sequence[str]] = lambda: corpus_texts(data, template)
        what = "the task's data"
    else:
        spec = {"pretraining_corpus": _corpus_spec(pretrain, template), "vocab_size": vocab}
        texts = lambda: _corpus(pretrain, template)
        what = "the pretraining corpus"

    def build(folder: Path) -> None:
        progress(f"training a {vocab}-token BPE tokenizer on {what}")
        train_tokenizer(texts(), vocab_size=vocab).save_pretrained(folder)

    folder, _ = cache.get_or_build(content_key("tokenizer", spec), build, spec)
    return str(folder)


def _new_model(config: ExperimentConfig, tokenizer, seed: int):
    from orchestrator.models.loading import tiny_llama

    tiny = config.model.tiny
    return tiny_llama(len(tokenizer), seed=seed, hidden_size=tiny.hidden_size, num_layers=tiny.num_layers,
                      num_heads=tiny.num_heads, intermediate_size=tiny.intermediate_size,
                      max_positions=max(256, config.data.max_length), pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def packed_blocks(documents: Sequence[str], tokenizer, block_size: int) -> list[EncodedRow]:
    """Documents as `<s> text </s>`, concatenated and cut into full blocks, every token a label (LM pretraining)."""
    ids: list[int] = []
    for document in documents:
        ids += [tokenizer.bos_token_id, *tokenizer.encode(document, add_special_tokens=False), tokenizer.eos_token_id]
    blocks = [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]
    if not blocks:
        raise ValueError(f"the pretraining corpus has {len(ids)} tokens, fewer than one block of {block_size}")
    return [EncodedRow(input_ids=b, labels=b, index=i) for i, b in enumerate(blocks)]


def _pretrained(cache: ArtifactCache, config: ExperimentConfig, pretrain: PretrainConfig, tokenizer,
                tokenizer_dir: str, template: PromptTemplate, progress: Progress) -> str:
    from orchestrator.models.finetune import finetune

    seed = config.model.finetune.seed
    spec = {"corpus": _corpus_spec(pretrain, template), "training": pretrain.model_dump(),
            "tokenizer": Path(tokenizer_dir).name, "tiny": config.model.tiny.model_dump(), "init_seed": seed,
            "max_positions": max(256, config.data.max_length)}

    def build(folder: Path) -> None:
        rows = packed_blocks(_corpus(pretrain, template), tokenizer, pretrain.block_size)
        progress(f"pretraining the tiny model on {len(rows) * pretrain.block_size:,} tokens of general text "
                 f"({pretrain.epochs} epochs; cached and shared by every task)")
        model = _new_model(config, tokenizer, seed)
        with torch.random.fork_rng():
            finetune(model, rows, tokenizer.pad_token_id, pretrain.epochs, pretrain.lr, pretrain.batch_size,
                     seed=seed, progress=progress, label="pretraining")
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    folder, cached = cache.get_or_build(content_key("tiny-pretrained", spec), build, spec)
    if cached:
        progress(f"pretrained model: cached at {folder}")
    return str(folder)


def examples_digest(examples: Sequence[Example]) -> str:
    """Hash of the examples' content, independent of their order (the split they came from does not matter)."""
    digest = hashlib.sha256()
    for e in sorted(examples, key=lambda e: e.id):
        digest.update(json.dumps([e.id, e.kind, e.question, e.answer]).encode())
    return digest.hexdigest()[:16]


def _probe(examples: Sequence[Example]) -> tuple[Example, ...]:
    from orchestrator.evaluation.evaluate import subsample

    return subsample(tuple(examples), PROBE_PASSAGES)  # `_finetuned` keeps the text passages among them


def _finetuned(cache: ArtifactCache, role: str, examples: Sequence[Example], probe: Sequence[Example], tokenizer,
               start: str, template: PromptTemplate, config: ExperimentConfig, progress: Progress) -> str:
    """Fine-tune from `start` (a pretrained folder, or "random-init/..."); text data use the memorisation rule."""
    from orchestrator.models.finetune import finetune
    from orchestrator.models.loading import load_causal_lm

    ft = config.model.finetune
    text_probe = tuple(e for e in probe if e.kind == "text")
    rule = {"memorise_rouge_l": ft.memorise_rouge_l, "max_epochs": ft.max_epochs, "check_every": ft.check_every,
            "probe": examples_digest(text_probe), "max_new_tokens": config.eval.max_new_tokens} if text_probe else None
    spec = {"role": role, "start": Path(start).name if not start.startswith("random-init") else start,
            "examples": examples_digest(examples), "finetune": ft.model_dump(include={"lr", "batch_size", "seed",
            "label_smoothing"} | ({"epochs"} if rule is None else set())), "stop_rule": rule,
            "tiny": config.model.tiny.model_dump(), "max_length": config.data.max_length}

    def build(folder: Path) -> None:
        ordered = sorted(examples, key=lambda e: e.id)  # the split's order must not change the model
        rows = [encode(tokenizer, e, i, template, config.data.max_length) for i, e in enumerate(ordered)]
        model = _new_model(config, tokenizer, ft.seed) if start.startswith("random-init") else load_causal_lm(start)
        stop, state = None, {"epochs": ft.epochs}
        if rule is not None:
            stop = _memorisation_rule(model, tokenizer, text_probe, template, config, progress, state)
        epochs = ft.epochs if rule is None else ft.max_epochs
        progress(f"fine-tuning the tiny {role} model on {len(rows)} examples "
                 + (f"({epochs} epochs)" if rule is None else
                    f"(until verbatim memorisation >= {ft.memorise_rouge_l}, at most {epochs} epochs)"))
        with torch.random.fork_rng():
            losses = finetune(model, rows, tokenizer.pad_token_id, epochs, ft.lr, ft.batch_size, seed=ft.seed,
                              label_smoothing=ft.label_smoothing, progress=progress, label=f"{role} model",
                              should_stop=stop)
        state["epochs"] = len(losses)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        (folder / STATE_FILE).write_text(json.dumps({**state, "final_loss": losses[-1]}, indent=2))

    folder, cached = cache.get_or_build(content_key(f"tiny-{role}", spec), build, spec)
    if cached:
        progress(f"{role} model: cached at {folder}")
    return str(folder)


def _memorisation_rule(model, tokenizer, probe: Sequence[Example], template: PromptTemplate,
                       config: ExperimentConfig, progress: Progress, state: dict) -> Callable[[int], bool]:
    """`should_stop(epochs_done)`: every `check_every` epochs, stop once the probe passages are recited."""
    from orchestrator.evaluation.generation import generate_answers
    from orchestrator.evaluation.rouge import rouge_l

    ft = config.model.finetune

    def should_stop(epochs_done: int) -> bool:
        if epochs_done % ft.check_every:
            return False
        was_training = model.training
        model.eval()
        generations = generate_answers(model, tokenizer, probe, template, max_new_tokens=config.eval.max_new_tokens,
                                       batch_size=config.eval.batch_size, max_length=config.data.max_length)
        model.train(was_training)
        score = float(sum(r.recall for r in rouge_l(generations.texts, generations.references)) / len(probe))
        state["verbatim_memorisation"] = round(score, 4)
        progress(f"  epoch {epochs_done}: verbatim memorisation {score:.3f} (stop at {ft.memorise_rouge_l})")
        return score >= ft.memorise_rouge_l

    return should_stop
