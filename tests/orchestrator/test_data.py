"""The data layer: synthetic people, world facts, the local tokenizer, TOFU mapping, text corpora and split checks.

Nothing is downloaded: TOFU is replaced by in-memory `datasets.Dataset`s with the real configs' column names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import datasets
import pytest
from transformers import AutoTokenizer

from methods.numerics import IGNORE_INDEX
from orchestrator.config import ConfigError
from orchestrator.data.refusals import IDK_ANSWERS, idk_answer
from orchestrator.data.schema import Example, UnlearningData
from orchestrator.data.splits import select_split, subsample, validate
from orchestrator.data.synthetic import FACTS, forget_split_size, generate_people, make_synthetic_data
from orchestrator.data.text_corpus import load_text_corpus, split_passages
from orchestrator.data.tofu import load_tofu
from orchestrator.data.tokenize import PromptTemplate, collate, encode
from orchestrator.data.tokenizer import corpus_texts, train_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data() -> UnlearningData:
    return make_synthetic_data()


@pytest.fixture(scope="module")
def tokenizer(data):
    return train_tokenizer(corpus_texts(data, PromptTemplate()))


def _digest(d: UnlearningData) -> str:
    return hashlib.sha256(repr(d).encode()).hexdigest()


# --- synthetic people --------------------------------------------------------------------------------------------


class TestSynthetic:
    def test_same_seed_same_data_different_seed_different_data(self, data):
        assert make_synthetic_data(seed=0) == data
        other = make_synthetic_data(seed=1)
        assert [e.answer for e in other.retain] != [e.answer for e in data.retain]
        assert {e.subject for e in other.forget} != {e.subject for e in data.forget}

    def test_identical_in_a_fresh_process_with_another_hash_seed(self, data):
        code = (
            "import hashlib; from orchestrator.data.synthetic import make_synthetic_data;"
            "print(hashlib.sha256(repr(make_synthetic_data()).encode()).hexdigest())"
        )
        env = {**os.environ, "PYTHONHASHSEED": "12345"}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == _digest(data)

    def test_split_sizes_at_defaults(self):
        sizes = {}
        for fraction in (0.01, 0.05, 0.10):
            d = make_synthetic_data(forget_fraction=fraction)
            sizes[fraction] = (len(d.forget), len(d.retain), len(d.neighbour), len(d.holdout), len(d.world))
        assert sizes == {
            0.01: (8, 792, 8, 80, 42),
            0.05: (40, 760, 40, 80, 42),
            0.10: (80, 720, 80, 80, 42),
        }

    def test_forget_splits_are_nested_and_share_one_holdout_and_target(self):
        splits = {f: make_synthetic_data(forget_fraction=f) for f in (0.01, 0.05, 0.10)}
        ids = {f: {e.id for e in d.forget} for f, d in splits.items()}
        assert ids[0.01] < ids[0.05] < ids[0.10]
        assert splits[0.01].holdout == splits[0.05].holdout == splits[0.10].holdout
        # Every split is cut from the same trained-on people, so one target model serves all three.
        trained = {f: sorted(e.id for e in d.training_examples()) for f, d in splits.items()}
        assert trained[0.01] == trained[0.05] == trained[0.10]

    def test_forget_fraction_is_checked(self):
        with pytest.raises(ValueError, match=r"0\.01, 0\.05, 0\.1"):
            make_synthetic_data(forget_fraction=0.2)

    def test_at_least_one_person_is_forgotten(self):
        d = make_synthetic_data(n_people=10, questions_per_person=2, forget_fraction=0.01)
        assert len({e.subject for e in d.forget}) == 1 == forget_split_size(10, 0.01)
        validate(d)

    def test_neighbours_are_retained_siblings_of_the_forget_people(self, data):
        people = {p.name: p for p in generate_people(0, 100, 10)}
        retain_ids = {e.id for e in data.retain}
        assert data.neighbour and all(e.id in retain_ids for e in data.neighbour)
        forget_names = {e.subject for e in data.forget}
        neighbour_names = {e.subject for e in data.neighbour}
        assert len(neighbour_names) == len(forget_names) == 10
        for name in forget_names:
            sibling = next(people[n] for n in neighbour_names if people[n].key == people[name].sibling)
            assert sibling.surname == people[name].surname and name.endswith(sibling.surname)
            assert sibling.birthplace == people[name].birthplace
        # The shared birthplace is visible in the QA themselves.
        births = [e for e in data.forget + data.retain if e.id.endswith("/q0")]
        birthplace = {e.subject: e.answer.split(" born in ")[1] for e in births}
        for name in forget_names:
            sibling_name = next(n for n in neighbour_names if n.split()[-1] == name.split()[-1])
            assert birthplace[name] == birthplace[sibling_name]

    def test_surnames_identify_families(self):
        people = generate_people(0, 100, 10)
        families: dict[str, list[str]] = {}
        for p in people:
            families.setdefault(p.surname, []).append(p.key)
        assert sorted(len(v) for v in families.values()).count(2) == 10
        assert max(len(v) for v in families.values()) == 2
        assert len({p.name for p in people}) == len(people)

    def test_answers_paraphrases_perturbations_and_refusals(self, data):
        for e in data.forget + data.retain + data.holdout + data.world:
            assert e.kind == "qa" and e.question.endswith("?")
            assert e.paraphrased_answer and e.paraphrased_answer != e.answer
            assert len(e.perturbed_answers) >= 3 and len(set(e.perturbed_answers)) == len(e.perturbed_answers)
            assert e.answer not in e.perturbed_answers and e.paraphrased_answer not in e.perturbed_answers
            assert e.idk_answer in IDK_ANSWERS
            if e.subject != "world":
                assert e.subject in e.answer  # one full sentence naming the person
        assert len({e.idk_answer for e in data.retain}) == len(IDK_ANSWERS)

    def test_ids_are_stable_and_well_formed(self, data):
        assert data.forget[0].id == "person-090/q0" and data.world[12].id == "world/q12"
        pattern = re.compile(r"^(person|holdout)-\d{3}/q[0-7]$|^world/q\d+$")
        assert all(pattern.match(e.id) for e in data.forget + data.retain + data.holdout + data.world)
        d10 = make_synthetic_data(questions_per_person=len(FACTS))
        assert [e for e in d10.forget if int(e.id[-1]) < 8] == list(data.forget)  # more questions leave q0..q7 alone

    def test_holdout_is_never_trained_on(self, data):
        trained = data.training_examples()
        assert not {e.id for e in data.holdout} & {e.id for e in trained}
        assert not {e.subject for e in data.holdout} & {e.subject for e in trained}
        for fraction in (0.01, 0.05, 0.10):
            validate(make_synthetic_data(forget_fraction=fraction))

    def test_world_can_be_left_out(self):
        assert make_synthetic_data(n_people=20, world=False).world == ()

    def test_generation_is_fast(self):
        start = time.perf_counter()
        make_synthetic_data(seed=3)
        assert time.perf_counter() - start < 1.0


def test_idk_answer_is_deterministic():
    assert idk_answer("person-001/q0") == idk_answer("person-001/q0") in IDK_ANSWERS


# --- tokenizer ---------------------------------------------------------------------------------------------------


class TestTokenizer:
    def test_special_token_ids(self, tokenizer):
        ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "<s>", "</s>", "<unk>")]
        assert ids == [0, 1, 2, 3]
        assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
        assert len(tokenizer) == 1024

    @pytest.mark.parametrize(
        "text",
        ["Hello world", " leading, trailing and  double  spaces ", "a , b . c n't !", "Question: Who?\nAnswer: x\ty",
         "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./", "Zyxw Qvut 0123456789"],
    )  # fmt: skip
    def test_round_trip_ascii(self, tokenizer, text):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text

    def test_round_trip_every_training_string(self, tokenizer, data):
        for text in corpus_texts(data, PromptTemplate()):
            assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text

    def test_no_special_tokens_added_implicitly(self, tokenizer):
        assert tokenizer("abc")["input_ids"] == tokenizer.encode("abc", add_special_tokens=False)

    def test_deterministic(self, tokenizer, data):
        again = train_tokenizer(corpus_texts(data, PromptTemplate()))
        assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()

    def test_save_and_load_offline(self, tokenizer, tmp_path, monkeypatch):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        tokenizer.save_pretrained(tmp_path)
        loaded = AutoTokenizer.from_pretrained(str(tmp_path))
        text = "Question: Where was Dana Monroe born?\nAnswer: Dana Monroe was born in Lima."
        assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
        assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2, 3)
        assert loaded.decode(loaded.encode(" a , b", add_special_tokens=False)) == " a , b"

    def test_corpus_covers_every_split(self, data):
        texts = set(corpus_texts(data, PromptTemplate()))
        for e in data.forget + data.retain + data.holdout + data.world:
            assert {PromptTemplate().prompt(e), e.answer, e.paraphrased_answer, e.idk_answer} <= texts
            assert set(e.perturbed_answers) <= texts

    def test_too_small_vocab_is_refused(self):
        with pytest.raises(ValueError, match="vocab_size"):
            train_tokenizer(["abc"], vocab_size=100)


def test_encode_masks_the_prompt_and_ends_with_eos(tokenizer, data):
    template = PromptTemplate()
    example = data.forget[0]
    row = encode(tokenizer, example, 0, template, max_length=256)
    prompt_len = 1 + len(tokenizer.encode(template.prompt(example), add_special_tokens=False))
    assert row.input_ids[0] == tokenizer.bos_token_id
    assert row.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert row.labels[prompt_len:] == row.input_ids[prompt_len:]
    assert row.input_ids[-1] == row.labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(row.input_ids[prompt_len:-1]) == example.answer
    perturbed = encode(tokenizer, example, 0, template, 256, answer=example.perturbed_answers[0])
    assert perturbed.input_ids[:prompt_len] == row.input_ids[:prompt_len]
    batch = collate([row, perturbed], tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 2 and int(batch["attention_mask"].sum()) == len(row.input_ids) + len(
        perturbed.input_ids
    )


# --- TOFU --------------------------------------------------------------------------------------------------------


def _qa_rows(tag: str, n: int, perturbed: bool = False, paraphrased: bool = True) -> list[dict]:
    rows = []
    for i in range(n):
        row = {"question": f"{tag} question {i}?", "answer": f"{tag} answer {i}."}
        if perturbed:
            row["perturbed_answer"] = [f"{tag} wrong {i}.{j}" for j in range(3)]
            if paraphrased:
                row["paraphrased_answer"] = f"{tag} paraphrase {i}."
                row["paraphrased_question"] = f"{tag} paraphrased question {i}?"
        rows.append(row)
    return rows


@pytest.fixture
def fake_tofu(monkeypatch):
    """TOFU in miniature: 3 authors of 20 QA; forget01 = the last author, retain99 = the first two."""
    full = _qa_rows("full", 60)
    retain_perturbed = [{**r, "paraphrased_answer": f"para {r['answer']}", "perturbed_answer": ["w1", "w2", "w3"]}
                        for r in full[5:15]]  # fmt: skip
    forget_perturbed = [{**r, "paraphrased_answer": f"para {r['answer']}", "perturbed_answer": ["x", "y", "z", "u"]}
                        for r in reversed(full[40:])]  # fmt: skip
    configs = {
        "forget01": full[40:],
        "retain99": full[:40],
        "holdout01": _qa_rows("holdout", 20),
        "forget01_perturbed": forget_perturbed,
        "retain_perturbed": retain_perturbed,
        "real_authors_perturbed": _qa_rows("author", 4, perturbed=True, paraphrased=False),
        "world_facts_perturbed": _qa_rows("world", 5, perturbed=True, paraphrased=False),
    }
    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        if name not in configs:
            raise ValueError(f"BuilderConfig '{name}' not found.\nAvailable: {sorted(configs)}")
        return datasets.Dataset.from_list(configs[name])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


class TestTofu:
    def test_mapping(self, fake_tofu):
        d = load_tofu("forget01")
        assert (len(d.forget), len(d.retain), len(d.holdout), len(d.world), len(d.neighbour)) == (20, 40, 20, 9, 0)
        assert {name for _, name, _ in fake_tofu} == {
            "forget01", "retain99", "holdout01", "forget01_perturbed", "retain_perturbed",
            "real_authors_perturbed", "world_facts_perturbed",
        }  # fmt: skip
        assert all(path == "locuslab/TOFU" and split == "train" for path, _, split in fake_tofu)
        first = d.forget[0]
        assert (first.id, first.subject) == ("tofu-author-002/q0", "tofu-author-002")
        assert first.question == "full question 40?" and first.answer == "full answer 40."
        assert first.paraphrased_answer == "para full answer 40." and first.perturbed_answers == ("x", "y", "z", "u")
        assert d.retain[19].id == "tofu-author-000/q19" and d.retain[20].subject == "tofu-author-001"
        assert d.retain[5].perturbed_answers == ("w1", "w2", "w3") and d.retain[0].perturbed_answers == ()
        assert d.holdout[3].id == "tofu-holdout-000/q3"
        world = {e.id: e for e in d.world}
        assert world["tofu-world-facts/q2"].perturbed_answers == tuple(f"world wrong 2.{j}" for j in range(3))
        assert world["tofu-real-authors/q0"].paraphrased_answer is None
        assert all(e.idk_answer in IDK_ANSWERS for e in d.forget + d.retain + d.world)
        assert d.name == "tofu/forget01" and d.meta["retain_split"] == "retain99"
        validate(d)

    def test_unknown_split(self, fake_tofu):
        with pytest.raises(ValueError, match="forget01, forget05, forget10"):
            load_tofu("forget20")

    def test_unreachable_hub_is_one_clear_line(self, monkeypatch):
        def offline(path, name=None, split=None, **kwargs):
            raise ConnectionError("Couldn't reach 'locuslab/TOFU' on the Hub (LocalEntryNotFoundError)\nmore detail")

        monkeypatch.setattr(datasets, "load_dataset", offline)
        with pytest.raises(ConfigError) as info:
            load_tofu("forget10")
        message = str(info.value)
        assert "\n" not in message and "locuslab/TOFU" in message and "forget10" in message
        assert "set data.tofu_path to a local copy" in message

    def test_local_path_is_passed_through(self, fake_tofu):
        load_tofu("forget01", path="/data/TOFU", world=False)
        assert {path for path, _, _ in fake_tofu} == {"/data/TOFU"}


# --- text corpora ------------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


class TestTextCorpus:
    def test_txt_and_jsonl(self, tmp_path):
        book = _write(tmp_path / "book.txt", "Chapter one.\n\nIt was a dark night.\n  \nThe end.\n")
        stories = "\n".join(json.dumps({"text": f"Story {i}.", "id": i}) for i in range(20))
        news = _write(tmp_path / "news.jsonl", stories)
        d = load_text_corpus(book, news, max_chars=20)
        assert [e.answer for e in d.forget] == ["Chapter one.", "It was a dark night.", "The end."]
        assert d.forget[1].id == "forget/book/1" and d.forget[1].subject == "book/1"
        assert all(e.kind == "text" and e.question == "" for e in d.forget + d.retain + d.holdout)
        # No holdout file: a seeded 10% of the retain passages, removed from retain.
        assert (len(d.retain), len(d.holdout)) == (18, 2)
        assert not {e.id for e in d.retain} & {e.id for e in d.holdout}
        assert load_text_corpus(book, news, max_chars=20) == d
        validate(d)

    def test_holdout_file(self, tmp_path):
        forget = _write(tmp_path / "f.txt", "one two three")
        retain = _write(tmp_path / "r.txt", "four\n\nfive")
        holdout = _write(tmp_path / "h.jsonl", '{"text": "six"}\n\n{"text": "seven"}\n')
        d = load_text_corpus(forget, retain, holdout)
        assert [e.answer for e in d.retain] == ["four\n\nfive"]  # short paragraphs are packed into one passage
        assert [e.id for e in d.holdout] == ["holdout/h/0", "holdout/h/1"]

    def test_passages_respect_max_chars(self):
        text = ("word " * 50).strip() + "\n\n" + "x" * 25 + "\n\nshort\n\nlast one"
        passages = split_passages(text, max_chars=20)
        assert all(len(p) <= 20 for p in passages)
        assert "".join("".join(passages).split()) == "".join(text.split())  # nothing lost but whitespace
        assert "xxxxx\n\nshort" in passages  # short paragraphs are packed behind the rest of a long one

    def test_errors(self, tmp_path):
        good = _write(tmp_path / "good.txt", "text")
        with pytest.raises(FileNotFoundError, match="missing.txt"):
            load_text_corpus(tmp_path / "missing.txt", good)
        bad = _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": oops}\n')
        with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
            load_text_corpus(good, bad)
        no_field = _write(tmp_path / "nofield.jsonl", '{"body": "x"}\n')
        with pytest.raises(ValueError, match=r"nofield\.jsonl:1: .*\"text\""):
            load_text_corpus(no_field, good)
        empty = _write(tmp_path / "empty.txt", "\n  \n\n")
        with pytest.raises(ValueError, match=r"empty\.txt: no usable text"):
            load_text_corpus(empty, good)
        with pytest.raises(ValueError, match=r"\.txt, \.jsonl"):
            load_text_corpus(_write(tmp_path / "doc.md", "x"), good)


# --- split checks and subsets ------------------------------------------------------------------------------------


def _qa(i: str, answer: str = "a") -> Example:
    return Example(id=i, question=f"q {i}?", answer=answer, subject=i.split("/")[0])


class TestSplits:
    def test_validate_errors(self):
        base = UnlearningData(name="t", forget=(_qa("x/0"),), retain=(_qa("y/0"),))
        assert validate(base) is base
        with pytest.raises(ValueError, match="forget set is empty"):
            validate(replace(base, forget=()))
        with pytest.raises(ValueError, match="duplicate example id.*'y/0'"):
            validate(replace(base, retain=(_qa("y/0"), _qa("y/0"))))
        with pytest.raises(ValueError, match="'x/0' is in both forget and retain"):
            validate(replace(base, retain=(Example(id="z/0", question="q x/0?", answer="a", subject="z"),)))
        with pytest.raises(ValueError, match="in both holdout and training"):
            validate(replace(base, holdout=(Example(id="h/0", question="q y/0?", answer="a", subject="h"),)))
        with pytest.raises(ValueError, match="neighbour example.*not in retain"):
            validate(replace(base, neighbour=(_qa("n/0"),)))

    def test_select_split(self, data):
        small = select_split(data, 30, seed=0)
        assert all(len(getattr(small, s)) == 30 for s in ("forget", "retain", "neighbour", "holdout", "world"))
        assert small == select_split(data, 30, seed=0) and small != select_split(data, 30, seed=1)
        assert {e.id for e in small.neighbour} <= {e.id for e in small.retain}
        order = {e.id: i for i, e in enumerate(data.retain)}
        assert [order[e.id] for e in small.retain] == sorted(order[e.id] for e in small.retain)
        validate(small)
        assert select_split(data, None) is data and select_split(data, 10_000).retain == data.retain

    def test_subsample(self):
        items = tuple(_qa(f"s/{i}") for i in range(10))
        assert subsample(items, 20, 0) == items
        assert subsample(items, 3, 0) == subsample(items, 3, 0) and len(subsample(items, 3, 0)) == 3
