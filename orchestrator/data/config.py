"""The `data` section of an experiment: where the forget / retain / holdout splits (and a benchmark's own evaluation
sets) come from. Each source has its own subsection, validated when the config loads, so that an unknown MUSE
corpus or WMDP subset is one line naming it before anything is loaded."""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

# MUSE's own target and retrain models, per corpus (huggingface.co/muse-bench): a MUSE config that names no model
# unlearns these (orchestrator/config.py).
# The hub spells the corpus in lower case (MUSE's README writes MUSE-News_target, which resolves to the same repo).
MUSE_MODELS = {corpus: (f"muse-bench/MUSE-{corpus}_target", f"muse-bench/MUSE-{corpus}_retrain")
               for corpus in ("news", "books")}
MUSE_TOKENIZER = "meta-llama/Llama-2-7b-hf"  # their tokenizer (MUSE `constants.py` LLAMA_DIR); gated

DataSource = Literal["synthetic", "tofu", "text", "muse", "wmdp", "hazard"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticDataConfig(_Section):
    n_people: int = Field(100, ge=10, description="Fictitious people in the training data.")
    questions_per_person: int = Field(8, ge=1, le=8, description="QA pairs per person.")
    seed: int = Field(0, description="Generator seed: the same seed gives the same people.")


class TextDataConfig(_Section):
    forget: str = Field(description="Forget corpus: .txt (passages split by blank lines) or .jsonl with 'text'.")
    retain: str | list[str] = Field(description="Retain corpus file(s), same formats.")
    holdout: str | None = Field(None, description="Never-trained passages for MIA; default: 10% of retain.")
    max_chars: int = Field(1000, ge=50, description="Paragraphs are packed into passages of at most this many "
                           "characters (keep passages within data.max_length tokens).")


class MuseDataConfig(_Section):
    """MUSE (Shi et al. 2024): a corpus to forget, with VerbMem, KnowMem and PrivLeak (orchestrator/data/muse.py)."""

    corpus: Literal["news", "books"] = Field("news", description="MUSE-News (BBC articles) or MUSE-Books (Harry "
                                             "Potter).")
    path: str | None = Field(None, description="HF dataset id or local copy; default muse-bench/MUSE-<corpus>.")
    max_chars: int = Field(1000, ge=50, description="Documents are cut into passages of at most this many "
                           "characters.")
    retain_split: Literal["retain1", "retain2"] = Field(
        "retain1", description="The retain set the method is given (MUSE's scripts: retain1; KnowMem's retain "
        "questions come from retain2).")
    holdout_source: Literal["privleak", "raw"] = Field(
        "privleak", description="Non-members of the MIA: privleak/holdout (MUSE's PrivLeak) or raw/holdout.")
    knowmem_icl: bool = Field(True, description="KnowMem with MUSE's in-context examples (MUSE always uses them).")


class WmdpDataConfig(_Section):
    """WMDP (Li et al. 2024): hazardous knowledge to forget, four-choice questions, MMLU as utility
    (orchestrator/data/wmdp.py)."""

    subsets: list[Literal["bio", "chem", "cyber"]] = Field(
        default_factory=lambda: ["cyber"], min_length=1,
        description="WMDP subsets: their forget corpora are unlearned and their questions asked (bio's forget "
        "corpus is gated: see bio_forget_file).")
    bio_forget_file: str | None = Field(
        None, description="JSONL with a 'text' field: the gated bio forget corpus, as obtained from WMDP's authors.")
    corpora_path: str = Field("cais/wmdp-corpora", description="HF dataset id or local copy of the corpora.")
    questions_path: str = Field("cais/wmdp", description="HF dataset id or local copy of the questions.")
    mmlu_path: str = Field("cais/mmlu", description="HF dataset id or local copy of MMLU (the utility).")
    mmlu_subjects: list[str] | None = Field(None, description="MMLU subjects asked; default: all.")
    max_questions: int | None = Field(None, gt=0, description="Cap on the questions of each probe (a "
                                      "deterministic subsample); default: all.")
    max_documents: int | None = Field(
        None, gt=0, description="Documents read per corpus; default: all (bio's retain corpus has 60,887). WMDP's "
        "RMU run reads 150 batches of 4 from each: 600.")
    max_chars: int = Field(2000, ge=50, description="Corpus documents are cut into passages of at most this many "
                           "characters.")
    min_chars: int = Field(50, ge=0, description="Documents this short or shorter are dropped (WMDP's code: 50).")
    passages_per_document: int | None = Field(
        1, gt=0, description="Passages kept from each document (its first ones; WMDP truncates each document); "
        "null: all.")
    holdout_fraction: float = Field(0.10, gt=0, lt=1, description="Share of the forget corpus's documents held "
                                    "out, never trained: the membership-inference non-members.")
    seed: int = Field(0, description="Seed of the holdout and of the question subsample.")
    streaming: bool = Field(True, description="Stream the corpora from the hub; false reads a populated datasets "
                            "cache with no network.")


class HazardDataConfig(_Section):
    """The embedded hazardous-skill problem (orchestrator/data/hazard.py): a fictitious technical domain generated
    here, one subfield to forget, its neighbours to keep, four-choice questions on both."""

    seed: int = Field(0, description="Generator seed.")
    n_hazard_facts: int = Field(40, ge=4, description="Facts of the hazardous subfield (the forget corpus).")
    n_neighbour_facts: int = Field(120, ge=4, description="Facts of the neighbouring subfields (the retain corpus).")
    n_holdout_facts: int | None = Field(None, ge=0, description="Never-trained hazardous facts (MIA non-members); "
                                        "default: as many as n_hazard_facts.")
    facts_per_passage: int = Field(4, ge=1, description="Facts per passage (more than 4 needs a larger "
                                   "data.max_length).")
    n_neighbour_subfields: int = Field(3, ge=1, le=5, description="Neighbouring subfields (the first is the "
                                       "hazard's sister).")
    question_style: Literal["cloze", "question"] = Field(
        "cloze", description="cloze: the fact's sentence up to its value (what a tiny model's memory shows); "
        "question: a question about it (knowledge that must transfer).")


class DataConfig(_Section):
    """Where the forget / retain / holdout data come from."""

    source: DataSource = Field("synthetic", description="Data source.")
    forget_fraction: Literal[0.01, 0.05, 0.10] = Field(
        0.10, description="Share of people to forget (TOFU's forget01/05/10)."
    )
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)
    tofu_path: str = Field("locuslab/TOFU", description="HF dataset id or local copy of TOFU.")
    text: TextDataConfig | None = Field(None, description="Corpus files when source is 'text'.")
    muse: MuseDataConfig = Field(default_factory=MuseDataConfig, description="source 'muse': the corpus.")
    wmdp: WmdpDataConfig = Field(default_factory=WmdpDataConfig, description="source 'wmdp': subsets and files.")
    hazard: HazardDataConfig = Field(default_factory=HazardDataConfig, description="source 'hazard': the "
                                     "generator.")
    max_length: int = Field(128, ge=8, description="Token budget per training row (prompt + answer).")

    @pydantic.model_validator(mode="after")
    def _text_needs_files(self) -> "DataConfig":
        if self.source == "text" and self.text is None:
            raise ValueError("data.source 'text' needs data.text.forget and data.text.retain")
        return self
