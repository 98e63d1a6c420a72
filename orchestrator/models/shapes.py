"""Decoder-only transformer shapes and their parameter counts, for planning memory without loading weights.

A shape comes from the model's own `config.json` when it is on disk (a local folder or the HF cache, read with
`local_files_only`, never downloaded), else from a built-in table of the 7B-class models the recipes in
`experiments/` use, so that `unlearn plan` works on a laptop with no network. Counts follow the HF Llama, Mistral
and Qwen2 modules: q/k/v/o projections (k and v narrowed by grouped-query attention; Qwen2 adds q/k/v biases), the
SwiGLU MLP (gate, up, down), two RMSNorms per block, the final norm, the embedding and the (possibly tied) head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.config import ConfigError, ExperimentConfig


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on: widths, depth, heads and vocabulary of a Llama-style decoder."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool = False
    qkv_bias: bool = False
    source: str = "table"  # "config.json", "table" or "tiny"

    @property
    def kv_size(self) -> int:
        """Width of the k and v projections: heads share them under grouped-query attention."""
        return self.hidden_size // self.num_heads * self.num_kv_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each Linear in one block, by its HF module name."""
        h, kv, i = self.hidden_size, self.kv_size, self.intermediate_size
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def layer_params(self) -> int:
        """Parameters of one transformer block."""
        linear = sum(a * b for a, b in self.linear_shapes().values())
        bias = self.hidden_size + 2 * self.kv_size if self.qkv_bias else 0
        return linear + bias + 2 * self.hidden_size  # two RMSNorm weights

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def total_params(self) -> int:
        heads = 1 if self.tie_embeddings else 2
        return heads * self.embedding_params() + self.num_layers * self.layer_params() + self.hidden_size

    def named_params(self) -> dict[str, int]:
        """Parameter counts by HF parameter name (model.layers.{i}.self_attn.q_proj.weight, ..., lm_head.weight)."""
        groups = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn"}
        out = {"model.embed_tokens.weight": self.embedding_params(), "model.norm.weight": self.hidden_size}
        for i in range(self.num_layers):
            for name, (a, b) in self.linear_shapes().items():
                out[f"model.layers.{i}.{groups.get(name, 'mlp')}.{name}.weight"] = a * b
            for norm in ("input_layernorm", "post_attention_layernorm"):
                out[f"model.layers.{i}.{norm}.weight"] = self.hidden_size
            if self.qkv_bias:
                for name, width in (("q_proj", self.hidden_size), ("k_proj", self.kv_size), ("v_proj", self.kv_size)):
                    out[f"model.layers.{i}.self_attn.{name}.bias"] = width
        if not self.tie_embeddings:
            out["lm_head.weight"] = self.embedding_params()
        return out

    def matching_params(self, patterns: list[str]) -> int:
        """Parameters whose HF name one of the regexes is found in (`re.search`, as methods match them)."""
        import re

        compiled = [re.compile(p) for p in patterns]
        return sum(count for name, count in self.named_params().items() if any(c.search(name) for c in compiled))

    def lora_params(self, rank: int, target_modules: list[str] | str | None) -> int:
        """Adapter parameters r * (in + out) per adapted Linear. 'all-linear' and None mean every Linear but the
        head (peft's 'all-linear' and FILA's default); names match a module name or its last dotted part."""
        shapes = self.linear_shapes()
        if target_modules is None or target_modules == "all-linear":
            wanted = set(shapes)
        else:
            names = [target_modules] if isinstance(target_modules, str) else target_modules
            wanted = {n.rsplit(".", 1)[-1] for n in names} & set(shapes)
        return self.num_layers * sum(rank * (shapes[n][0] + shapes[n][1]) for n in wanted)


# Shapes from each model's config.json on the HF hub; keys are matched as lower-case substrings of `model.name`, so
# that fine-tuned checkpoints ("open-unlearning/tofu_Llama-2-7b-chat-hf_full", a local "tofu_Mistral-7B..." folder)
# find their base architecture.
KNOWN_SHAPES: dict[str, ModelShape] = {
    "llama-2-7b": ModelShape("meta-llama/Llama-2-7b-hf", 4096, 32, 32, 32, 11008, 32000),
    "mistral-7b": ModelShape("mistralai/Mistral-7B-v0.1", 4096, 32, 32, 8, 14336, 32000),
    "qwen2.5-7b": ModelShape("Qwen/Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, qkv_bias=True),
    "llama-3.1-8b": ModelShape("meta-llama/Llama-3.1-8B", 4096, 32, 32, 8, 14336, 128256),
    "llama-3.2-1b": ModelShape("meta-llama/Llama-3.2-1B", 2048, 16, 32, 8, 8192, 128256, tie_embeddings=True),
    # Fine-tunes named after their task: MUSE's target and retrain models are Llama-2-7B's, Zephyr is Mistral-7B's.
    "muse-bench/muse-": ModelShape("muse-bench/MUSE-news_target", 4096, 32, 32, 32, 11008, 32000),
    "zephyr-7b": ModelShape("HuggingFaceH4/zephyr-7b-beta", 4096, 32, 32, 8, 14336, 32000),
}


def shape_from_hf_config(name: str, hf_config: Any) -> ModelShape:
    """A shape from a transformers `PretrainedConfig` (Llama, Mistral, Qwen2 and alike)."""
    heads = hf_config.num_attention_heads
    return ModelShape(
        name=name,
        hidden_size=hf_config.hidden_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
        intermediate_size=hf_config.intermediate_size,
        vocab_size=hf_config.vocab_size,
        tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        qkv_bias=bool(getattr(hf_config, "attention_bias", False)) or getattr(hf_config, "model_type", "") == "qwen2",
        source="config.json",
    )


def resolve_shape(config: ExperimentConfig, model_config: Any = None) -> ModelShape:
    """The shape of `config.model`: `model_config` if given, the tiny config, the local config.json, else the table."""
    name = config.model.name
    if isinstance(model_config, ModelShape):
        return model_config
    if model_config is not None:
        return shape_from_hf_config(name, model_config)
    if name == "tiny":
        tiny = config.model.tiny
        return ModelShape("tiny", tiny.hidden_size, tiny.num_layers, tiny.num_heads, tiny.num_heads,
                          tiny.intermediate_size, tiny.vocab_size, source="tiny")
    try:
        from transformers import AutoConfig

        return shape_from_hf_config(name, AutoConfig.from_pretrained(name, local_files_only=True))
    except Exception:  # not on disk (or not a transformers config): fall back to the table
        pass
    lowered = name.lower()
    for key, shape in KNOWN_SHAPES.items():
        if key in lowered:
            return shape
    raise ConfigError(
        f"model.name {name!r}: its config.json is not on disk and its shape is not built in "
        f"(known: {', '.join(KNOWN_SHAPES)}); download its config.json or pass model_config"
    )
