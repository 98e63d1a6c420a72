"""Real request streams: MUSE-News `sust` (four successive forget sets) and TOFU's nested forget splits.

- MUSE's "sustainability" check (Shi et al. 2024, MUSE-News `sust`: forget_1..forget_4) unlearns four disjoint
  news forget sets one after another; each becomes one request with the split's texts inline.
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
    import datasets

    requests = []
    for i, split in enumerate(MUSE_SUST_SPLITS):
        try:
            rows = datasets.load_dataset(path, "sust", split=split).to_list()
        except Exception as exc:  # hub, cache and builder errors all mean "could not load"
            raise ValueError(f"could not load MUSE-News 'sust' split {split!r} from {path!r} "
                             f"({type(exc).__name__}); set stream.muse_path to a local copy") from exc
        texts = tuple(row["text"] for row in rows if isinstance(row.get("text"), str) and row["text"].strip())
        if not texts:
            raise ValueError(f"MUSE-News 'sust' split {split!r} from {path!r} has no 'text' rows")
        requests.append(UnlearningRequest(f"muse-sust-{split}", i + 1, float(i), texts=texts))
    return requests


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
