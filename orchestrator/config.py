"""Experiment configuration: typed, validated when loaded, with one help text per field.

An experiment YAML maps one to one onto `ExperimentConfig`. Every error names the key, the value and what is
allowed, in one line, before anything expensive starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

import methods
from orchestrator.attacks.config import AttacksConfig
from orchestrator.data.config import MUSE_MODELS, MUSE_TOKENIZER, DataConfig  # the data section lives beside the data sources
from orchestrator.errors import ConfigError  # lives below the sections that raise it; importable from here too
from orchestrator.stream.config import StreamConfig
from orchestrator.sweep.config import SweepConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyModelConfig(_Section):
    """Shape of the embedded tiny Llama-architecture model."""

    hidden_size: int = Field(128, gt=0, description="Hidden width.")
    num_layers: int = Field(4, gt=0, description="Transformer blocks.")
    num_heads: int = Field(4, gt=0, description="Attention heads (must divide hidden_size).")
    intermediate_size: int = Field(256, gt=0, description="MLP width.")
    vocab_size: int = Field(1024, ge=260, description="Size of the locally trained BPE vocabulary.")

    @pydantic.model_validator(mode="after")
    def _heads_divide(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        return self


class PretrainConfig(_Section):
    """The tiny model's pretraining: general text it reads before any task (orchestrator/data/pretraining.py).

    The corpus depends on these settings alone, so one pretrained checkpoint (and its tokenizer) serves every task.
    """

    seed: int = Field(1, description="Corpus seed (people, phrasings, stories).")
    n_people: int = Field(1500, ge=1, description="Fictitious people of the corpus (none of them a task's).")
    n_stories: int = Field(60, ge=0, description="Short stories in the style of the fictitious books.")
    epochs: int = Field(3, gt=0, description="Passes over the corpus.")
    lr: float = Field(2e-3, gt=0, description="Peak AdamW learning rate (linear decay after 5% warm-up).")
    batch_size: int = Field(32, gt=0, description="Blocks per step.")
    block_size: int = Field(128, ge=16, description="Tokens per training block (documents are packed).")


class FinetuneConfig(_Section):
    """How the tiny target and retain models are fine-tuned (from the pretrained checkpoint) on the task's data."""

    epochs: int = Field(20, gt=0, description="Passes over the training data (QA tasks).")
    lr: float = Field(2e-3, gt=0, description="Peak AdamW learning rate (linear decay after 5% warm-up).")
    batch_size: int = Field(32, gt=0, description="Examples per step.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Label smoothing of the fine-tuning loss. Off by default: it spreads mass "
        "evenly over the vocabulary, which no real fine-tuned model does (see alt_mass_top10 in the evaluation).")
    seed: int = Field(0, description="Initialisation and shuffling seed.")
    memorise_rouge_l: float = Field(
        0.8, gt=0, le=1, description="Text corpora: train until the verbatim memorisation (ROUGE-L of the greedy "
        "continuation of each passage's first half) of the probed passages reaches this.")
    max_epochs: int = Field(200, gt=0, description="Text corpora: cap on the epochs of that stop rule.")
    check_every: int = Field(10, gt=0, description="Text corpora: epochs between two memorisation checks.")


class ModelConfig(_Section):
    """The model to unlearn from."""

    name: str = Field(
        "tiny",
        description="'tiny': the embedded tiny Llama fine-tuned here on the data; otherwise a HF hub id or local "
        "folder of an already fine-tuned target model (e.g. a TOFU-finetuned Llama-2-7b).",
    )
    retain_model: str | None = Field(
        None,
        description="HF id or folder of a model fine-tuned on the retain data only (the forget-quality reference). "
        "Trained here for 'tiny'; without it, forget quality and privacy leakage are not computed.",
    )
    tokenizer: str | None = Field(None, description="Tokenizer id/folder; defaults to the model's own.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype for training.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Shape of the tiny model.")
    pretrain: PretrainConfig | None = Field(
        default_factory=PretrainConfig, description="Pretraining of the tiny model before fine-tuning; null: "
        "fine-tune from random weights with a tokenizer trained on the task's data.")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="Tiny target/retain fine-tuning.")


class MethodConfig(_Section):
    """Which unlearning method, with which hyperparameters (paper defaults for those not given)."""

    name: str = Field("npo", description="A registered method; `unlearn methods` lists them.")
    hparams: dict[str, Any] = Field(default_factory=dict, description="Method hyperparameters.")

    @pydantic.model_validator(mode="after")
    def _method_exists(self) -> "MethodConfig":
        methods.validate_hyperparameters(self.name, self.hparams)
        return self


class LoraConfig(_Section):
    rank: int = Field(8, gt=0, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (scaling = alpha / rank).")
    target_modules: list[str] | str = Field("all-linear", description="Modules to adapt.")


class EarlyStopConfig(_Section):
    """UnDIAL's stopping rule (orchestrator/worker/early_stop.py): end the run once the retain data's perplexity exceeds
    `perplexity_rise` times its value before unlearning, keeping the model at that check."""

    perplexity_rise: float = Field(1.03, gt=1, description="Allowed rise of the retain perplexity (the authors' 1.03).")
    every_steps: int | None = Field(None, gt=0, description="Check every N steps; default: at the end of each epoch.")
    min_epochs: float = Field(1.0, ge=0, description="No stop before this many epochs (the authors: one).")
    max_examples: int = Field(64, gt=0, description="Retain rows scored at each check (an even spread of them).")


class TrainConfig(_Section):
    """The unlearning run itself: optimisation and how it is spread over Ray Train workers."""

    epochs: int | None = Field(
        None, gt=0, description="Passes over the forget set; default: the method's recipe (orchestrator/recipes.py)."
    )
    lr: float | None = Field(None, gt=0, description="Peak learning rate; default: the method's recipe.")
    early_stop: EarlyStopConfig | bool | None = Field(
        None, description="Stop once the retain data's perplexity has risen past a bound (EarlyStopConfig); "
        "default: the method's recipe (UnDIAL's is on); false: off; true: the rule's defaults.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps for linear warm-up.")
    batch_size: int = Field(8, gt=0, description="Forget examples per step per worker (retain batches match).")
    group_by_length: bool = Field(
        False, description="Batch forget rows of similar length together (HF's LengthGroupedSampler: each shuffled "
        "megabatch of 50 steps' rows sorted by length, its steps shuffled; orchestrator/worker/batching.py): less "
        "padding, so fewer wasted positions per step; retain rows stay random draws.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each block's activations in backward (HF gradient checkpointing, "
        "non-reentrant): about one extra forward per step in exchange for keeping only the blocks' inputs, which "
        "`unlearn plan` counts (orchestrator/worker/memory.py).")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null disables.")
    seed: int = Field(0, description="Shuffling seed.")
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters (peft) instead of all weights.")
    workers: int = Field(1, gt=0, description="Ray Train workers.")
    cpus_per_worker: int | None = Field(
        None, gt=0, description="CPUs per worker (and its torch threads); default: the CPUs Ray has free when the "
        "run starts, shared by the workers, at least 1 each (inside a Tune trial the trial's own CPU is not free).")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config (cluster/deepspeed/*.json).")
    checkpoint_every_epochs: int | None = Field(
        None, gt=0, description="Report a resumable checkpoint every N epochs; default: every epoch when "
        "train.max_failures > 0, else none but the final model (a checkpoint costs a save and a Ray round trip).")
    max_failures: int = Field(0, ge=0, description="Worker failures to survive by resuming from a checkpoint.")
    log_every: int = Field(10, gt=0, description="Report metrics every N steps (and at the end of each epoch).")

    @property
    def sharded_checkpoints(self) -> bool:
        """Resumable checkpoints of a DeepSpeed engine: every rank's shard, which only a TorchTrainer of the run's
        own reports (resident workers keep a run's checkpoint as rank 0's files)."""
        return sharded_checkpoints(self.deepspeed, self.checkpoint_every_epochs, self.max_failures)


def sharded_checkpoints(deepspeed: str | None, checkpoint_every_epochs: int | None, max_failures: int) -> bool:
    """Whether train settings ask for resumable checkpoints of a DeepSpeed engine (`TrainConfig.sharded_checkpoints`;
    also read from a worker's `WorkerSettings`)."""
    return bool(deepspeed) and bool(checkpoint_every_epochs or max_failures)


class EvalConfig(_Section):
    max_per_split: int = Field(200, gt=0, description="Examples evaluated per split (deterministic subsample).")
    batch_size: int = Field(32, gt=0, description="Evaluation batch size.")
    max_new_tokens: int = Field(48, gt=0, description="Greedy tokens generated per answer.")
    gradient_mia: bool = Field(True, description="Run the gradient-norm membership attack (one forward and backward "
                               "per forget and holdout example; skipped where ZeRO-3 holds only a shard).")
    attacks: AttacksConfig | None = Field(
        None, description="Recovery attacks after the evaluation (relearn, quantise, probe: orchestrator/attacks/); "
        "`attacks: {}` runs all three at their defaults; null (default): none.")


class RayConfig(_Section):
    address: str | None = Field(
        None, description="Ray cluster to join ('host:port', 'ray://...', 'auto'); default: RAY_ADDRESS, else a "
        "`ray start` cluster on this machine, else a private Ray started for the run (orchestrator/run/ray_session.py)."
    )
    num_cpus: int | None = Field(None, gt=0, description="CPUs of a privately started Ray; default: all.")
    dashboard_host: str | None = Field(
        None, description="Where a privately started Ray's dashboard listens; default: RAY_UNLEARN_DASHBOARD_HOST, "
        "else 127.0.0.1 (turn on token authentication before exposing it: README).")


class ExperimentConfig(_Section):
    """One unlearning experiment."""

    name: str = Field("default", description="Experiment name; names the output folder.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    output_dir: str | None = Field(None, description="Output folder; default runs/<name>-<method>.")
    stream: StreamConfig | None = Field(None, description="`unlearn stream`: where the requests come from, the "
                                        "policy, the guard (orchestrator/stream/config.py); ignored by `unlearn run`.")
    sweep: SweepConfig | None = Field(None, description="`unlearn sweep`: methods, search spaces, seeds, budget "
                                      "(orchestrator/sweep/config.py); ignored by `unlearn run`.")

    @pydantic.model_validator(mode="before")
    @classmethod
    def _benchmark_models(cls, data: Any) -> Any:
        """MUSE comes with its own target and retrain models (muse-bench/MUSE-<corpus>_target / _retrain, Llama-2's
        tokenizer): a MUSE config that names no model unlearns those, as MUSE and the reference framework do."""
        if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
            return data
        if data["data"].get("source") != "muse" or (data.get("model") or {}).get("name") is not None:
            return data
        muse = data["data"].get("muse") or {}
        corpus = muse.get("corpus", "news") if isinstance(muse, dict) else "news"
        if corpus not in MUSE_MODELS:
            return data  # the corpus's own check names it
        model = dict(data.get("model") or {})
        model["name"], retrain = MUSE_MODELS[corpus]
        model.setdefault("retain_model", retrain)
        model.setdefault("tokenizer", MUSE_TOKENIZER)
        return {**data, "model": model}

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "ExperimentConfig":
        if self.model.name == "tiny" and self.data.source == "tofu":
            pass  # allowed: a tiny model fine-tuned on real TOFU with a locally trained tokenizer
        if self.train.deepspeed is not None and not Path(self.train.deepspeed).is_file():
            raise ValueError(f"train.deepspeed: no such file {self.train.deepspeed!r}")
        for key in ("name", "retain_model", "tokenizer"):
            value = getattr(self.model, key)
            # Unmistakably a local path (a hub id is never absolute or relative): say so now, not after Ray started.
            if value and value.startswith(("/", "./", "../", "~")) and not Path(value).expanduser().is_dir():
                raise ValueError(f"model.{key}: no such model folder {value!r}")
        return self

    def resolved_train(self) -> dict[str, Any]:
        """`train` as a dict, with `lr` and `epochs` filled from the method's recipe where the config left them out."""
        from orchestrator.recipes import recipe

        train = self.train.model_dump()
        defaults = recipe(self.method.name, tiny=self.model.name == "tiny")
        for key in ("lr", "epochs"):
            if train[key] is None:
                train[key] = defaults[key]
        train["epochs"] = int(train["epochs"])
        early_stop = self.train.early_stop
        if early_stop is None:
            early_stop = defaults.get("early_stop", False)
        if early_stop is True:
            early_stop = EarlyStopConfig()
        train["early_stop"] = early_stop.model_dump() if isinstance(early_stop, EarlyStopConfig) else None
        return train

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}-{self.method.name}")

    def with_overrides(self, **dotted: Any) -> "ExperimentConfig":
        """A copy with `section.key=value` overrides applied and validated again (CLI flags, sweeps)."""
        data = self.model_dump()
        for key, value in dotted.items():
            node = data
            *parents, leaf = key.split(".")
            for depth, p in enumerate(parents):
                if node.get(p) is None:  # an unset optional section (train.lora): the override creates it
                    node[p] = {}
                elif not isinstance(node[p], dict):
                    where = ".".join(parents[: depth + 1])
                    raise ConfigError(f"overrides: {key}: {where!r} is a value ({node[p]!r}), not a section")
                node = node[p]
            node[leaf] = value
        return parse_config(data, source="overrides")


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` as the CLI's `--set` takes it: a dotted key, and a value read as YAML (1e-4, [1, 2], null)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        return key, yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"--set {key}: the value {text!r} is not valid YAML ({problem})") from None


def parse_config(data: dict[str, Any] | None, source: str = "config") -> ExperimentConfig:
    """Validate a config mapping; raise ConfigError with one line per problem, naming key and value."""
    try:
        return ExperimentConfig(**(data or {}))
    except methods.MethodConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    except pydantic.ValidationError as err:
        raise ConfigError(f"{source}: " + "; ".join(_describe(e) for e in err.errors())) from None


def load_config(path: str | os.PathLike | None) -> ExperimentConfig:
    """Load and validate an experiment YAML; None gives the embedded default."""
    if path is None:
        return parse_config({}, source="embedded default")
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a config file (pass one of its .yaml files)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return parse_config(data, source=str(path))


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "config"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    if error["type"] == "missing":
        return f"missing key {where!r}"
    if not error["loc"]:  # a check across sections: its message names the keys itself
        return message
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"{where}{shown}: {message}"
