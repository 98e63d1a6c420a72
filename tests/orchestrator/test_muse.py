"""MUSE as a data source (`orchestrator/data/muse.py`) and MUSE's metrics (`orchestrator/evaluation/muse.py`).

The fake hub below lays the data out as `muse-bench/MUSE-News` and `MUSE-Books` are on the hub (dataset cards at
revisions 506bd5b / 051ba90): the same configs, split names and column names, and the same kinds of error for an
unknown config or split, so that the loader breaks here whenever it stops matching the real schema.
"""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest

from orchestrator.data import muse as muse_data
from orchestrator.data.muse import (
    MUSE_CORPORA,
    MUSE_RETRAIN_MODEL,
    MUSE_TARGET_MODEL,
    knowmem_prefix,
    knowmem_prompt,
    load_muse,
    load_muse_privleak,
)
from orchestrator.data.splits import validate
from orchestrator.errors import ConfigError
from orchestrator.evaluation import mia
from orchestrator.evaluation import muse as m

# --- a fake hub with MUSE's layout -------------------------------------------------------------------------------


def _texts(tag: str, n: int) -> list[dict]:
    return [{"text": f"{tag} article {i} first paragraph.\n\n{tag} article {i} second paragraph."} for i in range(n)]


def _qa(tag: str, n: int) -> list[dict]:
    return [{"answer": f"{tag} answer {i}", "question": f"{tag} question {i}?"} for i in range(n)]


def muse_layout(corpus: str = "news") -> dict[str, dict[str, list[dict]]]:
    """config -> split -> rows, with the real split and column names (small row counts)."""
    layout = {
        "raw": {"retain2": _texts("retain2", 4), "forget": _texts("forget", 3), "retain1": _texts("retain1", 5),
                "holdout": _texts("rawholdout", 6)},
        "verbmem": {"forget": [{"prompt": f"verbmem prompt {i}", "gt": f"verbmem continuation {i}"}
                               for i in range(4)]},
        "knowmem": {"retain_qa_icl": _qa("retain icl", 2), "retain_qa": _qa("retain", 3),
                    "forget_qa": _qa("forget", 3), "forget_qa_icl": _qa("forget icl", 2)},
        "privleak": {"retain": _texts("plretain", 2), "forget": _texts("plforget", 2),
                     "holdout": _texts("plholdout", 2)},
        "train": {"retain2": _texts("retain2", 4), "forget": _texts("forget", 3), "retain1": _texts("retain1", 5)},
    }
    if corpus == "news":
        layout["scal"] = {f"forget_{k}": _texts("forget", 3 * k) for k in range(1, 5)}
        layout["sust"] = {f"forget_{k}": _texts(f"sust{k}", 3) for k in range(1, 5)}
    return layout


def install(monkeypatch, layout: dict[str, dict[str, list[dict]]]) -> list[tuple]:
    calls: list[tuple] = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        if name not in layout:  # what `datasets` raises for an unknown config
            raise ValueError(f"BuilderConfig '{name}' not found. Available: {sorted(layout)}")
        if split not in layout[name]:  # and for an unknown split
            raise ValueError(f'Unknown split "{split}". Should be one of {list(layout[name])}.')
        return datasets.Dataset.from_list(layout[name][split])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.fixture
def fake_news(monkeypatch):
    return install(monkeypatch, muse_layout("news"))


# --- the loader ----------------------------------------------------------------------------------------------------


class TestLoadMuse:
    def test_splits(self, fake_news):
        d = load_muse("news")
        assert d.name == "muse/news"
        # Each fake document is two short paragraphs, packed into one passage at max_chars=1000.
        assert (len(d.forget), len(d.retain), len(d.holdout), len(d.neighbour), len(d.world)) == (3, 5, 2, 0, 0)
        assert all(e.kind == "text" and e.question == "" for e in d.forget + d.retain + d.holdout)
        first = d.forget[0]
        assert (first.id, first.subject) == ("muse-news/forget/0000/p0", "muse-news/forget/0000")
        assert first.answer == "forget article 0 first paragraph.\n\nforget article 0 second paragraph."
        assert {e.answer.split()[0] for e in d.retain} == {"retain1"}  # MUSE unlearns with retain1
        # PrivLeak's non-members: privleak/holdout, not raw/holdout.
        assert [e.id for e in d.holdout] == ["muse-news/privleak-holdout/0000/p0", "muse-news/privleak-holdout/0001/p0"]
        assert d.holdout[1].answer.startswith("plholdout article 1")
        assert set(fake_news) == {
            ("muse-bench/MUSE-News", "raw", "forget"), ("muse-bench/MUSE-News", "raw", "retain1"),
            ("muse-bench/MUSE-News", "privleak", "holdout"), ("muse-bench/MUSE-News", "verbmem", "forget"),
            ("muse-bench/MUSE-News", "knowmem", "forget_qa"), ("muse-bench/MUSE-News", "knowmem", "forget_qa_icl"),
            ("muse-bench/MUSE-News", "knowmem", "retain_qa"), ("muse-bench/MUSE-News", "knowmem", "retain_qa_icl"),
        }  # fmt: skip
        assert d.meta["target_model"] == "muse-bench/MUSE-news_target"
        assert d.meta["retrain_model"] == "muse-bench/MUSE-news_retrain"
        assert (d.meta["source"], d.meta["corpus"], d.meta["retain_split"], d.meta["holdout_split"]) == (
            "muse", "news", "raw/retain1", "privleak/holdout")
        assert d.training_examples() == d.forget + d.retain
        validate(d)

    def test_constants(self):
        assert MUSE_CORPORA == ("news", "books")
        assert MUSE_TARGET_MODEL == {"news": "muse-bench/MUSE-news_target", "books": "muse-bench/MUSE-books_target"}
        assert MUSE_RETRAIN_MODEL == {"news": "muse-bench/MUSE-news_retrain",
                                      "books": "muse-bench/MUSE-books_retrain"}

    def test_verbmem_probe(self, fake_news):
        probe = {p.name: p for p in load_muse("news").probes}["verbmem_forget"]
        assert (probe.kind, probe.role, probe.max_new_tokens, probe.prefix, probe.stop) == (
            "continuation", "forget", 128, "", ())
        assert len(probe.items) == 4
        item = probe.items[2]
        assert (item.id, item.prompt, item.target) == ("muse-news/verbmem/2", "verbmem prompt 2",
                                                        "verbmem continuation 2")

    def test_knowmem_probes_use_muse_icl_format(self, fake_news):
        probes = {p.name: p for p in load_muse("news").probes}
        assert list(probes) == ["verbmem_forget", "knowmem_forget", "knowmem_retain"]
        forget, retain = probes["knowmem_forget"], probes["knowmem_retain"]
        assert (forget.kind, forget.role, retain.kind, retain.role) == ("qa", "forget", "qa", "utility")
        for p in (forget, retain):
            assert p.max_new_tokens == 32 and p.stop == ("\n\n", "\nQuestion", "Question:")
        # MUSE metrics/knowmem.py: every ICL row as "Question: q\nAnswer: a\n\n", then "Question: q\nAnswer: ".
        assert forget.prefix == ("Question: forget icl question 0?\nAnswer: forget icl answer 0\n\n"
                                 "Question: forget icl question 1?\nAnswer: forget icl answer 1\n\n")
        assert retain.prefix.startswith("Question: retain icl question 0?\nAnswer: retain icl answer 0\n\n")
        item = forget.items[1]
        assert (item.id, item.prompt, item.target) == (
            "muse-news/knowmem-forget/1", "Question: forget question 1?\nAnswer: ", "forget answer 1")
        assert retain.items[0].target == "retain answer 0"
        # What `evaluate_probes` generates after: the few-shot block, then the open question.
        assert (forget.prefix + item.prompt).count("Question: ") == 3
        assert knowmem_prefix([("q", "a")]) + knowmem_prompt("r") == "Question: q\nAnswer: a\n\nQuestion: r\nAnswer: "

    def test_zero_shot_knowmem(self, fake_news):
        probes = {p.name: p for p in load_muse("news", knowmem_icl=False).probes}
        assert probes["knowmem_forget"].prefix == "" and probes["knowmem_retain"].prefix == ""
        assert not any(split.endswith("_icl") for _, _, split in fake_news)

    def test_retain2_and_raw_holdout(self, fake_news):
        d = load_muse("news", retain_split="retain2", holdout_source="raw", path="/data/MUSE-News")
        assert {e.answer.split()[0] for e in d.retain} == {"retain2"} and len(d.retain) == 4
        assert len(d.holdout) == 6 and d.holdout[0].id == "muse-news/holdout/0000/p0"
        assert {path for path, _, _ in fake_news} == {"/data/MUSE-News"}
        assert ("/data/MUSE-News", "raw", "holdout") in fake_news
        validate(d)

    def test_books_are_cut_into_passages(self, monkeypatch):
        layout = muse_layout("books")
        paragraphs = [f"Chapter paragraph {i} " + "word " * 30 for i in range(40)]  # about 180 chars each
        layout["raw"]["forget"] = [{"text": "\n\n".join(paragraphs)}, {"text": "x " * 700}]  # a book; no blank lines
        calls = install(monkeypatch, layout)
        d = load_muse("books", max_chars=400)
        assert all(len(e.answer) <= 400 for e in d.forget)
        book0 = [e for e in d.forget if e.subject == "muse-books/forget/0000"]
        assert len(book0) == 20 and book0[3].id == "muse-books/forget/0000/p3"  # two paragraphs per passage
        assert "Chapter paragraph 0" in book0[0].answer and "Chapter paragraph 39" in book0[-1].answer
        assert len([e for e in d.forget if e.subject == "muse-books/forget/0001"]) == 4  # 1400 chars cut at spaces
        assert d.meta["target_model"] == "muse-bench/MUSE-books_target" and d.meta["max_chars"] == "400"
        assert {path for path, _, _ in calls} == {"muse-bench/MUSE-Books"}

    def test_duplicate_passages_are_dropped(self, monkeypatch):
        layout = muse_layout("news")
        layout["raw"]["retain1"].append(layout["raw"]["forget"][0])  # a text both forgotten and retained
        layout["privleak"]["holdout"].append(layout["raw"]["retain1"][1])
        install(monkeypatch, layout)
        d = load_muse("news")
        assert (len(d.retain), len(d.holdout), d.meta["dropped_duplicates"]) == (5, 2, "2")
        validate(d)

    def test_unknown_corpus_fails_before_loading(self, fake_news):
        with pytest.raises(ValueError, match="news, books") as info:
            load_muse("wiki")
        assert "'wiki'" in str(info.value) and "\n" not in str(info.value)
        assert fake_news == []

    @pytest.mark.parametrize("kwargs, text", [({"retain_split": "retain3"}, "retain1, retain2"),
                                              ({"holdout_source": "train"}, "privleak, raw"),
                                              ({"max_chars": 0}, "max_chars")])
    def test_bad_options(self, fake_news, kwargs, text):
        with pytest.raises(ValueError, match=text):
            load_muse("news", **kwargs)
        assert fake_news == []

    def test_unreachable_hub_is_one_clear_line(self, monkeypatch):
        def offline(path, name=None, split=None, **kwargs):
            raise ConnectionError("Couldn't reach 'muse-bench/MUSE-News' on the Hub (LocalEntryNotFoundError)\nmore")

        monkeypatch.setattr(datasets, "load_dataset", offline)
        with pytest.raises(ConfigError) as info:
            load_muse("news")
        message = str(info.value)
        assert isinstance(info.value, ValueError) and "\n" not in message
        assert "'muse-bench/MUSE-News'" in message and "config 'raw'" in message and "split 'forget'" in message
        assert "set data.muse.path to a local copy" in message
        assert "git clone https://huggingface.co/datasets/muse-bench/MUSE-News" in message

    def test_old_split_names_fail_naming_config_and_split(self, monkeypatch):
        layout = muse_layout("news")  # the hub before the rename: knowmem retain2_qa / retain2_qa_icl
        layout["knowmem"] = {"retain2_qa_icl": _qa("r", 2), "forget_qa_icl": _qa("f", 2),
                             "retain2_qa": _qa("r", 3), "forget_qa": _qa("f", 3)}
        install(monkeypatch, layout)
        with pytest.raises(ConfigError) as info:
            load_muse("news")
        message = str(info.value)
        assert "config 'knowmem', split 'retain_qa'" in message and "Unknown split" in message
        assert "\n" not in message

    def test_wrong_columns_fail(self, monkeypatch):
        layout = muse_layout("news")
        layout["verbmem"]["forget"] = [{"text": "an old-layout verbmem row"}]
        install(monkeypatch, layout)
        with pytest.raises(ConfigError, match=r"config 'verbmem', split 'forget' lacks column\(s\) \['gt', 'prompt'\]"):
            load_muse("news")

    def test_privleak_sets(self, fake_news):
        sets = load_muse_privleak("news")
        assert {k: len(v) for k, v in sets.items()} == {"forget": 2, "retain": 2, "holdout": 2}
        assert sets["forget"][1].id == "muse-news/privleak-forget/0001"
        assert sets["holdout"][0].answer == muse_layout()["privleak"]["holdout"][0]["text"]  # uncut
        assert {split for _, config, split in fake_news if config == "privleak"} == {"forget", "retain", "holdout"}

    def test_layout_constant_matches_the_fake_hub(self):
        for config, splits in muse_data.MUSE_LAYOUT.items():
            real = muse_layout("news")[config]
            assert set(splits) == set(real), config
            for split, columns in splits.items():
                assert set(columns) == set(real[split][0]), (config, split)


# --- MUSE's metrics on hand-made numbers ----------------------------------------------------------------------------


class TestRouge:
    def test_rouge_l_f1_by_hand(self):
        """gen "the cat sat on the mat" vs ref "the cat is on the mat": LCS "the cat on the mat" = 5 tokens of 6 and
        6, so P = R = F1 = 5/6."""
        f1, recall = m.rouge_l("the cat sat on the mat", "the cat is on the mat")
        assert f1 == pytest.approx(5 / 6) and recall == pytest.approx(5 / 6)

    def test_f1_not_recall(self):
        """gen "a b" vs ref "a b c d": LCS 2, P = 2/2 = 1, R = 2/4 = 0.5, F1 = 2 P R / (P + R) = 1 / 1.5 = 2/3."""
        f1, recall = m.rouge_l("a b", "a b c d")
        assert (f1, recall) == (pytest.approx(2 / 3), pytest.approx(0.5))

    def test_muse_does_not_stem(self):
        """ref "he runs daily", gen "he running daily": no stemmer, LCS "he daily" = 2 of 3 -> F1 2/3; with the
        Porter stemmer (open-unlearning, `evaluation.rouge`) runs = running = "run", F1 1."""
        assert m.rouge_l("he running daily", "he runs daily")[0] == pytest.approx(2 / 3)
        assert m.rouge_l("he running daily", "he runs daily", stemmer=True)[0] == pytest.approx(1.0)

    def test_verbmem_and_knowmem_are_means_of_f1(self):
        """VerbMem = mean(5/6, 0) = 5/12. KnowMem cuts "Paris\\n\\nQuestion: ..." to "Paris" (F1 1) and scores
        "London" against "Rome" (F1 0): mean 0.5."""
        assert m.verbmem_score(["the cat sat on the mat", "x"], ["the cat is on the mat", "y"]) == pytest.approx(5 / 12)
        assert m.knowmem_score(["Paris\n\nQuestion: next?", "London"], ["Paris", "Rome"]) == pytest.approx(0.5)
        assert math.isnan(m.mean_rouge_l_f1([], []))
        with pytest.raises(ValueError):
            m.mean_rouge_l_f1(["a"], [])

    def test_knowmem_cut_matches_muse_and_probes(self):
        from orchestrator.evaluation.probes import cut_at_stops

        text = " Albus Dumbledore\nQuestion: who else?\n\nAnswer"
        assert m.cut_knowmem_output(text) == " Albus Dumbledore"  # before the earliest stop, not stripped
        assert cut_at_stops(text, m.KNOWMEM_STOP) == m.cut_knowmem_output(text).strip()
        assert m.cut_knowmem_output("no stop here") == "no stop here"


class _WordTokenizer:
    """Words as tokens, BOS id 1 added by `add_special_tokens=True`, as a Llama tokenizer does."""

    bos_token_id = 1

    def __init__(self, words):
        self.vocab = {w: i + 2 for i, w in enumerate(words)}
        self.inverse = {i: w for w, i in self.vocab.items()}

    def encode(self, text, add_special_tokens=True):
        return ([self.bos_token_id] if add_special_tokens else []) + [self.vocab[w] for w in text.split()]

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=True):
        return " ".join(self.inverse[i] if i in self.inverse else "<s>" for i in ids
                        if not (skip_special_tokens and i == self.bos_token_id))


class TestVerbmemReference:
    def test_cut_counts_bos(self):
        """MUSE: `tokenizer(gt, add_special_tokens=True).input_ids[:, :3]` = [BOS, a, b] -> "a b" (2 words, not 3)."""
        tok = _WordTokenizer("a b c d e".split())
        assert m.verbmem_reference(tok, "a b c d e", max_new_tokens=3) == "a b"
        assert m.verbmem_reference(tok, "a b", max_new_tokens=128) == "a b"

    def test_truncate_probe(self):
        from orchestrator.data.schema import Probe, ProbeItem

        tok = _WordTokenizer("p a b c d e".split())
        probe = Probe("verbmem_forget", "continuation", "forget", (ProbeItem("v/0", "p", "a b c d e"),),
                      max_new_tokens=4)
        cut = m.truncate_verbmem_targets(probe, tok)
        assert cut.items[0].target == "a b c" and cut.items[0].prompt == "p" and cut.max_new_tokens == 4


class TestPrivLeak:
    def test_min_k_by_hand(self):
        """log-probs [-1, -2, -3, -4, -5], k = 0.4: int(0.4 * 5) = 2 lowest are -5, -4 -> Min-40% = 4.5."""
        lp = np.array([-1.0, -2.0, -3.0, -4.0, -5.0])
        assert m.min_k_score(lp) == pytest.approx(4.5)
        assert m.min_k_score(lp) == pytest.approx(float(-np.mean(np.sort(lp)[: int(len(lp) * 0.4)])))  # MUSE's code

    def test_muse_auc_orientation_by_hand(self):
        """Loss-like scores, forget [1, 2, 3], holdout [2, 4, 5]. MUSE: roc_curve(y, -score), forget y=0, holdout
        y=1, so AUC = P(-h > -f) + ties/2 = P(h < f) + ties/2 over 9 pairs: (f=3, h=2) wins, (f=2, h=2) ties ->
        1.5 / 9 = 1/6. Ours, `membership_auc` = P(h > f) + ties/2 = 7.5 / 9 = 5/6 = 1 - 1/6."""
        forget, holdout = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 5.0])
        assert m.muse_auc(forget, holdout) == pytest.approx(1 / 6)
        assert mia.membership_auc(forget, holdout) == pytest.approx(5 / 6)
        assert m.muse_auc(forget, holdout) == pytest.approx(_muse_sweep_auc(forget, holdout))

    def test_muse_auc_matches_muse_sweep_on_random_scores(self):
        rng = np.random.default_rng(0)
        forget, holdout = rng.normal(2.0, 1.0, 40).round(1), rng.normal(2.5, 1.0, 30).round(1)  # with ties
        assert m.muse_auc(forget, holdout) == pytest.approx(_muse_sweep_auc(forget, holdout))
        assert m.muse_auc(forget, holdout) == pytest.approx(1 - mia.membership_auc(forget, holdout))

    def test_privleak_by_hand(self):
        """Unlearned AUC_MUSE 0.6, retrain 0.5: (0.6 - 0.5) / 0.5 x 100 = +20 (over-unlearning). In our orientation
        those are membership AUCs 0.4 and 0.5, and `mia.privacy_leakage` x 100 gives the same."""
        assert m.muse_privleak_from_muse_auc(0.6, 0.5) == pytest.approx(20.0)
        assert m.muse_privleak(0.4, 0.5) == pytest.approx(20.0)
        assert m.muse_privleak(0.4, 0.5) == pytest.approx(100 * mia.privacy_leakage(0.4, 0.5))

    def test_target_model_leaks_minus_100(self):
        """A model that still knows every forget text: membership AUC 1, AUC_MUSE 0; against MUSE's News retrain AUC
        0.4772: (0 - 0.4772) / 0.4772 x 100 = -100. Membership AUC 0.95 (AUC_MUSE 0.05):
        (0.05 - 0.4772) / 0.4772 x 100 = -89.52."""
        assert m.muse_privleak(1.0, corpus="news") == pytest.approx(-100.0)
        assert m.muse_privleak(0.95, corpus="news") == pytest.approx((0.05 - 0.4772) / 0.4772 * 100)
        assert m.muse_privleak(0.95, corpus="news") == pytest.approx(-89.522, abs=1e-3)
        assert m.MUSE_RETRAIN_AUC["books"] == pytest.approx(0.5393)
        with pytest.raises(ValueError, match="news, books"):
            m.muse_privleak(0.9)

    def test_summary(self):
        """Probe F1s 0.5, 0.25, 0.4 print as 50, 25, 40; membership AUCs 0.4 (unlearned) and 0.5 (retrain) give
        PrivLeak +20."""
        from orchestrator.evaluation.probes import ProbeResult

        scores = {"verbmem_forget": 0.5, "knowmem_forget": ProbeResult("knowmem_forget", "qa", "forget", 10, 0.25),
                  "knowmem_retain": {"name": "knowmem_retain", "score": 0.4}}  # as EvalReport.probes holds it
        out = m.muse_summary(scores, auc_unlearned=0.4, auc_retrain=0.5)
        assert out == pytest.approx({"verbmem_f": 50.0, "knowmem_f": 25.0, "knowmem_r": 40.0, "privleak": 20.0})
        partial = m.muse_summary({"verbmem_forget": 0.1})
        assert partial["verbmem_f"] == pytest.approx(10.0)
        assert (partial["knowmem_f"], partial["knowmem_r"], partial["privleak"]) == (None, None, None)
        assert m.muse_summary({}, auc_unlearned=1.0, corpus="books")["privleak"] == pytest.approx(-100.0)


def _muse_sweep_auc(forget: np.ndarray, holdout: np.ndarray) -> float:
    """MUSE `metrics/privleak.py::sweep` without sklearn: the ROC of `-score` with holdout positive (y = 1) and forget
    negative (y = 0), points at every distinct threshold (sklearn `roc_curve`), area by trapezoids (sklearn `auc`)."""
    y = np.array([0] * len(forget) + [1] * len(holdout))
    s = -np.concatenate([forget, holdout]).astype(np.float64)
    fpr, tpr = [0.0], [0.0]
    for t in np.unique(s)[::-1]:
        predicted = s >= t
        tpr.append(float(np.sum(predicted & (y == 1)) / np.sum(y == 1)))
        fpr.append(float(np.sum(predicted & (y == 0)) / np.sum(y == 0)))
    fpr_a, tpr_a = np.array(fpr), np.array(tpr)
    return float(np.sum((fpr_a[1:] - fpr_a[:-1]) * (tpr_a[1:] + tpr_a[:-1]) / 2))
