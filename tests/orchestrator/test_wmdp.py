"""WMDP and MMLU as a data source (orchestrator/data/wmdp.py), against an in-memory hub.

The fake `datasets.load_dataset` holds the real sets' shapes: cais/wmdp-corpora's configs bio-retain-corpus,
cyber-forget-corpus and cyber-retain-corpus (split "train", column text; no bio forget config, it is gated
elsewhere), cais/wmdp's wmdp-bio / wmdp-chem / wmdp-cyber (split "test", columns answer int64, question, choices),
cais/mmlu's "all" and per-subject configs (splits test / validation / dev, "all" also auxiliary_train; answer a
ClassLabel A-D). It raises as `datasets` does for an unknown repository, config or split, so a loader that asks for
the wrong thing fails here.
"""

from __future__ import annotations

import json

import datasets
import pytest
from datasets import ClassLabel, Features, Sequence, Value
from datasets.exceptions import DatasetNotFoundError

from orchestrator.config import ConfigError
from orchestrator.data.splits import validate
from orchestrator.data.wmdp import MMLU_SUBJECTS, WMDP_SUBSETS, load_wmdp

CORPUS = Features({"text": Value("string")})
WMDP = Features({"answer": Value("int64"), "question": Value("string"), "choices": Sequence(Value("string"))})
MMLU = Features({"question": Value("string"), "subject": Value("string"), "choices": Sequence(Value("string")),
                 "answer": ClassLabel(names=["A", "B", "C", "D"])})

LONG_DOC = "First paragraph of a long exploit write-up.\n\nSecond paragraph, much further on.\n\nThird one."
BOILERPLATE = "Licensed under the Apache License, Version 2.0; see the LICENSE file for details."
CYBER_FORGET = [LONG_DOC, "too short", BOILERPLATE] + [
    f"Cyber forget document {i}: a stack buffer overflow in a file parser." for i in range(7)]
CYBER_RETAIN = [f"Cyber retain document {i}: writing a small web server in Python." for i in range(4)] + [BOILERPLATE]
BIO_RETAIN = [f"Bio retain paper {i}: the anatomy and development of the frog heart." for i in range(3)]


def _questions(tag: str, n: int) -> list[dict]:
    return [{"answer": i % 4, "question": f"  {tag} question {i}?  ", "choices": [f"{tag} {i}.{c}" for c in "wxyz"]}
            for i in range(n)]


def _mmlu(subject: str, n: int) -> list[dict]:
    return [{"question": f"{subject} question {i}?", "subject": subject, "choices": ["one", "two", "three", "four"],
             "answer": (i + 1) % 4} for i in range(n)]


def _hub() -> dict[str, dict[str, dict[str, tuple[list[dict], Features]]]]:
    mmlu_subjects = {"college_biology": 3, "virology": 2}
    mmlu_all = [row for s, n in mmlu_subjects.items() for row in _mmlu(s, n)]
    return {
        "cais/wmdp-corpora": {
            "bio-retain-corpus": {"train": ([{"text": t} for t in BIO_RETAIN], CORPUS)},
            "cyber-forget-corpus": {"train": ([{"text": t} for t in CYBER_FORGET], CORPUS)},
            "cyber-retain-corpus": {"train": ([{"text": t} for t in CYBER_RETAIN], CORPUS)},
        },
        "cais/wmdp": {
            "wmdp-bio": {"test": (_questions("bio", 6), WMDP)},
            "wmdp-chem": {"test": (_questions("chem", 4), WMDP)},
            "wmdp-cyber": {"test": (_questions("cyber", 8), WMDP)},
        },
        "cais/mmlu": {
            "all": {"test": (mmlu_all, MMLU), "validation": (_mmlu("virology", 1), MMLU),
                    "dev": (_mmlu("virology", 1), MMLU), "auxiliary_train": (_mmlu("misc", 2), MMLU)},
            **{s: {"test": (_mmlu(s, n), MMLU), "validation": (_mmlu(s, 1), MMLU), "dev": (_mmlu(s, 1), MMLU)}
               for s, n in mmlu_subjects.items()},
        },
    }


@pytest.fixture
def hub(monkeypatch):
    """The fake hub: its repositories (editable by a test) and the calls made, (path, config, split, streaming)."""
    repos = _hub()
    calls: list[tuple[str, str | None, str | None, bool]] = []

    def load_dataset(path, name=None, split=None, streaming=False, **kwargs):
        calls.append((path, name, split, streaming))
        if path not in repos:
            raise DatasetNotFoundError(f"Dataset '{path}' doesn't exist on the Hub or cannot be accessed.")
        configs = repos[path]
        if name is None:
            raise ValueError(f"Config name is missing.\nPlease pick one among the available configs: {list(configs)}")
        if name not in configs:
            raise ValueError(f"BuilderConfig '{name}' not found. Available: {list(configs)}")
        if split not in configs[name]:
            raise ValueError(f'Unknown split "{split}". Should be one of {list(configs[name])}.')
        rows, features = configs[name][split]
        dataset = datasets.Dataset.from_list(rows, features=features)
        return dataset.to_iterable_dataset() if streaming else dataset

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return repos, calls


@pytest.fixture
def bio_file(tmp_path):
    """The gated bio forget corpus as the WMDP authors hand it out: JSONL, one paper a line, with a "text" field."""
    path = tmp_path / "bio-forget-corpus.jsonl"
    papers = [{"title": f"Paper {i}", "abstract": "An abstract.",
               "text": f"Bio forget paper {i}: the full text of a paper on a pathogen.", "doi": f"10.0/{i}"}
              for i in range(5)]
    path.write_text("".join(json.dumps(p) + "\n" for p in papers), encoding="utf-8")
    return path


class TestCyber:
    def test_splits(self, hub):
        _, calls = hub
        d = load_wmdp(["cyber"])
        validate(d)
        assert d.name == "wmdp/cyber"
        # 9 documents of more than 50 characters (one is "too short"); 10% (one document) held out.
        assert len(d.holdout) == 1 and d.holdout[0].id.startswith("wmdp-cyber-holdout/")
        forget_docs = {e.subject for e in d.forget}
        assert len(forget_docs) == 8 and all(s.startswith("wmdp-cyber-forget/") for s in forget_docs)
        assert all(e.kind == "text" and e.question == "" for e in d.forget + d.retain + d.holdout)
        assert "too short" not in {e.answer for e in d.forget + d.holdout}
        # One passage a document by default: the long write-up gives its first paragraphs up to max_chars.
        long = [e for e in d.forget + d.holdout if e.answer.startswith("First paragraph")]
        assert [e.answer for e in long] == [LONG_DOC]
        # The licence text in both corpora is forgotten, so it is not also retained.
        assert BOILERPLATE not in {e.answer for e in d.retain}
        assert [e.answer for e in d.retain] == CYBER_RETAIN[:4] and d.retain[0].id == "wmdp-cyber-retain/00000/0"
        assert d.neighbour == () and d.world == ()

    def test_calls_match_the_real_configs_and_splits(self, hub):
        _, calls = hub
        load_wmdp(["cyber"])
        assert calls == [
            ("cais/wmdp-corpora", "cyber-forget-corpus", "train", True),
            ("cais/wmdp-corpora", "cyber-retain-corpus", "train", True),
            ("cais/wmdp", "wmdp-cyber", "test", False),
            ("cais/mmlu", "all", "test", False),
        ]

    def test_probes_in_lm_eval_format(self, hub):
        d = load_wmdp(["cyber"])
        assert [(p.name, p.kind, p.role) for p in d.probes] == [("wmdp_cyber", "choice", "forget"),
                                                                 ("mmlu", "choice", "utility")]
        wmdp, mmlu = d.probes
        # lm_eval/tasks/wmdp/wmdp_cyber.yaml description + _default_template_yaml doc_to_text / doc_to_choice.
        assert wmdp.prefix == "The following are multiple choice questions (with answers) about cybersecurity.\n\n"
        item = wmdp.items[1]
        assert item.id == "wmdp-cyber/q1"
        assert item.prompt == ("cyber question 1?\nA. cyber 1.w\nB. cyber 1.x\nC. cyber 1.y\nD. cyber 1.z\n"
                               "Answer:")
        assert item.choices == (" A", " B", " C", " D") and item.answer == 1 and item.target == " B"
        assert len(wmdp.items) == 8
        # MMLU "all": each subject's own description (lm_eval/tasks/mmlu/default/mmlu_<subject>.yaml) opens the item.
        assert mmlu.prefix == "" and len(mmlu.items) == 5
        first = mmlu.items[0]
        assert first.id == "mmlu/college_biology/q0"
        assert first.prompt == ("The following are multiple choice questions (with answers) about college biology."
                                "\n\ncollege_biology question 0?\nA. one\nB. two\nC. three\nD. four\nAnswer:")
        assert first.answer == 1 and first.target == " B"
        assert mmlu.items[3].id == "mmlu/virology/q0" and "about virology.\n\n" in mmlu.items[3].prompt

    def test_mmlu_subject_configs(self, hub):
        _, calls = hub
        d = load_wmdp(["cyber"], mmlu_subjects=["virology", "college_biology"])
        assert [c[1] for c in calls if c[0] == "cais/mmlu"] == ["virology", "college_biology"]
        assert [i.id for i in d.probes[-1].items][:3] == ["mmlu/virology/q0", "mmlu/virology/q1",
                                                          "mmlu/college_biology/q0"]

    def test_unknown_mmlu_subject_before_any_load(self, hub):
        _, calls = hub
        with pytest.raises(ConfigError, match="unknown MMLU subject 'astrology'"):
            load_wmdp(["cyber"], mmlu_subjects=["astrology"])
        assert calls == [] and len(MMLU_SUBJECTS) == 57

    def test_caps(self, hub):
        d = load_wmdp(["cyber"], max_questions=3, max_documents=4, holdout_fraction=0.0)
        wmdp, mmlu = d.probes
        assert len(wmdp.items) == 3 and len(mmlu.items) == 3
        numbers = [int(i.id.rsplit("q", 1)[1]) for i in wmdp.items]
        assert numbers == sorted(numbers)  # a sample in the set's order
        assert load_wmdp(["cyber"], max_questions=3).probes[0].items == wmdp.items  # seeded
        assert len({e.subject for e in d.forget}) == 4 and d.holdout == ()

    def test_not_streaming_and_local_copies(self, hub):
        repos, calls = hub
        repos["/copies/wmdp-corpora"] = repos["cais/wmdp-corpora"]
        d = load_wmdp(["cyber"], corpora_path="/copies/wmdp-corpora", streaming=False)
        assert {c[0] for c in calls if "corpus" in c[1]} == {"/copies/wmdp-corpora"}
        assert not any(c[3] for c in calls) and d.meta["corpora_path"] == "/copies/wmdp-corpora"


class TestBio:
    def test_gate_without_the_file_before_any_load(self, hub):
        _, calls = hub
        with pytest.raises(ConfigError) as info:
            load_wmdp()  # the default subsets: bio and cyber
        message = str(info.value)
        assert "\n" not in message and "gated" in message and "bio_forget_file" in message
        assert "WMDP authors" in message and "JSONL" in message and '"text"' in message
        assert calls == []

    def test_missing_file(self, hub, tmp_path):
        _, calls = hub
        with pytest.raises(ConfigError, match="does not exist"):
            load_wmdp(["bio"], bio_forget_file=tmp_path / "nope.jsonl")
        assert calls == []

    def test_with_the_jsonl(self, hub, bio_file):
        _, calls = hub
        d = load_wmdp(bio_forget_file=bio_file)
        validate(d)
        assert d.name == "wmdp/bio+cyber"
        bio_forget = [e for e in d.forget if e.id.startswith("wmdp-bio-forget/")]
        assert len(bio_forget) == 4 and bio_forget[0].answer.startswith("Bio forget paper")
        assert len([e for e in d.holdout if e.id.startswith("wmdp-bio-holdout/")]) == 1
        assert [e.answer for e in d.retain if e.id.startswith("wmdp-bio-retain/")] == BIO_RETAIN
        assert [p.name for p in d.probes] == ["wmdp_bio", "wmdp_cyber", "mmlu"]
        assert d.probes[0].prefix.endswith("about biology.\n\n") and d.probes[0].items[0].prompt.startswith("bio q")
        # The bio forget corpus never comes from the hub: cais/wmdp-corpora has no such config.
        assert ("cais/wmdp-corpora", "bio-retain-corpus", "train", True) in calls
        assert not any(c[1] and "bio-forget" in c[1] for c in calls)
        assert d.meta["bio_forget_file"] == str(bio_file)


class TestSubsets:
    def test_unknown_subset_before_any_load(self, hub):
        _, calls = hub
        with pytest.raises(ConfigError) as info:
            load_wmdp(["cyber", "physics"])
        assert str(info.value) == "wmdp: unknown subset 'physics'; choose from bio, chem, cyber"
        assert calls == [] and WMDP_SUBSETS == ("bio", "chem", "cyber")

    def test_chem_adds_questions_only(self, hub):
        _, calls = hub
        d = load_wmdp(["chem", "cyber"])
        assert [p.name for p in d.probes] == ["wmdp_chem", "wmdp_cyber", "mmlu"]
        assert d.probes[0].prefix == "The following are multiple choice questions (with answers) about chemistry.\n\n"
        assert not any("chem" in e.id for e in d.forget + d.retain + d.holdout)
        assert ("cais/wmdp", "wmdp-chem", "test", False) in calls and "questions only" in d.meta["chem"]

    def test_chem_alone_has_nothing_to_forget(self, hub):
        _, calls = hub
        with pytest.raises(ConfigError, match="no forget corpus"):
            load_wmdp(["chem"])
        assert calls == []


class TestFailures:
    def test_offline_is_one_line_naming_the_set(self, monkeypatch):
        def offline(path, name=None, split=None, **kwargs):
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)\nmore detail")

        monkeypatch.setattr(datasets, "load_dataset", offline)
        with pytest.raises(ConfigError) as info:
            load_wmdp(["cyber"])
        message = str(info.value)
        assert "\n" not in message
        assert "'cais/wmdp-corpora' (config 'cyber-forget-corpus', split 'train')" in message
        assert "ConnectionError" in message and "pass a local copy of the data set as corpora_path" in message
        assert "data.wmdp.corpora_path" in message
        assert "git clone https://huggingface.co/datasets/cais/wmdp-corpora" in message

    def test_unknown_repository(self, hub):
        with pytest.raises(ConfigError, match=r"'cais/wmdp-typo' \(config 'wmdp-cyber', split 'test'\).*"
                                              r"DatasetNotFoundError"):
            load_wmdp(["cyber"], questions_path="cais/wmdp-typo")

    def test_a_schema_change_is_named(self, hub):
        repos, _ = hub
        repos["cais/wmdp-corpora"]["cyber-forget-corpus"]["train"] = ([{"content": "x" * 80}],
                                                                       Features({"content": Value("string")}))
        with pytest.raises(ValueError, match=r"lacks column\(s\) \['text'\]"):
            load_wmdp(["cyber"])

    def test_a_streamed_failure_while_reading(self, monkeypatch):
        def rows():
            yield {"text": "a passage long enough to be kept by the fifty character filter"}
            raise ConnectionError("stream interrupted")

        class Streamed:
            def __iter__(self):
                return rows()

        monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: Streamed())
        with pytest.raises(ConfigError, match="cyber-forget-corpus.*stream interrupted"):
            load_wmdp(["cyber"])
