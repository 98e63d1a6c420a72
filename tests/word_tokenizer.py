"""A word-level tokenizer over a test's own words, so hand-computed token counts are word counts."""

from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


def word_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """<pad>=0, <s>=1, </s>=2, <unk>=3, then the words."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tok.train_from_iterator([" ".join(words)], trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2, 3)
    return hf
