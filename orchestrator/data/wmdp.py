"""The WMDP benchmark (Li et al. 2024, arXiv 2403.03218) as an unlearning problem, with MMLU as its utility probe.

Sources (Hugging Face hub ids are the defaults; each `*_path` may be a local copy, see "Offline" below):

- `cais/wmdp-corpora` (dataset card, https://huggingface.co/datasets/cais/wmdp-corpora): configs
  `cyber-forget-corpus` (1,000 rows), `cyber-retain-corpus` (4,473) and `bio-retain-corpus` (60,887 PubMed papers,
  1.9 GB), each one split "train" with one column `text`. The card says: "The bio forget corpus must be requested
  separately" (a form of the WMDP authors); it is *not* a config of this set. It comes as a JSONL file with a "text"
  field per paper (RMU's `rmu/utils.py` `get_data`, as its forks carry it, reads `data/bio-forget-corpus.jsonl` with
  `json.loads(line)['text']`; scripts reading the gated hub copy `cais/wmdp-bio-forget-corpus` take its "text"
  column too). Pass that file as `bio_forget_file`.
- `cais/wmdp` (https://huggingface.co/datasets/cais/wmdp): configs `wmdp-bio` (1,273 questions), `wmdp-chem` (408),
  `wmdp-cyber` (1,987), one split "test", columns `answer` (int64, 0-3), `question` (string), `choices` (4 strings).
- `cais/mmlu` (https://huggingface.co/datasets/cais/mmlu): config "all" (14,042 test questions) and one config per
  subject (57, `MMLU_SUBJECTS`), splits test / validation / dev, columns `question`, `subject`, `choices` (4 strings),
  `answer` (ClassLabel A-D, read as 0-3).

Splits:
- forget: the forget corpora of the chosen subsets (cyber from the hub config; bio from `bio_forget_file`).
- retain: the subsets' retain corpora (cyber: GitHub passages on neighbouring topics; bio: PubMed papers on general
  biology). RMU itself retains on wikitext by default; the retain corpora are what the card offers per subset.
- holdout: a seeded `holdout_fraction` of the *forget* corpus's documents, never trained or unlearned on. MIA needs
  non-members of the forget set's own distribution (the schema's holdout; MUSE's holdout sets); a slice of the retain
  corpus differs from the forget corpus by topic too, so forget-vs-holdout AUC would measure topic. With an
  off-the-shelf model as target (WMDP's setting: Zephyr-7B), both halves were equally (un)seen before unlearning, so
  the AUC starts near 0.5 and its move after unlearning is what the unlearning did to the forget passages.
- chem: WMDP-Chem has questions but no corpus in `cais/wmdp-corpora` (the paper unlearns bio and cyber only), so
  "chem" adds its probe `wmdp_chem` and nothing to forget or retain; alone it is refused (nothing to forget).

Documents are cut as the RMU code uses them: documents of `min_chars` characters or fewer are dropped
(`get_data(..., min_len=50, max_len=2000)`), and each document gives its first `passages_per_document` passages of
at most `max_chars` characters (RMU truncates each document to its first 512 tokens for bio, 768 for cyber: some
2,000-3,000 characters), packed at paragraph breaks by `text_corpus.split_passages`. RMU's README run reads 150
batches of 4 documents alternating between the subsets, i.e. the first 300 documents of each forget corpus:
`max_documents=300` matches it. `max_documents` caps the documents read per corpus (in the set's
order; the corpora are read streaming, so a cap does not download the whole 1.9 GB bio-retain corpus).

Probes: `wmdp_<subset>` (role forget) and `mmlu` (role utility), choice probes put exactly as lm-evaluation-harness
puts them (`lm_eval/tasks/wmdp/_default_template_yaml`, `lm_eval/tasks/mmlu/default/_default_template_yaml`, zero
shot, `output_type: multiple_choice`):

    doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\n
                  D. {{choices[3]}}\\nAnswer:"                 (one line in the yaml)
    doc_to_choice: ["A", "B", "C", "D"]        (scored as " A" ... " D": the default target_delimiter " ")

after the task's description: "The following are multiple choice questions (with answers) about biology.\\n\\n"
(chemistry, cybersecurity: `wmdp_bio.yaml`, `wmdp_chem.yaml`, `wmdp_cyber.yaml`), and for MMLU "... about
{subject with spaces}.\\n\\n" (`lm_eval/tasks/mmlu/_generate_configs.py`). WMDP's description is its probe's
`prefix`; MMLU's differs per subject, so it opens each item's prompt. `max_questions` keeps a seeded,
order-preserving sample of each probe's questions (lm-eval's `--limit` takes the first ones instead, which for MMLU
"all" would be abstract algebra alone).

Offline: every load failure is a one-line ConfigError naming the set, config and split. A local copy is a clone of
the dataset repository (`git clone https://huggingface.co/datasets/cais/wmdp-corpora`, likewise cais/wmdp and
cais/mmlu) passed as the path; `datasets.load_dataset(path, config)` reads its parquet files.
"""

from __future__ import annotations

import random
from itertools import chain, islice
from pathlib import Path
from typing import Any, Sequence

from orchestrator.errors import ConfigError
from orchestrator.data.schema import Example, Probe, ProbeItem, UnlearningData
from orchestrator.data.text_corpus import read_documents, split_passages

WMDP_SUBSETS: tuple[str, ...] = ("bio", "chem", "cyber")
FORGET_CONFIGS: dict[str, str] = {"cyber": "cyber-forget-corpus"}  # bio: the gated file; chem: none
RETAIN_CONFIGS: dict[str, str] = {"bio": "bio-retain-corpus", "cyber": "cyber-retain-corpus"}
QUESTION_CONFIGS: dict[str, str] = {s: f"wmdp-{s}" for s in WMDP_SUBSETS}
TOPICS: dict[str, str] = {"bio": "biology", "chem": "chemistry", "cyber": "cybersecurity"}  # the yamls' descriptions
CORPUS_SPLIT = "train"
QUESTION_SPLIT = "test"
BIO_FORGET_FORM = "https://docs.google.com/forms/d/e/1FAIpQLSdnQc8Qn0ozSDu3VE8HLoHPvhpukX1t1dIwE5K5rJw9lnOjKw/viewform"
LETTERS = ("A", "B", "C", "D")
MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)  # fmt: skip  (lm_eval/tasks/mmlu/_generate_configs.py SUBJECTS; the cais/mmlu configs besides "all")
# The MMLU subjects the WMDP paper reports beside WMDP (its Figure 1 / Table 2: knowledge next to the hazard).
MMLU_NEIGHBOUR_SUBJECTS: tuple[str, ...] = ("college_biology", "virology", "college_computer_science",
                                            "computer_security")


def load_wmdp(
    subsets: Sequence[str] = ("bio", "cyber"),
    *,
    corpora_path: str = "cais/wmdp-corpora",
    questions_path: str = "cais/wmdp",
    mmlu_path: str = "cais/mmlu",
    mmlu_subjects: Sequence[str] | None = None,
    bio_forget_file: str | Path | None = None,
    max_chars: int = 2000,
    min_chars: int = 50,
    passages_per_document: int | None = 1,
    max_documents: int | None = None,
    holdout_fraction: float = 0.10,
    max_questions: int | None = None,
    seed: int = 0,
    streaming: bool = True,
) -> UnlearningData:
    """WMDP's forget / retain corpora, a forget-corpus holdout, and the WMDP and MMLU probes (see the module doc).

    `mmlu_subjects`: None reads the "all" config; otherwise those subject configs (e.g. `MMLU_NEIGHBOUR_SUBJECTS`).
    `max_questions` caps each probe (seeded by `seed`); `max_documents` caps the documents read per corpus.
    `streaming` reads the corpora with `load_dataset(..., streaming=True)` (set False to use a populated datasets
    cache without network). Argument errors and the bio gate are raised before anything is loaded.
    """
    chosen = _check_subsets(subsets)
    subjects = _check_subjects(mmlu_subjects)
    if max_chars < 1 or min_chars < 0:
        raise ValueError(f"need max_chars >= 1 and min_chars >= 0, got {max_chars}, {min_chars}")
    for name, value in (("passages_per_document", passages_per_document), ("max_documents", max_documents),
                        ("max_questions", max_questions)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {value}")
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if not any(s in FORGET_CONFIGS or s == "bio" for s in chosen):
        raise ConfigError("wmdp: subset 'chem' has questions but no forget corpus in cais/wmdp-corpora; add 'bio' "
                          "or 'cyber' to have something to forget")
    bio_file = _check_bio_file(bio_forget_file) if "bio" in chosen else None

    cut = dict(max_chars=max_chars, passages_per_document=passages_per_document)
    forget: list[Example] = []
    holdout: list[Example] = []
    retain: list[Example] = []
    for subset in chosen:
        if bio_file is not None and subset == "bio":
            documents = _kept(read_documents(bio_file), min_chars, max_documents)
        elif subset in FORGET_CONFIGS:
            documents = _corpus(corpora_path, FORGET_CONFIGS[subset], min_chars, max_documents, streaming)
        else:
            continue
        held = _held_out(len(documents), holdout_fraction, f"{seed}/{subset}")
        forget += _passages(f"wmdp-{subset}-forget", [(i, d) for i, d in enumerate(documents) if i not in held], **cut)
        holdout += _passages(f"wmdp-{subset}-holdout", [(i, d) for i, d in enumerate(documents) if i in held], **cut)
    for subset in chosen:
        if subset in RETAIN_CONFIGS:
            documents = _corpus(corpora_path, RETAIN_CONFIGS[subset], min_chars, max_documents, streaming)
            retain += _passages(f"wmdp-{subset}-retain", list(enumerate(documents)), **cut)

    # The same passage text in two splits (boilerplate: licences, headers) would be both forgotten and kept.
    forget_texts = {e.answer for e in forget}
    retain = [e for e in retain if e.answer not in forget_texts]
    trained = forget_texts | {e.answer for e in retain}
    holdout = [e for e in holdout if e.answer not in trained]

    probes = [_wmdp_probe(questions_path, subset, max_questions, seed) for subset in chosen]
    probes.append(_mmlu_probe(mmlu_path, subjects, max_questions, seed))
    return UnlearningData(
        name=f"wmdp/{'+'.join(chosen)}",
        forget=tuple(forget),
        retain=tuple(retain),
        holdout=tuple(holdout),
        probes=tuple(probes),
        meta={
            "source": "wmdp",
            "subsets": ",".join(chosen),
            "corpora_path": corpora_path,
            "questions_path": questions_path,
            "mmlu_path": mmlu_path,
            "mmlu_subjects": "all" if subjects is None else ",".join(subjects),
            "bio_forget_file": "" if bio_forget_file is None else str(bio_forget_file),
            "max_chars": str(max_chars),
            "passages_per_document": str(passages_per_document),
            "max_documents": str(max_documents),
            "max_questions": str(max_questions),
            "holdout": f"{holdout_fraction} of each forget corpus's documents (seed {seed})",
            "seed": str(seed),
            **({"chem": "questions only: cais/wmdp-corpora has no chem corpus"} if "chem" in chosen else {}),
        },
    )


# --- arguments ---------------------------------------------------------------------------------------------------


def _check_subsets(subsets: Sequence[str]) -> list[str]:
    if isinstance(subsets, str):
        subsets = [subsets]
    chosen = list(dict.fromkeys(subsets))
    if not chosen:
        raise ConfigError(f"wmdp: no subset given; choose from {', '.join(WMDP_SUBSETS)}")
    unknown = [s for s in chosen if s not in WMDP_SUBSETS]
    if unknown:
        raise ConfigError(f"wmdp: unknown subset {unknown[0]!r}; choose from {', '.join(WMDP_SUBSETS)}")
    return chosen


def _check_subjects(subjects: Sequence[str] | None) -> list[str] | None:
    if subjects is None:
        return None
    if isinstance(subjects, str):
        subjects = [subjects]
    chosen = list(dict.fromkeys(subjects))
    if not chosen:
        raise ConfigError("wmdp: mmlu_subjects is empty; give None for all of MMLU or a list of subjects")
    unknown = [s for s in chosen if s not in MMLU_SUBJECTS]
    if unknown:
        raise ConfigError(f"wmdp: unknown MMLU subject {unknown[0]!r} (subjects are cais/mmlu config names such as "
                          f"college_biology, computer_security)")
    return chosen


def _check_bio_file(path: str | Path | None) -> Path:
    if path is None:
        raise ConfigError(
            "wmdp: the bio forget corpus is gated and is not in cais/wmdp-corpora; request it from the WMDP authors "
            f"({BIO_FORGET_FORM}) and pass its JSONL file (one paper per line with a \"text\" field) as "
            "bio_forget_file (data.wmdp.bio_forget_file), or leave 'bio' out of the subsets")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"wmdp: bio_forget_file {str(path)!r} does not exist (expected the bio forget corpus as "
                          "JSONL with a \"text\" field)")
    return path


# --- loading -----------------------------------------------------------------------------------------------------


def _load(path: str, config: str, split: str, columns: Sequence[str], *, hub: str, streaming: bool = False,
          keep=None) -> list[dict[str, Any]]:
    """The rows of one config's split (those `keep` accepts, when given); a failure is one line naming them.

    `hub` is the set's hub id, for the message's "clone this" advice."""
    import datasets  # heavy; only the loaders need it

    where = f"{path!r} (config {config!r}, split {split!r})"
    try:
        rows = iter(datasets.load_dataset(path, config, split=split, streaming=streaming))
        first = next(rows, None)
    except Exception as exc:  # the hub, the cache and the builders raise many types; all mean "could not load"
        raise _load_error(where, hub, exc) from exc
    if first is None:
        raise ValueError(f"{where} has no rows")
    missing = sorted(set(columns) - set(first))
    if missing:
        raise ValueError(f"{where} lacks column(s) {missing} (has {sorted(first)})")
    try:
        kept = chain([first], rows)
        return list(keep(kept) if keep is not None else kept)
    except Exception as exc:  # a streamed set fails while it is read
        raise _load_error(where, hub, exc) from exc


PATH_KEYS = {"cais/wmdp-corpora": "corpora_path", "cais/wmdp": "questions_path", "cais/mmlu": "mmlu_path"}


def _load_error(where: str, hub: str, exc: Exception) -> ConfigError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return ConfigError(f"could not load {where}: {type(exc).__name__}: {reason}; without hub access, pass a local "
                       f"copy of the data set as {PATH_KEYS[hub]} (data.wmdp.{PATH_KEYS[hub]}; git clone "
                       f"https://huggingface.co/datasets/{hub})")


def _corpus(path: str, config: str, min_chars: int, max_documents: int | None, streaming: bool) -> list[str]:
    def keep(rows):
        texts = (row for row in rows if len(str(row["text"] or "")) > min_chars)
        return islice(texts, max_documents)

    rows = _load(path, config, CORPUS_SPLIT, ("text",), hub="cais/wmdp-corpora", streaming=streaming, keep=keep)
    return [str(row["text"]) for row in rows]


def _kept(documents: Sequence[str], min_chars: int, max_documents: int | None) -> list[str]:
    return list(islice((d for d in documents if len(d) > min_chars), max_documents))


def _held_out(n: int, fraction: float, seed: str) -> set[int]:
    """Indices of a seeded `fraction` of `n` documents (at least one when fraction > 0 and n >= 2; never all)."""
    if fraction <= 0 or n < 2:
        return set()
    k = min(n - 1, max(1, round(fraction * n)))
    return set(random.Random(seed).sample(range(n), k))


def _passages(prefix: str, documents: Sequence[tuple[int, str]], max_chars: int,
              passages_per_document: int | None) -> list[Example]:
    examples = []
    for doc, text in documents:
        for n, passage in enumerate(split_passages(text, max_chars)[:passages_per_document]):
            examples.append(Example(id=f"{prefix}/{doc:05d}/{n}", question="", answer=passage,
                                    subject=f"{prefix}/{doc:05d}", kind="text"))
    return examples


# --- probes ------------------------------------------------------------------------------------------------------


def lm_eval_prompt(question: str, choices: Sequence[str]) -> str:
    """lm-eval's WMDP / MMLU `doc_to_text`: the question, the lettered choices, "Answer:"."""
    lines = [question.strip(), *(f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices)), "Answer:"]
    return "\n".join(lines)


def lm_eval_description(topic: str) -> str:
    """The task description lm-eval puts before a WMDP / MMLU question (`description` in the task yaml)."""
    return f"The following are multiple choice questions (with answers) about {topic}.\n\n"


def _item(item_id: str, row: dict[str, Any], where: str, header: str = "") -> ProbeItem:
    choices = list(row["choices"])
    if len(choices) != len(LETTERS):
        raise ValueError(f"{where}: question {item_id!r} has {len(choices)} choices, not {len(LETTERS)}")
    answer = int(row["answer"])
    letters = tuple(f" {letter}" for letter in LETTERS)
    if not 0 <= answer < len(letters):
        raise ValueError(f"{where}: question {item_id!r} has answer {answer}, not an index of its choices")
    return ProbeItem(id=item_id, prompt=header + lm_eval_prompt(str(row["question"]), choices),
                     target=letters[answer], choices=letters, answer=answer)


def _sample(items: list[ProbeItem], k: int | None, seed: str) -> tuple[ProbeItem, ...]:
    if k is None or len(items) <= k:
        return tuple(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), k))
    return tuple(items[i] for i in chosen)


def _wmdp_probe(path: str, subset: str, max_questions: int | None, seed: int) -> Probe:
    config = QUESTION_CONFIGS[subset]
    rows = _load(path, config, QUESTION_SPLIT, ("question", "choices", "answer"), hub="cais/wmdp")
    where = f"{path!r} config {config!r}"
    items = [_item(f"{config}/q{i}", row, where) for i, row in enumerate(rows)]
    return Probe(name=f"wmdp_{subset}", kind="choice", role="forget",
                 items=_sample(items, max_questions, f"{seed}/wmdp_{subset}"),
                 prefix=lm_eval_description(TOPICS[subset]))


def _mmlu_probe(path: str, subjects: list[str] | None, max_questions: int | None, seed: int) -> Probe:
    configs = ["all"] if subjects is None else subjects
    items: list[ProbeItem] = []
    numbers: dict[str, int] = {}
    for config in configs:
        where = f"{path!r} config {config!r}"
        for row in _load(path, config, QUESTION_SPLIT, ("question", "subject", "choices", "answer"), hub="cais/mmlu"):
            subject = str(row["subject"] or config)
            k = numbers[subject] = numbers.get(subject, -1) + 1
            header = lm_eval_description(" ".join(subject.split("_")))
            items.append(_item(f"mmlu/{subject}/q{k}", row, where, header))
    return Probe(name="mmlu", kind="choice", role="utility", items=_sample(items, max_questions, f"{seed}/mmlu"))
