"""Real request streams: MUSE-News `sust` and `scal` (four forget sets each) and TOFU's nested forget splits.

- MUSE's "sustainability" check (Shi et al. 2024, MUSE-News `sust`: forget_1..forget_4) unlearns four disjoint
  news forget sets one after another; each becomes one request with the split's texts inline.
- MUSE's "scalability" check (`scal`: nested forget sets of growing size) becomes four requests, each forgetting
  what its split adds to the one before.
- TOFU's forget01 < forget05 < forget10 are nested (the last 2, 10, 20 of its 200 authors): three successive
  requests forget the new authors of each split, named by their ids in `orchestrator/data/tofu.py`'s scheme, so the
  stream runs on `data.source: tofu` and ends where a single forget10 run would.
"""

from __future__ import annotations

from orchestrator.stream.requests import UnlearningRequest

MUSE_SUST_SPLITS = ("forget_1", "forget_2", "forget_3", "forget_4")
TOFU_NESTED = ("forget01", "forget05", "forget10")
TOFU_AUTHORS = 200


def muse_sust_requests(path: str = "muse-bench/MUSE-News") -> list[UnlearningRequest]:
    """One request per MUSE-News `sust` forget split, its texts inline, arriving one second apart."""
    return [UnlearningRequest(f"muse-sust-{split}", i + 1, float(i), texts=texts)
            for i, (split, texts) in enumerate(_muse_splits(path, "sust"))]


def muse_scal_requests(path: str = "muse-bench/MUSE-News") -> list[UnlearningRequest]:
    """MUSE-News `scal` as a stream: its forget_1 < forget_2 < forget_3 < forget_4 are nested (MUSE's scalability
    check unlearns each size), so request k forgets the texts forget_k adds, and after request k the model has been
    asked to forget all of forget_k."""
    seen: set[str] = set()
    requests = []
    for i, (split, texts) in enumerate(_muse_splits(path, "scal")):
        if not seen <= set(texts):
            raise ValueError(f"MUSE-News 'scal' split {split!r} from {path!r} does not contain the previous split: "
                             "not nested")
        new = tuple(dict.fromkeys(t for t in texts if t not in seen))
        seen.update(new)
        requests.append(UnlearningRequest(f"muse-scal-{split}", i + 1, float(i), texts=new))
    return requests


def _muse_splits(path: str, config: str) -> list[tuple[str, tuple[str, ...]]]:
    """(split, its non-empty texts) for forget_1..forget_4 of a MUSE-News stream config (sust or scal)."""
    from orchestrator.data.muse import load_muse_rows

    out = []
    for split in MUSE_SUST_SPLITS:
        rows = load_muse_rows(path, config, split, path_key="stream.muse_path")
        texts = tuple(row["text"] for row in rows if isinstance(row.get("text"), str) and row["text"].strip())
        if not texts:
            raise ValueError(f"MUSE-News {config!r} split {split!r} from {path!r} has no 'text' rows")
        out.append((split, texts))
    return out


def tofu_nested_requests(path: str = "locuslab/TOFU") -> list[UnlearningRequest]:
    """forget01, then forget05's other authors, then forget10's: three requests naming TOFU author keys."""
    from orchestrator.data.tofu import QA_PER_AUTHOR, load_rows

    seen: set[str] = set()
    seen_questions: set[str] = set()
    requests = []
    for i, split in enumerate(TOFU_NESTED):
        rows = load_rows(path, split)
        questions = {row["question"] for row in rows}
        if not seen_questions <= questions:
            raise ValueError(f"TOFU {split} from {path!r} does not contain the previous split: not nested")
        first = TOFU_AUTHORS - len(rows) // QA_PER_AUTHOR  # forget authors are the last ones of TOFU's `full`
        authors = [f"tofu-author-{first + j // QA_PER_AUTHOR:03d}" for j in range(len(rows))]
        new = tuple(dict.fromkeys(a for a in authors if a not in seen))
        seen.update(new)
        seen_questions = questions
        requests.append(UnlearningRequest(f"tofu-{split}", i + 1, float(i), items=new))
    return requests
