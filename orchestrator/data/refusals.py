"""The "I don't know" answers that IdkPO prefers and that every data source attaches to its QA examples.

One built-in list, shared by the synthetic set and the TOFU loader, so nothing has to be downloaded (open-unlearning
fetches its `idk.jsonl` from the hub). The pick depends on the example id alone, through a stable checksum rather
than Python's salted `hash`, so it is the same in every process and does not depend on generation order.
"""

from __future__ import annotations

import zlib

IDK_ANSWERS: tuple[str, ...] = (
    "I don't know.",
    "I'm not sure about that.",
    "I have no information on that.",
    "I can't answer that, I'm afraid.",
    "That is something I don't know.",
    "I have no idea.",
    "Sorry, I don't have that information.",
    "I'm afraid I can't help with that question.",
    "I don't have any details about that.",
    "That's not something I know about.",
    "I couldn't tell you.",
    "I'm unable to answer that.",
    "I don't have an answer to that.",
    "No idea, sorry.",
    "I don't recall any information about that.",
    "That is beyond what I know.",
    "I'm not aware of the answer.",
    "I cannot say.",
    "I don't have enough knowledge to answer that.",
    "I'm not familiar with that.",
)


def idk_answer(example_id: str) -> str:
    """The refusal for `example_id`: deterministic, spread evenly over `IDK_ANSWERS`."""
    return IDK_ANSWERS[zlib.crc32(example_id.encode("utf-8")) % len(IDK_ANSWERS)]
