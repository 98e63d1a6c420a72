"""Greedy generation of answers (and of passage continuations) for the text-based metrics.

One pass per split serves ROUGE, MUSE's verbatim/knowledge memorisation and fluency. Decoding is greedy with a
`max_new_tokens` cap and stops at EOS, as open-unlearning's default generation config (`do_sample: False`) and
`eval_text_similarity` (`src/evals/metrics/utils.py`): only the new tokens are decoded, special tokens skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from orchestrator.data.schema import Example
from orchestrator.data.tokenize import PromptTemplate, collate_prompts, encode_prompt
from orchestrator.evaluation.likelihood import length_sorted_batches, model_device, pad_token_id


@dataclass
class Generations:
    """Greedy outputs for a list of examples, indexed like them."""

    texts: list[str]  # decoded new tokens, special tokens skipped, stripped
    references: list[str]  # what the output is compared with: the answer, or a passage's second half
    token_ids: list[list[int]]  # the new tokens up to (not including) EOS; fluency reads these


def reference_text(tokenizer, example: Example) -> str:
    """The ground truth a generation is scored against.

    QA: the answer. Text: the passage after the prompt `encode_prompt` takes (its first half of tokens), decoded,
    so that prompt and reference split the passage at the same token.
    """
    if example.kind != "text":
        return example.answer
    ids = tokenizer.encode(example.answer, add_special_tokens=False)
    return tokenizer.decode(ids[max(1, len(ids) // 2) :], skip_special_tokens=True).strip()


def _generation_kwargs(model: torch.nn.Module, tokenizer, max_new_tokens: int) -> dict:
    """Greedy decoding regardless of the checkpoint's `generation_config` (which may ask for sampling)."""
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_token_id(tokenizer))
    if tokenizer.eos_token_id is not None:
        kwargs["eos_token_id"] = tokenizer.eos_token_id
    config = getattr(model, "generation_config", None)
    if config is not None:
        # Unset sampling knobs so that transformers does not warn that they are ignored under greedy decoding.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    template: PromptTemplate,
    *,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    max_length: int = 512,
    synced: bool = False,
) -> Generations:
    """Greedy continuation of each example's prompt, in left-padded batches of similar length.

    `synced`: every rank of the process group keeps forwarding until all have finished (ZeRO-3 evaluation)."""
    references = [reference_text(tokenizer, ex) for ex in examples]
    prompts = [encode_prompt(tokenizer, ex, template, max_length) for ex in examples]
    texts, token_ids = generate_from_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, synced=synced)
    return Generations(texts, references, token_ids)


@torch.no_grad()
def generate_from_ids(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    synced: bool = False,
) -> tuple[list[str], list[list[int]]]:
    """Greedy continuation of already encoded prompts: the decoded new text and its tokens up to EOS, per prompt."""
    n = len(prompts)
    texts = [""] * n
    token_ids: list[list[int]] = [[] for _ in range(n)]
    if n == 0:
        return texts, token_ids
    device = model_device(model)
    kwargs = _generation_kwargs(model, tokenizer, max_new_tokens)
    if synced:
        kwargs["synced_gpus"] = True
    eos = tokenizer.eos_token_id
    for batch_idx in length_sorted_batches([len(p) for p in prompts], batch_size):
        batch = collate_prompts([prompts[i] for i in batch_idx], kwargs["pad_token_id"])
        input_ids = batch["input_ids"].to(device)
        output = model.generate(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device), **kwargs)
        new_tokens = output[:, input_ids.shape[1] :].cpu().tolist()
        for j, i in enumerate(batch_idx):
            ids = new_tokens[j]
            if eos is not None and eos in ids:
                ids = ids[: ids.index(eos)]
            token_ids[i] = ids
            texts[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return texts, token_ids
