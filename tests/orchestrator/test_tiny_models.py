"""The embedded tiny models: pretraining corpus, packing, the text stop rule, and which changes rebuild what."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orchestrator.cache import ArtifactCache
from orchestrator.config import parse_config
from orchestrator.data.fictitious_books import make_book, write_books
from orchestrator.data.pretraining import pretraining_documents
from orchestrator.data.tokenize import EncodedRow, PromptTemplate
from orchestrator.models.finetune import finetune
from orchestrator.run.prepare import fingerprint, load_data
from orchestrator.models.tiny import build_tiny_models, examples_digest, packed_blocks

ROOT = Path(__file__).resolve().parents[2]

# Small enough to pretrain and fine-tune in seconds.
SMALL = {
    "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                       "vocab_size": 300},
              "pretrain": {"n_people": 20, "n_stories": 1, "epochs": 1, "block_size": 64},
              "finetune": {"epochs": 1}},
    "data": {"synthetic": {"n_people": 20, "questions_per_person": 2}},
}


def small_config(**dotted):
    return parse_config(SMALL).with_overrides(**dotted) if dotted else parse_config(SMALL)


def build(cache, config):
    data = load_data(config.data)
    return build_tiny_models(cache, config, data, fingerprint(data), PromptTemplate(), progress=lambda _: None)


def test_corpus_is_deterministic_and_names_no_task_person():
    from orchestrator.data.synthetic import make_synthetic_data

    docs = pretraining_documents(seed=1, n_people=50, n_stories=2)
    assert docs == pretraining_documents(seed=1, n_people=50, n_stories=2)
    assert docs != pretraining_documents(seed=2, n_people=50, n_stories=2)
    assert len(docs) == 50 * 3 + 2 * 42 + 2  # 2 QA + 1 biography per person, 2 phrasings per world fact, stories
    assert sum(d.startswith("Question: ") for d in docs) == 50 * 2 + 2 * 42
    task_people = {e.subject for e in make_synthetic_data().forget}
    assert not any(name in doc for name in task_people for doc in docs)


def test_packed_blocks_label_every_token():
    from orchestrator.data.tokenizer import train_tokenizer

    docs = pretraining_documents(n_people=10, n_stories=0)
    tokenizer = train_tokenizer(docs, vocab_size=300)
    rows = packed_blocks(docs, tokenizer, block_size=32)
    assert rows and all(len(r.input_ids) == 32 and r.labels == r.input_ids for r in rows)
    assert rows[0].input_ids[0] == tokenizer.bos_token_id
    with pytest.raises(ValueError, match="fewer than one block"):
        packed_blocks(["x"], tokenizer, block_size=32)


def test_finetune_stops_when_told(tiny_model):
    rows = [EncodedRow(input_ids=[1, 5, 6, 7, 2], labels=[-100, 5, 6, 7, 2], index=0)]
    seen = []
    losses = finetune(tiny_model, rows, 0, epochs=50, lr=1e-3, batch_size=1,
                      should_stop=lambda done: seen.append(done) or done == 3)
    assert len(losses) == 3 and seen == [1, 2, 3]


def test_examples_digest_ignores_order_and_split():
    data = load_data(small_config().data)
    examples = data.training_examples()
    assert examples_digest(examples) == examples_digest(tuple(reversed(examples)))
    assert examples_digest(examples) != examples_digest(examples[1:])


def entries(cache: ArtifactCache, kind: str) -> set[str]:
    return {p.name for p in cache.root.glob(f"{kind}-*") if p.is_dir()}


def test_what_each_change_rebuilds(tmp_path):
    cache = ArtifactCache(tmp_path)
    first = build(cache, small_config())
    assert first.pretrained_dir and Path(first.target_dir, "model.safetensors").is_file()
    kinds = ("tokenizer", "tiny-pretrained", "tiny-target", "tiny-retain")
    assert [len(entries(cache, k)) for k in kinds] == [1, 1, 1, 1]

    # Same config again: everything from the cache.
    assert build(cache, small_config()) == first

    # Another forget fraction: the pretrained model (and tokenizer) are reused; the retain model is rebuilt. The
    # target trains on the same people either way, so it is shared, as TOFU's one target serves all its splits.
    other_split = build(cache, small_config(**{"data.forget_fraction": 0.05}))
    assert (other_split.tokenizer_dir, other_split.pretrained_dir) == (first.tokenizer_dir, first.pretrained_dir)
    assert other_split.target_dir == first.target_dir
    assert other_split.retain_dir != first.retain_dir
    assert [len(entries(cache, k)) for k in kinds] == [1, 1, 1, 2]

    # Another fine-tuning setting: only the fine-tuned models.
    longer = build(cache, small_config(**{"model.finetune.epochs": 2}))
    assert longer.pretrained_dir == first.pretrained_dir
    assert longer.target_dir != first.target_dir and longer.retain_dir != first.retain_dir

    # Another pretraining corpus: tokenizer, pretrained, target and retain all rebuilt.
    corpus = build(cache, small_config(**{"model.pretrain.seed": 7}))
    assert corpus.tokenizer_dir != first.tokenizer_dir and corpus.pretrained_dir != first.pretrained_dir
    assert corpus.target_dir not in {first.target_dir, longer.target_dir}
    assert corpus.retain_dir not in {first.retain_dir, other_split.retain_dir, longer.retain_dir}

    # Pretraining off: random init, tokenizer trained on the task's data, no pretrained entry.
    scratch = build(cache, small_config(**{"model.pretrain": None}))
    assert scratch.pretrained_dir is None and scratch.tokenizer_dir != first.tokenizer_dir
    assert len(entries(cache, "tiny-pretrained")) == 2


def test_text_target_trains_until_it_recites(tmp_path):
    books = write_books(tmp_path, [11, 12], n_paragraphs=2, sentences_per_paragraph=2)
    config = small_config(**{"data.source": "text", "data.text": {"forget": str(books[0]), "retain": [str(books[1])],
                                                                     "max_chars": 200},
                             "model.finetune.memorise_rouge_l": 0.5, "model.finetune.max_epochs": 40,
                             "model.finetune.check_every": 5, "model.finetune.lr": 3e-3})
    import json

    models = build(ArtifactCache(tmp_path / "cache"), config)
    state = json.loads(Path(models.target_dir, "finetune_state.json").read_text())
    assert state["epochs"] % 5 == 0 or state["epochs"] == 40
    assert state["epochs"] == 40 or state["verbatim_memorisation"] >= 0.5


def test_shipped_books_are_what_the_generator_writes(tmp_path):
    shipped = sorted((ROOT / "experiments" / "data" / "books").glob("book-*.txt"))
    assert [p.name for p in shipped] == [f"book-{s}.txt" for s in (1, 2, 3, 4)]
    for path in shipped:
        seed = int(path.stem.split("-")[1])
        assert path.read_text(encoding="utf-8") == make_book(seed).text()
    assert make_book(1).paragraphs != make_book(2).paragraphs


def _six_grams(text: str) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + 6]) for i in range(len(words) - 5)}


def test_books_have_their_own_voice():
    """Two books share few 6-word sequences (their own shapes and words); the pretraining stories share a stock."""
    from orchestrator.data.fictitious_books import make_story

    books = [_six_grams(" ".join(make_book(seed).paragraphs)) for seed in (1, 2, 3, 4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert len(books[i] & books[j]) / len(books[i]) < 0.03, (i + 1, j + 1)
    stories = [_six_grams(" ".join(make_story(seed).paragraphs)) for seed in (1, 2)]
    assert len(stories[0] & stories[1]) / len(stories[0]) > len(books[0] & books[1]) / len(books[0])
    assert make_book(5) == make_book(5) and make_book(5) != make_book(6)


def test_text_retain_may_be_several_files(tmp_path):
    from orchestrator.data.text_corpus import load_text_corpus

    a, b, c = write_books(tmp_path, [21, 22, 23], n_paragraphs=2)
    data = load_text_corpus(a, [b, c], max_chars=450)
    assert {e.id.split("/")[1] for e in data.retain + data.holdout} == {"book-22", "book-23"}
    with pytest.raises(ValueError, match="used twice"):
        load_text_corpus(a, [b, a])
