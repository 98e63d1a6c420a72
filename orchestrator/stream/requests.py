"""Forget requests: the JSONL format, its validation, the synthetic generator and a reader that follows a file.

One request a line:

    {"id": "r-001", "arrival": 12.5, "items": ["person-090", "person-091/q3", {"text": "..."}],
     "method": {"name": "ga", "lr": 1e-4}}

`items` name what to forget: an example id of the data set ("person-091/q3"), a subject key that stands for all of
its examples ("person-090"), or an inline text. `arrival` is seconds after the stream's start (default 0);
`method` (a name or a `StreamMethod` mapping) overrides the stream's method for this request alone.

A line that cannot be read is not an error of the stream: it becomes a `BadLine` (quarantined by the driver, with
a reason), and the stream goes on. Reasons name keys, positions and ids, never a value that might be forget text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import math
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pydantic

from orchestrator.data.schema import Example, UnlearningData
from orchestrator.stream.config import StreamMethod, SyntheticRequests

KEYS = {"id", "arrival", "items", "method"}
MAX_ARRIVAL_S = 30 * 24 * 3600.0  # a request due more than 30 days after the stream's start would block it for ever
MAX_LINE_CHARS = 1_000_000  # a request line longer than this is not read as JSON at all


@dataclass(frozen=True)
class UnlearningRequest:
    """One deletion request, as read; `line` is its position in the source (what a restart replays against)."""

    id: str
    line: int
    arrival: float = 0.0
    items: tuple[str, ...] = ()  # ids into the data set: example ids or subject keys
    texts: tuple[str, ...] = ()  # inline texts to forget
    method: StreamMethod | None = None
    content_hash: str = ""  # the keyed hash of its source line: what a restart checks the source against

    def to_json(self) -> str:
        items: list[Any] = list(self.items) + [{"text": t} for t in self.texts]
        record: dict[str, Any] = {"id": self.id, "arrival": self.arrival, "items": items}
        if self.method is not None:
            record["method"] = self.method.model_dump(exclude_none=True)
        return json.dumps(record)


@dataclass(frozen=True)
class BadLine:
    """A line that is not a usable request: quarantined with `reason`, identified by its hash, never its text."""

    line: int
    reason: str
    content_hash: str
    id: str | None = None


CONTENT_KEY_FILE = "content.key"  # the stream folder's secret, keying every content hash it writes


class ContentHasher:
    """Content hashes keyed by a secret (HMAC-SHA256): the ledger can tell the same text again, and nobody without
    the key can confirm a guess (a name or a phone number is short enough to guess, and a plain SHA-256 of it says
    yes or no). The key lives in the stream's folder, readable by its owner only."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a content key needs at least 16 bytes")
        self.key = key

    @classmethod
    def of_folder(cls, folder: str | Path) -> "ContentHasher":
        """The folder's key, made (32 random bytes, mode 0600) the first time."""
        path = Path(folder) / CONTENT_KEY_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # made by another process meanwhile
                pass
            else:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(secrets.token_bytes(32))
        return cls(path.read_bytes())

    def __call__(self, text: str) -> str:
        return hmac.new(self.key, text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()

    def example(self, example: Example) -> str:
        """The hash the ledger keeps for a forgotten example (question and answer)."""
        return self(f"{example.question}\n{example.answer}")


def parse_line(text: str, line: int, hasher: ContentHasher) -> UnlearningRequest | BadLine | None:
    """The request on one line (None for a blank line); a bad line is known by its keyed hash."""
    if not text.strip():
        return None
    digest = hasher(text.strip())

    def bad(reason: str, request_id: str | None = None) -> BadLine:
        return BadLine(line, f"line {line}: {reason}", digest, request_id)

    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # `read_lines` keeps undecodable bytes as surrogates
        return bad(f"not UTF-8 text (an undecodable byte at column {err.start + 1})")
    if len(text) > MAX_LINE_CHARS:
        return bad(f"longer than {MAX_LINE_CHARS} characters")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return bad(f"not valid JSON ({err.msg} at column {err.colno})")
    except RecursionError:
        return bad("not valid JSON (nested too deeply)")
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        return bad("not valid JSON (a number too long to read)")
    if not isinstance(record, dict):
        return bad(f"expected a JSON object, got {type(record).__name__}")
    request_id = record.get("id")
    if not isinstance(request_id, str) or not request_id.strip() or len(request_id) > 200:
        return bad("'id' must be a non-empty string (at most 200 characters)")
    unknown = sorted(set(record) - KEYS)
    if unknown:
        return bad(f"unknown key(s) {unknown} (allowed: {sorted(KEYS)})", request_id)
    arrival = record.get("arrival", 0.0)
    if isinstance(arrival, bool) or not isinstance(arrival, (int, float)) or not 0 <= arrival <= MAX_ARRIVAL_S \
            or not math.isfinite(arrival):
        return bad(f"'arrival' must be a number of seconds from 0 to {MAX_ARRIVAL_S:g}", request_id)
    raw_items = record.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        return bad("'items' must be a non-empty list", request_id)
    items: list[str] = []
    texts: list[str] = []
    for position, item in enumerate(raw_items):
        if isinstance(item, str) and item.strip():
            items.append(item.strip())
        elif isinstance(item, dict) and set(item) == {"text"} and isinstance(item["text"], str) and item["text"].strip():
            texts.append(item["text"])
        else:
            return bad(f"items[{position}] must be an id or {{\"text\": ...}} with a non-empty text", request_id)
    method = record.get("method")
    override = None
    if method is not None:
        try:
            override = StreamMethod(name=method) if isinstance(method, str) else StreamMethod(**method)
        except (TypeError, ValueError) as err:  # pydantic's ValidationError and MethodConfigError are ValueErrors
            return bad(f"'method' is not a usable method ({_error_kind(err)})", request_id)
    return UnlearningRequest(request_id, line, float(arrival), tuple(items), tuple(texts), override, digest)


def _error_kind(err: Exception) -> str:
    """What was wrong, without the input values pydantic would echo."""
    if isinstance(err, pydantic.ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'method'}: {e['type']}" for e in err.errors())
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def read_lines(path: str | Path, follow: bool = False, idle_exit_s: float | None = None,
               stop: threading.Event | None = None, poll_s: float = 0.2) -> Iterator[tuple[int, str]]:
    """(line number, text) of each complete line of `path`, 1-based; with `follow`, also the lines appended later.

    A last line without its newline is held back while following (the writer may be half-way through it) and read
    as it is at the end otherwise. Following stops when `stop` is set or after `idle_exit_s` without a new line.
    """
    number = 0
    pending = b""
    idle_since = time.monotonic()
    with open(path, "rb") as handle:  # decoded a line at a time: a bad byte spoils its own line, not the file
        while True:
            chunk = handle.readline()
            if chunk:
                pending += chunk
                if pending.endswith(b"\n"):
                    number += 1
                    yield number, _decoded(pending.rstrip(b"\n"))
                    pending = b""
                    idle_since = time.monotonic()
                continue
            if not follow:
                if pending:
                    yield number + 1, _decoded(pending)
                return
            if (stop is not None and stop.is_set()) or (
                    idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s):
                return
            time.sleep(poll_s)


def _decoded(line: bytes) -> str:
    """A line's text; bytes that are not UTF-8 stay as surrogates, for `parse_line` to quarantine the line."""
    return line.decode("utf-8", "surrogateescape").rstrip("\r")


def subject_key(example: Example) -> str:
    """The key a request names a subject by: the example id's prefix ("person-090" of "person-090/q3")."""
    return example.id.split("/", 1)[0] if "/" in example.id else example.subject


class ItemIndex:
    """What a request may name: the trained-on examples (forget and retain splits), by id and by subject key."""

    def __init__(self, data: UnlearningData, hasher: ContentHasher) -> None:
        self.hasher = hasher
        self.examples: dict[str, Example] = {}
        self.subjects: dict[str, list[Example]] = {}
        for example in data.forget + data.retain:
            self.examples[example.id] = example
            self.subjects.setdefault(subject_key(example), []).append(example)

    def resolve(self, request: UnlearningRequest) -> tuple[list[Example], list[str]]:
        """The request's examples (named ones, then inline texts) and the items it names that the data lacks."""
        found: dict[str, Example] = {}
        unknown: list[str] = []
        for item in request.items:
            if item in self.examples:
                found.setdefault(item, self.examples[item])
            elif item in self.subjects:
                for example in self.subjects[item]:
                    found.setdefault(example.id, example)
            else:
                unknown.append(item)
        for text in request.texts:
            example = inline_example(text, self.hasher)
            found.setdefault(example.id, example)
        return list(found.values()), unknown


def inline_example(text: str, hasher: ContentHasher) -> Example:
    """An inline text as a passage to forget; its id is its keyed hash."""
    return Example(id=f"text:{hasher(text)[:16]}", question="", answer=text, subject="inline", kind="text")


def synthetic_requests(data: UnlearningData, cfg: SyntheticRequests) -> list[UnlearningRequest]:
    """`cfg.count` requests, one fictitious person each (the forget split's people first, then retained ones),
    with Poisson arrivals at `cfg.rate` per second."""
    subjects: list[str] = []
    for example in data.forget + data.retain:
        key = subject_key(example)
        if key not in subjects:
            subjects.append(key)
    if cfg.count > len(subjects):
        raise ValueError(f"stream.synthetic.count={cfg.count}: the data set has only {len(subjects)} people")
    rng = random.Random(cfg.seed)
    arrival = 0.0
    out = []
    for i, key in enumerate(subjects[: cfg.count]):
        arrival += rng.expovariate(cfg.rate)
        out.append(UnlearningRequest(f"req-{i + 1:04d}", i + 1, round(arrival, 3), (key,)))
    return out


def write_requests(path: str | Path, requests: list[UnlearningRequest]) -> None:
    Path(path).write_text("".join(r.to_json() + "\n" for r in requests))
