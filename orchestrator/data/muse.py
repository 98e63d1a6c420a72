"""The MUSE benchmark (Shi et al. 2024, arXiv 2407.06460) as a data source: MUSE-News (BBC articles) and MUSE-Books
(the Harry Potter books), with MUSE's own evaluation sets as `Probe`s.

The hub layout read here (dataset cards `README.md` of `muse-bench/MUSE-News` at revision 506bd5b and
`muse-bench/MUSE-Books` at 051ba90; MUSE's `load_data.py` reads the same configs and splits):

| config   | splits                                               | columns            |
|----------|------------------------------------------------------|--------------------|
| raw      | forget, retain1, retain2, holdout                    | text               |
| verbmem  | forget                                               | prompt, gt         |
| knowmem  | forget_qa, forget_qa_icl, retain_qa, retain_qa_icl   | question, answer   |
| privleak | forget, retain, holdout                              | text               |
| train    | forget, retain1, retain2                             | text               |
| scal     | forget_1 .. forget_4 (News only; nested)             | text               |
| sust     | forget_1 .. forget_4 (News only; disjoint)           | text               |

(Earlier revisions named the knowmem retain splits `retain2_qa` / `retain2_qa_icl` and the privleak retain split
`retain2`: the retain-side evaluation sets are drawn from `retain2`.) News `raw` rows are articles (889 forget);
Books `raw` rows are whole books (4 forget, 12 retain1), so documents are cut into passages here.

How MUSE uses them, and so how they map onto `UnlearningData`:
- forget: `raw/forget` (MUSE `baselines/scripts/unlearn_news.sh`, `unlearn_books.sh`: FORGET=raw/forget.txt;
  open-unlearning `configs/data/datasets/MUSE_forget.yaml`).
- retain: `raw/retain1`, the retain set the unlearning methods are given (same scripts: RETAIN=raw/retain1.txt;
  open-unlearning `configs/experiment/unlearn/muse/default.yaml`: `retain_split: retain1`). `retain2` is kept from
  the unlearner and is where KnowMem's retain questions come from; `retain_split="retain2"` swaps them.
- holdout: by default `privleak/holdout`. MUSE's PrivLeak is the Min-40% AUC of *privleak* forget vs *privleak*
  holdout (MUSE `eval.py`: `privleak_auc_key='forget_holdout_Min-40%'` over `privleak/{forget,holdout}`;
  open-unlearning `configs/data/datasets/MUSE_MIA.yaml`), and our evaluation computes its MIA AUC on forget vs
  holdout, so the holdout is MUSE's non-member set. `holdout_source="raw"` takes `raw/holdout` (3,043 News articles)
  instead. `load_muse_privleak` returns the three privleak sets uncut, for a PrivLeak on MUSE's exact texts.
- probes (never trained on): `verbmem_forget` (continuation: `prompt` -> `gt`, 128 new tokens: MUSE `eval.py`
  `verbmem_max_new_tokens=128`), `knowmem_forget` and `knowmem_retain` (qa, 32 new tokens, cut at "\\n\\n",
  "\\nQuestion", "Question:": MUSE `metrics/knowmem.py`; open-unlearning `configs/eval/muse_metrics/
  forget_knowmem_ROUGE.yaml`). KnowMem's prompt is MUSE's few-shot format (`metrics/knowmem.py`): every row of the
  `*_qa_icl` split as "Question: {q}\\nAnswer: {a}\\n\\n" (the probe's `prefix`), then "Question: {q}\\nAnswer: "
  (the item's `prompt`; `evaluate_probes` puts no template around it).

Ids: "muse-news/forget/0012/p3" (row 12 of the split, passage 3), subject "muse-news/forget/0012" (the article or
book); holdout ids start "muse-news/privleak-holdout/" or "muse-news/holdout/". Probe items: "muse-news/verbmem/7",
"muse-news/knowmem-forget/7", "muse-news/knowmem-retain/7".

MUSE's target and retrain models (Llama-2-7B fine-tunes; tokenizer meta-llama/Llama-2-7b-hf) are named in
`MUSE_TARGET_MODEL` / `MUSE_RETRAIN_MODEL` and in `data.meta`. Their hub names spell the corpus in lower case
(`muse-bench/MUSE-news_target`); MUSE's README and open-unlearning write `MUSE-News_target`, which the hub resolves
to the same repository.
"""

from __future__ import annotations

from typing import Any, Sequence

from orchestrator.data.config import MUSE_MODELS, MUSE_TOKENIZER
from orchestrator.data.schema import Example, Probe, ProbeItem, UnlearningData
from orchestrator.data.text_corpus import split_passages
from orchestrator.errors import ConfigError

MUSE_CORPORA: tuple[str, ...] = ("news", "books")
_TITLE = {"news": "News", "books": "Books"}
MUSE_PATHS: dict[str, str] = {c: f"muse-bench/MUSE-{_TITLE[c]}" for c in MUSE_CORPORA}
MUSE_TARGET_MODEL: dict[str, str] = {c: MUSE_MODELS[c][0] for c in MUSE_CORPORA}
MUSE_RETRAIN_MODEL: dict[str, str] = {c: MUSE_MODELS[c][1] for c in MUSE_CORPORA}

RETAIN_SPLITS = ("retain1", "retain2")
HOLDOUT_SOURCES = ("privleak", "raw")
VERBMEM_MAX_NEW_TOKENS = 128  # MUSE eval.py `verbmem_max_new_tokens`
KNOWMEM_MAX_NEW_TOKENS = 32  # MUSE eval.py `knowmem_max_new_tokens`
KNOWMEM_STOP: tuple[str, ...] = ("\n\n", "\nQuestion", "Question:")  # MUSE metrics/knowmem.py

TEXT = ("text",)
QA = ("question", "answer")
# config -> split -> columns, as on the hub (see the module doc); `load_muse` reads only the splits it needs.
MUSE_LAYOUT: dict[str, dict[str, tuple[str, ...]]] = {
    "raw": {"forget": TEXT, "retain1": TEXT, "retain2": TEXT, "holdout": TEXT},
    "verbmem": {"forget": ("prompt", "gt")},
    "knowmem": {"forget_qa": QA, "forget_qa_icl": QA, "retain_qa": QA, "retain_qa_icl": QA},
    "privleak": {"forget": TEXT, "retain": TEXT, "holdout": TEXT},
    "train": {"forget": TEXT, "retain1": TEXT, "retain2": TEXT},
}


def knowmem_prompt(question: str) -> str:
    """One KnowMem question as MUSE puts it (`metrics/knowmem.py`): "Question: {q}\\nAnswer: "."""
    return f"Question: {question}\nAnswer: "


def knowmem_prefix(examples: Sequence[tuple[str, str]]) -> str:
    """MUSE's in-context examples: "Question: {q}\\nAnswer: {a}\\n\\n" for each (q, a), in order."""
    return "".join(f"{knowmem_prompt(q)}{a}\n\n" for q, a in examples)


def load_muse(
    corpus: str,
    path: str | None = None,
    *,
    knowmem_icl: bool = True,
    max_chars: int = 1000,
    retain_split: str = "retain1",
    holdout_source: str = "privleak",
) -> UnlearningData:
    """MUSE-News or MUSE-Books as `UnlearningData`, its VerbMem and KnowMem sets as probes (see the module doc).

    `path`: a hub id or a local copy of the dataset repository (`git clone
    https://huggingface.co/datasets/muse-bench/MUSE-News`), passed to `datasets.load_dataset(path, config,
    split=split)`; default `MUSE_PATHS[corpus]`. `max_chars`: documents are cut into passages of at most this many
    characters (`text_corpus.split_passages`), so that a passage fits the token budget of a training row.
    `knowmem_icl=False` drops the in-context examples (zero-shot KnowMem; MUSE always uses them).

    A passage of retain or holdout that is also, word for word, a passage of an earlier split (forget, then retain)
    is dropped, so that no text is both forgotten and kept; the count is in `meta["dropped_duplicates"]`.
    """
    if corpus not in MUSE_CORPORA:
        raise ValueError(f"MUSE corpus must be one of {', '.join(MUSE_CORPORA)}, got {corpus!r}")
    if retain_split not in RETAIN_SPLITS:
        raise ValueError(f"MUSE retain_split must be one of {', '.join(RETAIN_SPLITS)}, got {retain_split!r}")
    if holdout_source not in HOLDOUT_SOURCES:
        raise ValueError(f"MUSE holdout_source must be one of {', '.join(HOLDOUT_SOURCES)}, got {holdout_source!r}")
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    path = path or MUSE_PATHS[corpus]
    tag = f"muse-{corpus}"

    forget = _passages(load_muse_rows(path, "raw", "forget"), f"{tag}/forget", max_chars)
    retain = _passages(load_muse_rows(path, "raw", retain_split), f"{tag}/{retain_split}", max_chars)
    holdout_config = "privleak" if holdout_source == "privleak" else "raw"
    holdout_role = "privleak-holdout" if holdout_source == "privleak" else "holdout"
    holdout = _passages(load_muse_rows(path, holdout_config, "holdout"), f"{tag}/{holdout_role}", max_chars)
    seen = {e.answer for e in forget}
    retain, dropped_retain = _drop_seen(retain, seen)
    seen |= {e.answer for e in retain}
    holdout, dropped_holdout = _drop_seen(holdout, seen)

    probes = (
        _verbmem_probe(path, tag),
        _knowmem_probe(path, tag, "forget", "forget", knowmem_icl),
        _knowmem_probe(path, tag, "retain", "utility", knowmem_icl),
    )
    return UnlearningData(
        name=f"muse/{corpus}",
        forget=forget,
        retain=retain,
        holdout=holdout,
        probes=probes,
        meta={
            "source": "muse",
            "corpus": corpus,
            "path": path,
            "forget_split": "raw/forget",
            "retain_split": f"raw/{retain_split}",
            "holdout_split": f"{holdout_config}/holdout",
            "max_chars": str(max_chars),
            "knowmem_icl": str(knowmem_icl).lower(),
            "target_model": MUSE_TARGET_MODEL[corpus],
            "retrain_model": MUSE_RETRAIN_MODEL[corpus],
            "tokenizer": MUSE_TOKENIZER,
            "dropped_duplicates": str(dropped_retain + dropped_holdout),
        },
    )


def load_muse_privleak(corpus: str, path: str | None = None) -> dict[str, tuple[Example, ...]]:
    """MUSE's PrivLeak sets, `privleak/{forget,retain,holdout}`, one uncut text Example per row (MUSE scores each
    whole text: `metrics/privleak.py`). Ids "muse-news/privleak-forget/0003"; keys "forget", "retain", "holdout".

    PrivLeak compares Min-40% on `forget` (members) with `holdout` (non-members); `retain` is MUSE's third set
    (members the unlearned model should keep), scored in MUSE's full AUC table only.
    """
    if corpus not in MUSE_CORPORA:
        raise ValueError(f"MUSE corpus must be one of {', '.join(MUSE_CORPORA)}, got {corpus!r}")
    path = path or MUSE_PATHS[corpus]
    out = {}
    for split in ("forget", "retain", "holdout"):
        texts = _texts(load_muse_rows(path, "privleak", split), path, "privleak", split)
        role = f"muse-{corpus}/privleak-{split}"
        out[split] = tuple(
            Example(id=f"{role}/{i:04d}", question="", answer=text, subject=f"{role}/{i:04d}", kind="text")
            for i, text in texts
        )
    return out


def load_muse_rows(path: str, config: str, split: str, path_key: str = "data.muse.path") -> list[dict[str, Any]]:
    """One MUSE split's rows. Any failure to load (no network, gated, no such config or split) and any missing column
    becomes a one-line ConfigError (a ValueError) naming the data set, config and split, and `path_key`, the config
    key that points the loader at a local copy."""
    import datasets  # heavy; only the loaders need it

    columns = MUSE_LAYOUT.get(config, {}).get(split)
    try:
        rows = datasets.load_dataset(path, config, split=split).to_list()
    except Exception as exc:  # hub, cache and builder errors come in many types; all mean "could not load"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(
            f"could not load the MUSE data set {path!r} (config {config!r}, split {split!r}: "
            f"{type(exc).__name__}: {reason}); without hub access, set {path_key} to a local copy "
            f"(git clone https://huggingface.co/datasets/{_hub_id(path)})"
        ) from exc
    if not rows:
        raise ConfigError(f"MUSE data set {path!r}, config {config!r}, split {split!r} has no rows")
    missing = sorted(set(columns or ()) - set(rows[0]))
    if missing:
        raise ConfigError(
            f"MUSE data set {path!r}, config {config!r}, split {split!r} lacks column(s) {missing} "
            f"(has {sorted(rows[0])}); is {path!r} a copy of muse-bench/MUSE-News or MUSE-Books?"
        )
    return rows


def _hub_id(path: str) -> str:
    return path if path in MUSE_PATHS.values() else "muse-bench/MUSE-News (or MUSE-Books)"


def _texts(rows: list[dict[str, Any]], path: str, config: str, split: str) -> list[tuple[int, str]]:
    """(row index, text) of the rows with a non-blank string "text"; an error if there are none."""
    texts = [(i, row["text"]) for i, row in enumerate(rows) if isinstance(row.get("text"), str) and row["text"].strip()]
    if not texts:
        raise ConfigError(f"MUSE data set {path!r}, config {config!r}, split {split!r} has no non-empty 'text' rows")
    return texts


def _passages(rows: list[dict[str, Any]], role: str, max_chars: int) -> tuple[Example, ...]:
    examples = []
    for i, row in enumerate(rows):
        text = row.get("text")
        if not isinstance(text, str):
            continue
        subject = f"{role}/{i:04d}"
        for n, passage in enumerate(split_passages(text, max_chars)):
            examples.append(Example(id=f"{subject}/p{n}", question="", answer=passage, subject=subject, kind="text"))
    if not examples:
        raise ConfigError(f"MUSE split {role!r} has no text to make passages of")
    return tuple(examples)


def _drop_seen(examples: tuple[Example, ...], seen: set[str]) -> tuple[tuple[Example, ...], int]:
    kept = tuple(e for e in examples if e.answer not in seen)
    return kept, len(examples) - len(kept)


def _verbmem_probe(path: str, tag: str) -> Probe:
    rows = load_muse_rows(path, "verbmem", "forget")
    items = tuple(
        ProbeItem(id=f"{tag}/verbmem/{i}", prompt=row["prompt"], target=row["gt"])
        for i, row in enumerate(rows)
        if isinstance(row.get("prompt"), str) and isinstance(row.get("gt"), str) and row["prompt"] and row["gt"]
    )
    if not items:
        raise ConfigError(f"MUSE data set {path!r}, config 'verbmem', split 'forget' has no prompt/gt rows")
    return Probe(name="verbmem_forget", kind="continuation", role="forget", items=items,
                 max_new_tokens=VERBMEM_MAX_NEW_TOKENS)


def _knowmem_probe(path: str, tag: str, side: str, role: str, icl: bool) -> Probe:
    rows = _qa_rows(path, f"{side}_qa")
    items = tuple(
        ProbeItem(id=f"{tag}/knowmem-{side}/{i}", prompt=knowmem_prompt(q), target=a) for i, (q, a) in enumerate(rows)
    )
    prefix = knowmem_prefix(_qa_rows(path, f"{side}_qa_icl")) if icl else ""
    return Probe(name=f"knowmem_{side}", kind="qa", role=role, items=items,  # type: ignore[arg-type]
                 prefix=prefix, max_new_tokens=KNOWMEM_MAX_NEW_TOKENS, stop=KNOWMEM_STOP)


def _qa_rows(path: str, split: str) -> list[tuple[str, str]]:
    rows = [
        (row["question"], row["answer"])
        for row in load_muse_rows(path, "knowmem", split)
        if isinstance(row.get("question"), str) and isinstance(row.get("answer"), str)
    ]
    if not rows:
        raise ConfigError(f"MUSE data set {path!r}, config 'knowmem', split {split!r} has no question/answer rows")
    return rows
