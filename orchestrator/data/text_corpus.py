"""Plain-text corpora as an unlearning problem: the MUSE-style case of forgetting a book or a set of news articles.

Inputs are `.txt` files (the whole file is one document) or `.jsonl` files (one JSON object per line with a "text"
field: one document per line). Each document is split into paragraphs at blank
lines; consecutive paragraphs are packed into passages of at most `max_chars` characters (a paragraph longer than
that is cut at whitespace), so that passages are long enough for verbatim-memorisation probes (prompt with the first
half, compare the continuation) yet fit the model's context.

Every passage is an `Example(kind="text", question="", answer=passage)`, id "<role>/<file stem>/<n>" (role: forget,
retain or holdout, from the file it came from), subject "<file stem>/<n>".

Holdout (never trained on; MIA non-members): the passages of `holdout` when given. Without it, a deterministic
`holdout_fraction` (seeded) of the *retain* passages is moved to the holdout — never of the forget file, whose
passages are all to be forgotten. Those passages keep their "retain/..." ids.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Sequence

from orchestrator.data.schema import Example, UnlearningData

SUFFIXES = (".txt", ".jsonl")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


def load_text_corpus(
    forget: str | Path,
    retain: str | Path | Sequence[str | Path],
    holdout: str | Path | None = None,
    max_chars: int = 1000,
    holdout_fraction: float = 0.10,
    seed: int = 0,
    name: str | None = None,
) -> UnlearningData:
    """Read the forget / retain (/ holdout) files into text examples; see the module doc for the rules.

    `retain` may be one file or several (the parts of a corpus that are kept: other books of a series).
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    forget_examples = _file_examples(Path(forget), "forget", max_chars)
    retain_paths = [Path(retain)] if isinstance(retain, (str, Path)) else [Path(r) for r in retain]
    if not retain_paths:
        raise ValueError("text corpus: no retain file given")
    stems = [p.stem for p in (Path(forget), *retain_paths)]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ValueError(f"text corpus: file name {repeated[0]!r} is used twice (ids are made from file names)")
    retain_examples = tuple(e for path in retain_paths for e in _file_examples(path, "retain", max_chars))
    if holdout is not None:
        holdout_examples = _file_examples(Path(holdout), "holdout", max_chars)
    else:
        retain_examples, holdout_examples = _carve(retain_examples, holdout_fraction, seed)
    return UnlearningData(
        name=name or f"text/{Path(forget).stem}",
        forget=forget_examples,
        retain=retain_examples,
        holdout=holdout_examples,
        meta={
            "source": "text",
            "forget": str(forget),
            "retain": ",".join(str(p) for p in retain_paths),
            "holdout": str(holdout) if holdout is not None else f"{holdout_fraction} of retain (seed {seed})",
            "max_chars": str(max_chars),
        },
    )


def read_documents(path: Path) -> list[str]:
    """The documents of one file: the whole `.txt`, or each JSONL line's "text"; errors name the file (and line)."""
    if not path.is_file():
        raise FileNotFoundError(f"text corpus file not found: {path}")
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    content = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        return [content]
    documents = []
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f'{path}:{lineno}: expected an object with a string "text" field')
        documents.append(record["text"])
    return documents


def split_passages(document: str, max_chars: int) -> list[str]:
    """Paragraphs (split at blank lines) packed into passages of at most `max_chars` characters."""
    passages: list[str] = []
    current = ""
    for paragraph in _BLANK_LINES.split(document.replace("\r\n", "\n")):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        for piece in _cut(paragraph, max_chars):
            if current and len(current) + 2 + len(piece) <= max_chars:
                current = f"{current}\n\n{piece}"
            else:
                if current:
                    passages.append(current)
                current = piece
    if current:
        passages.append(current)
    return passages


def _cut(paragraph: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars`, cut at the last whitespace before the limit (mid-word only if there is none)."""
    pieces = []
    while len(paragraph) > max_chars:
        cut = max(paragraph.rfind(" ", 1, max_chars + 1), paragraph.rfind("\n", 1, max_chars + 1))
        cut = cut if cut > 0 else max_chars
        pieces.append(paragraph[:cut].rstrip())
        paragraph = paragraph[cut:].lstrip()
    if paragraph:
        pieces.append(paragraph)
    return pieces


def _file_examples(path: Path, role: str, max_chars: int) -> tuple[Example, ...]:
    passages = [p for doc in read_documents(path) for p in split_passages(doc, max_chars)]
    if not passages:
        raise ValueError(f"{path}: no usable text (empty, or only blank lines / empty \"text\" fields)")
    return tuple(
        Example(id=f"{role}/{path.stem}/{n}", question="", answer=passage, subject=f"{path.stem}/{n}", kind="text")
        for n, passage in enumerate(passages)
    )


def _carve(
    examples: tuple[Example, ...], fraction: float, seed: int
) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """Move a seeded `fraction` of `examples` (at least one, if two or more and fraction > 0) to a holdout."""
    if fraction <= 0 or len(examples) < 2:
        return examples, ()
    k = min(len(examples) - 1, max(1, round(fraction * len(examples))))
    chosen = set(random.Random(seed).sample(range(len(examples)), k))
    kept = tuple(e for i, e in enumerate(examples) if i not in chosen)
    held = tuple(e for i, e in enumerate(examples) if i in chosen)
    return kept, held
