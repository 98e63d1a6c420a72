"""Model construction: the tiny Llama-architecture model of the embedded default, and loading real ones."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM


def tiny_llama_config(
    vocab_size: int,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_positions: int = 256,
    pad_token_id: int | None = 0,
    bos_token_id: int | None = 1,
    eos_token_id: int | None = 2,
) -> LlamaConfig:
    """A Llama-architecture config small enough to fine-tune on two CPU cores in a minute."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )


def tiny_llama(vocab_size: int, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size, **overrides))


def quiet_progress_bars() -> None:
    """No transformers / huggingface_hub progress bars in this process (a Ray Train worker): each bar of a weights
    load or a checkpoint's save came back through Ray's log stream as one more line per worker and call."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Load an HF causal LM from a local folder or hub id (`from_pretrained`).

    Without transformers' per-load "Loading weights" bar: a run loads the target (and its reference) on every
    worker, and each bar came back through Ray's log stream as one more line per load."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def fresh_copy_of(module: torch.nn.Module, path: str | Path, dtype: torch.dtype) -> torch.nn.Module:
    """A freshly loaded target (`path`) in `module`'s shape: wrapped in the same LoRA adapters where `module` has
    them. It receives the weights of a module that DeepSpeed partitions or casts, to be evaluated or saved whole."""
    model = load_causal_lm(path, dtype=dtype)
    if hasattr(module, "peft_config"):
        import copy

        from peft import get_peft_model

        model = get_peft_model(model, copy.deepcopy(module.peft_config["default"]))
    return model


def load_tokenizer(path: str):
    """The tokenizer saved in `path`, padding with its end-of-sequence token where it has no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
