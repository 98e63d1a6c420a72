"""Turning `Example`s into the tensors methods and metrics consume.

Training rows are `prompt + answer + eos` with the prompt (and padding) labelled -100, so every loss and every
likelihood metric scores the answer only. Generation rows are the prompt alone, left-padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from methods.numerics import IGNORE_INDEX
from orchestrator.data.schema import Example


@dataclass(frozen=True)
class PromptTemplate:
    """How a question is put to the model. Text passages get no template."""

    question_prefix: str = "Question: "
    answer_prefix: str = "\nAnswer: "
    context: str = ""  # put before every question: a few-shot prefix of other question/answer pairs (an attack)

    def prompt(self, example: Example) -> str:
        if example.kind == "text":
            return ""
        return f"{self.context}{self.question_prefix}{example.question}{self.answer_prefix}"

    def shot(self, question: str, answer: str) -> str:
        """One question/answer pair as the template writes it, for a few-shot `context`."""
        return f"{self.question_prefix}{question}{self.answer_prefix}{answer}\n\n"


@dataclass(frozen=True)
class EncodedRow:
    input_ids: list[int]
    labels: list[int]
    index: int


def encode(
    tokenizer,
    example: Example,
    index: int,
    template: PromptTemplate,
    max_length: int,
    answer: str | None = None,
) -> EncodedRow:
    """Encode `example` (or the same prompt with another `answer`: paraphrase, perturbation, refusal)."""
    prompt_ids = tokenizer.encode(template.prompt(example), add_special_tokens=False) if example.kind == "qa" else []
    answer_text = example.answer if answer is None else answer
    answer_ids = tokenizer.encode(answer_text, add_special_tokens=False)
    if tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    input_ids = (bos + prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * (len(bos) + len(prompt_ids)) + answer_ids)[:max_length]
    return EncodedRow(input_ids=input_ids, labels=labels, index=index)


def encode_prompt(tokenizer, example: Example, template: PromptTemplate, max_length: int) -> list[int]:
    """Token ids of the prompt alone (with BOS), for generation; text passages use their first half."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if example.kind == "text":
        ids = tokenizer.encode(example.answer, add_special_tokens=False)
        return (bos + ids[: max(1, len(ids) // 2)])[:max_length]
    return (bos + tokenizer.encode(template.prompt(example), add_special_tokens=False))[:max_length]


def collate(rows: Sequence[EncodedRow], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows into a batch part: input_ids, attention_mask, labels, index."""
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        attention_mask[i, :n] = 1
    index = torch.tensor([r.index for r in rows], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "index": index}


def collate_prompts(prompts: Sequence[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts for batched generation: input_ids, attention_mask."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p)
        attention_mask[i, width - len(p) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
