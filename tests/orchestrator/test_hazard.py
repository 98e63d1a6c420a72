"""The embedded hazardous-skill problem (orchestrator/data/hazard.py): deterministic, selective, answerable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.data.hazard import (
    ATTRIBUTES, HAZARD_SUBFIELD, MAX_PASSAGE_CHARS, NEIGHBOUR_SUBFIELDS, make_hazard_data,
)
from orchestrator.data.splits import validate

REPO = Path(__file__).resolve().parents[2]
POOLS = {a.name: set(a.values) for a in ATTRIBUTES}


@pytest.fixture(scope="module")
def data():
    return make_hazard_data()


def _text(examples) -> str:
    return "\n".join(e.answer for e in examples)


def _is_value(text: str, value: str) -> bool:
    """`value` stated as a value in `text`: a whole phrase after a space (not part of a longer word)."""
    return re.search(rf" {re.escape(value)}(?=[ .])", text) is not None


class TestDeterminism:
    def test_same_seed_same_data_other_seed_other_data(self, data):
        assert make_hazard_data(seed=0) == data
        other = make_hazard_data(seed=1)
        assert [e.answer for e in other.forget] != [e.answer for e in data.forget]
        assert [i.prompt for i in other.probes[0].items] != [i.prompt for i in data.probes[0].items]

    def test_identical_in_a_fresh_process_with_another_hash_seed(self, data):
        code = ("from orchestrator.data.hazard import make_hazard_data; d = make_hazard_data(); "
                "print(repr((d.forget, d.retain, d.holdout, d.probes)))")
        env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                             check=True).stdout.strip()
        assert out == repr((data.forget, data.retain, data.holdout, data.probes))


class TestSplits:
    def test_sizes_and_disjoint(self, data):
        validate(data)
        assert (len(data.forget), len(data.retain), len(data.holdout), len(data.neighbour)) == (10, 30, 10, 10)
        texts = [e.answer for e in data.forget + data.retain + data.holdout]
        assert len(set(texts)) == len(texts)
        subjects = [{e.subject for e in split} for split in (data.forget, data.retain, data.holdout)]
        assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
        assert {e.id for e in data.neighbour} <= {e.id for e in data.retain}
        assert all(e.kind == "text" and e.question == "" for e in data.forget + data.retain + data.holdout)

    def test_subfields(self, data):
        assert all(f"of {HAZARD_SUBFIELD}." in e.answer for e in data.forget + data.holdout)
        assert not any(HAZARD_SUBFIELD in e.answer for e in data.retain)
        neighbours = NEIGHBOUR_SUBFIELDS[:3]
        assert Counter(next(s for s in neighbours if s in e.answer) for e in data.retain) == {s: 10 for s in neighbours}
        assert all(NEIGHBOUR_SUBFIELDS[0] in e.answer for e in data.neighbour)

    def test_passages_within_length(self, data):
        assert max(len(e.answer) for e in data.forget + data.retain + data.holdout) <= MAX_PASSAGE_CHARS
        for k in range(1, len(ATTRIBUTES) + 1):
            d = make_hazard_data(facts_per_passage=k)
            assert max(len(e.answer) for e in d.forget + d.retain + d.holdout) <= MAX_PASSAGE_CHARS

    def test_same_style_on_both_sides(self, data):
        """Hazardous and neighbouring passages are written from the same sentence shapes and share most values."""
        shapes = [re.compile(re.escape(a.sentence).replace(re.escape("{entity}"), r"[A-Z][a-z]+")
                             .replace(re.escape("{value}"), "(.+)")) for a in ATTRIBUTES]

        def used(examples):
            kinds, values = set(), set()
            for e in examples:
                for sentence in re.split(r"(?<=\.) ", e.answer)[1:]:  # after the introduction
                    k, match = next((k, m) for k, shape in enumerate(shapes) if (m := shape.fullmatch(sentence)))
                    kinds.add(k)
                    values.add(match.group(1))
            return kinds, values

        (forget_kinds, forget_values), (retain_kinds, retain_values) = used(data.forget), used(data.retain)
        assert forget_kinds <= retain_kinds
        assert len(forget_values & retain_values) >= 0.6 * len(forget_values)

    def test_meta(self, data):
        assert data.name == "hazard" and data.meta["source"] == "hazard" and data.meta["chance"] == "0.25"
        assert data.meta["hazard_subfield"] == HAZARD_SUBFIELD and data.meta["question_style"] == "cloze"


class TestProbes:
    def test_roles_and_sizes(self, data):
        assert [(p.name, p.kind, p.role, len(p.items)) for p in data.probes] == [
            ("hazard", "choice", "forget", 40), ("neighbour", "choice", "utility", 120)]

    @pytest.mark.parametrize("name, own, other", [("hazard", "forget", "retain"), ("neighbour", "retain", "forget")])
    def test_answer_is_in_its_own_corpus_only(self, data, name, own, other):
        """A prompt is a passage's introduction and then one of its sentences up to the value."""
        probe = next(p for p in data.probes if p.name == name)
        passages = {e.answer.split(". ", 1)[0] + ".": e.answer for e in getattr(data, own)}
        other_text = _text(getattr(data, other) + data.holdout)
        for item in probe.items:
            intro, cloze = item.prompt.split(". ", 1)
            passage = passages[intro + "."]  # the introduction opens a passage of its own corpus
            assert re.search(re.escape(f" {cloze}{item.target}") + "[ .]", passage)
            # The sentence names one substance and one fact: wherever it occurs in training, the right value follows.
            own_text = _text(getattr(data, own))
            for at in (m.end() for m in re.finditer(re.escape(cloze + " "), own_text)):
                assert re.match(re.escape(item.target) + "[ .]", own_text[at - 1:])
            assert cloze not in other_text and intro not in other_text
            for wrong in (c for k, c in enumerate(item.choices) if k != item.answer):
                assert not re.search(re.escape(f" {cloze}{wrong}") + "[ .]", passage)

    def test_choices(self, data):
        retain = _text(data.retain)
        for probe in data.probes:
            for item in probe.items:
                assert len(item.choices) == 4 and len(set(item.choices)) == 4
                assert item.choices[item.answer] == item.target
                assert all(c.startswith(" ") for c in item.choices)
                kind = item.id.rsplit("/", 1)[1]
                assert {c.strip() for c in item.choices} <= POOLS[kind]  # four values of the fact's own kind
                # No choice is a stranger: the retain corpus states every one of them (for some substance), so
                # familiarity alone picks none, and a model that knows only the retain corpus is at chance on hazard.
                assert all(_is_value(retain, c.strip()) for c in item.choices)

    @pytest.mark.parametrize("n_hazard, n_neighbour", [(40, 120), (13, 30), (7, 5)])
    def test_answers_balanced_over_positions(self, n_hazard, n_neighbour):
        d = make_hazard_data(seed=3, n_hazard_facts=n_hazard, n_neighbour_facts=n_neighbour)
        for probe, n in zip(d.probes, (n_hazard, n_neighbour)):
            counts = Counter(item.answer for item in probe.items)
            assert sum(counts.values()) == n
            assert max(counts[k] for k in range(4)) - min(counts[k] for k in range(4)) <= 1

    def test_question_style_asks_the_same_facts(self, data):
        asked = make_hazard_data(question_style="question")
        assert asked.forget == data.forget and asked.retain == data.retain
        for cloze, question in zip(data.probes[0].items, asked.probes[0].items):
            assert (question.id, question.choices, question.answer) == (cloze.id, cloze.choices, cloze.answer)
            assert question.prompt.startswith("Question: ") and question.prompt.endswith("?\nAnswer:")
            assert cloze.prompt.split(" ")[0] in question.prompt  # the substance is named

    def test_holdout_is_never_asked(self, data):
        holdout_substances = {e.subject.split("/")[1] for e in data.holdout}
        asked = {i.id.split("/")[1] for p in data.probes for i in p.items}
        assert holdout_substances and not holdout_substances & asked


class TestArguments:
    @pytest.mark.parametrize("kwargs, match", [
        (dict(facts_per_passage=0), "facts_per_passage"),
        (dict(facts_per_passage=len(ATTRIBUTES) + 1), "facts_per_passage"),
        (dict(n_neighbour_subfields=0), "n_neighbour_subfields"),
        (dict(n_hazard_facts=0), "n_hazard_facts"),
        (dict(question_style="letters"), "cloze, question"),
    ])
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            make_hazard_data(**kwargs)

    def test_no_holdout(self):
        d = make_hazard_data(n_holdout_facts=0)
        assert d.holdout == () and len(d.forget) == 10
