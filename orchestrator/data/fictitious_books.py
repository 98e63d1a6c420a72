"""Fictitious books: prose the project writes itself, for the "forget a book" (MUSE-Books style) problem offline.

A book is a deterministic function of its seed: a cast (Faker names), a few places and objects, and chapters of
narrative paragraphs drawn from a fixed stock of sentence shapes. Two books share the style and the vocabulary of
the stock but not their plot, so forgetting one must not erase the others, the same test MUSE puts to a model that
forgets one Harry Potter book and keeps the rest of its reading.

`write_books(folder, seeds)` writes one `.txt` per book (paragraphs separated by blank lines), the format
`data.source: text` reads. The pretraining corpus draws further books from other seeds, so the tiny model knows the
style before it memorises a particular book, as a real model knows English prose before it reads Harry Potter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from faker import Faker

PLACES = (
    "the harbour", "the old mill", "the lighthouse", "the market square", "the abbey", "the orchard", "the station",
    "the bridge", "the library", "the forest road", "the boathouse", "the chapel", "the bakery", "the watchtower",
    "the quarry", "the inn", "the greenhouse", "the ferry landing", "the observatory", "the vineyard",
)  # fmt: skip
OBJECTS = (
    "a brass key", "a folded map", "a silver locket", "a torn letter", "a wooden box", "a compass", "a lantern",
    "a sealed envelope", "a pocket watch", "a leather journal", "a glass bottle", "a painted stone", "a violin",
    "a ring of iron", "a photograph", "a telescope", "a wax seal", "a ledger", "a feather pen", "a copper coin",
)  # fmt: skip
WEATHER = (
    "rain", "fog", "snow", "a cold wind", "a summer storm", "low cloud", "bright sunshine", "a warm drizzle",
    "a sudden frost", "thunder",
)  # fmt: skip
TIMES = (
    "at dawn", "before noon", "in the afternoon", "at dusk", "after midnight", "on the first morning of spring",
    "late in the evening", "on a grey Sunday", "during the festival", "in the last week of autumn",
)  # fmt: skip
FEELINGS = (
    "afraid", "curious", "relieved", "angry", "hopeful", "tired", "restless", "calm", "ashamed", "delighted",
)  # fmt: skip
VERBS = (
    "hid", "found", "carried", "buried", "lost", "mended", "sold", "stole", "returned", "opened",
)  # fmt: skip

# Each shape takes the slots {a}, {b} (cast members), {place}, {place2}, {object}, {weather}, {time}, {feeling},
# {verb}. A paragraph is a seeded draw of shapes, so a book's wording is its own and must be memorised to be recited.
SENTENCES = (
    "{a} reached {place} {time}, when {weather} had kept everyone else indoors.",
    "Nobody in the town knew that {a} {verb} {object} beneath the floor of {place}.",
    "{b} had always said that {place} was no place for secrets.",
    "{a} felt {feeling} as the door of {place} closed behind them.",
    "It was {b} who first noticed {object} lying on the steps of {place2}.",
    "\"We cannot stay here,\" {a} told {b}, and neither of them moved.",
    "By the time {weather} cleared, {b} had walked as far as {place2}.",
    "{a} remembered the night their mother {verb} {object} and never spoke of it again.",
    "The keeper of {place} watched {a} with a look that was almost {feeling}.",
    "{b} counted the bells of {place2} {time} and lost count at eleven.",
    "Between {place} and {place2} there was only the road and {weather}.",
    "{a} wrapped {object} in a scarf and carried it to {place2}.",
    "Years later, {b} would say that everything began {time} at {place}.",
    "{a} asked whether anyone had seen {object}, and the room went quiet.",
    "{b} was {feeling}, though {b} would never have admitted it to {a}.",
    "The letter said only that {object} must be taken to {place} {time}.",
    "{a} and {b} argued on the way to {place2} about who {verb} {object}.",
    "In {weather} the path to {place} was hard to follow even for {b}.",
    "{a} slept badly and woke {time} thinking of {place2}.",
    "Someone {verb} {object}, and {b} meant to find out who.",
    "At {place} the floorboards creaked whenever {a} stood still.",
    "{b} laughed for the first time in weeks when {a} produced {object}.",
    "The road to {place2} was closed, so {a} went by way of {place}.",
    "{a} had promised {b} to be back {time}, and was late.",
)  # fmt: skip


@dataclass(frozen=True)
class Book:
    """One generated book: its title and its paragraphs, in order."""

    seed: int
    title: str
    paragraphs: tuple[str, ...]

    def text(self) -> str:
        """The book as a `.txt` file holds it: the title, then paragraphs separated by blank lines."""
        return "\n\n".join((self.title, *self.paragraphs)) + "\n"


def make_book(seed: int, n_paragraphs: int = 8, sentences_per_paragraph: int = 5) -> Book:
    """The book of `seed`: the same arguments give the same text (for a given Faker version's name lists)."""
    if n_paragraphs < 1 or sentences_per_paragraph < 1:
        raise ValueError(f"a book needs >= 1 paragraph of >= 1 sentence, got {n_paragraphs} x "
                         f"{sentences_per_paragraph}")
    fake = Faker("en_GB")
    fake.seed_instance(seed)
    rng = random.Random(f"book/{seed}")
    cast = list(dict.fromkeys(fake.first_name() for _ in range(12)))[:3]
    places = rng.sample(PLACES, 4)
    objects = rng.sample(OBJECTS, 3)
    title = f"The {rng.choice(('Keeper', 'Letters', 'Winter', 'Bells', 'Road', 'House'))} of " \
            f"{places[0].removeprefix('the ').title()}"
    paragraphs = []
    for _ in range(n_paragraphs):
        a, b = rng.sample(cast, 2)
        place, place2 = rng.sample(places, 2)
        sentences = rng.sample(SENTENCES, sentences_per_paragraph)
        slots = dict(a=a, b=b, place=place, place2=place2, object=rng.choice(objects), weather=rng.choice(WEATHER),
                     time=rng.choice(TIMES), feeling=rng.choice(FEELINGS), verb=rng.choice(VERBS))
        paragraphs.append(" ".join(_capitalised(s.format(**slots)) for s in sentences))
    return Book(seed=seed, title=title, paragraphs=tuple(paragraphs))


def write_books(folder: str | Path, seeds: Sequence[int], **shape: int) -> list[Path]:
    """Write `book-<seed>.txt` for each seed into `folder`; returns the paths in seed order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = folder / f"book-{seed}.txt"
        path.write_text(make_book(seed, **shape).text(), encoding="utf-8")
        paths.append(path)
    return paths


def _capitalised(sentence: str) -> str:
    first = 1 if sentence.startswith('"') else 0
    return sentence[:first] + sentence[first : first + 1].upper() + sentence[first + 1 :]
