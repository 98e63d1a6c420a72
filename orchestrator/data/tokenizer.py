"""The embedded default's tokenizer: a small byte-level BPE trained on the data it will encode, with no download.

Byte-level (GPT-2 style) so that any text encodes without `<unk>` and decodes back exactly: the pre-tokenizer maps
bytes to printable symbols and keeps each word's leading space inside the token (no `add_prefix_space`, which would
invent a space at the start), and decoding undoes exactly that. `clean_up_tokenization_spaces` is off, since it
would rewrite " ." and " n't" on decode. The special tokens sit at the ids `orchestrator.models.loading.tiny_llama_config`
assumes: `<pad>` 0, `<s>` 1, `</s>` 2, `<unk>` 3. No post-processor adds BOS/EOS: `orchestrator.data.tokenize`
places them itself.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from orchestrator.data.schema import UnlearningData
from orchestrator.data.tokenize import PromptTemplate

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0, 1, 2, 3 in this order


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`; the same texts in the same order give the same tokenizer."""
    minimum = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (4 special tokens + 256 bytes), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, so nothing maps to <unk>
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )


def corpus_texts(data: UnlearningData, template: PromptTemplate) -> list[str]:
    """Every string the tokenizer will be asked to encode, holdout included, each once, in a fixed order.

    Prompts as the template renders them (so "Question: " and "\\nAnswer: " merge like they will appear), answers,
    paraphrases, perturbations and refusals of every split.
    """
    seen: dict[str, None] = {}
    splits = (data.forget, data.retain, data.neighbour, data.holdout, data.world)
    for example in (e for split in splits for e in split):
        texts = [template.prompt(example), example.answer, example.paraphrased_answer, example.idk_answer]
        for text in (*texts, *example.perturbed_answers):
            if text:
                seen.setdefault(text, None)
    return list(seen)
