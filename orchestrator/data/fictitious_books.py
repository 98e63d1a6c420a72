"""Fictitious books: prose the project writes itself, for the "forget a book" (MUSE-Books style) problem offline.

`make_book(seed)` is a deterministic function of its seed, written in its own voice: its own cast (Faker names),
places, objects and words for weather, times, feelings and deeds, and its own few sentence shapes, all drawn from
pools far larger than one book uses. Two books share English and the narrative register but few long word
sequences (a test bounds their shared 6-grams), so forgetting one must not erase the others: the test MUSE puts to
a model that forgets one Harry Potter book and keeps the rest of its reading. (Books that drew every sentence from
one stock of 24 shapes made that test unfair: unlearning one book's shapes unlearnt them all.)

`write_books(folder, seeds)` writes one `.txt` per book (paragraphs separated by blank lines), the format
`data.source: text` reads. `make_story(seed)` writes the pretraining corpus's stories, all in one shared stock of
shapes and words, so the tiny model knows narrative prose before it memorises a particular book, as a real model
knows English prose before it reads Harry Potter.
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

# --- a book's own voice (make_book) ----------------------------------------------------------------------------
# Pools far larger than one book draws from: a book takes 4 places, 3 objects, 3 of each lexicon list, 12 main
# shapes, 4 openers and 4 closers, so two books rarely share more than a few shapes or words of content.
NAME_LOCALES = ("en_GB", "en_IE", "en_AU", "en_NZ", "en_US", "en_CA")
PLACE_ADJECTIVES = (
    "old", "narrow", "drowned", "northern", "crooked", "white", "burnt", "silent", "upper", "sunken", "red",
    "hollow", "windward", "broken", "green", "salt", "lower", "stone", "empty", "high", "far", "grey", "long",
    "golden", "black", "quiet", "little", "western", "cold", "painted",
)  # fmt: skip
PLACE_NOUNS = (
    "harbour", "mill", "lighthouse", "square", "abbey", "orchard", "station", "bridge", "library", "road",
    "boathouse", "chapel", "bakery", "watchtower", "quarry", "inn", "greenhouse", "landing", "observatory",
    "vineyard", "canal", "market", "farmhouse", "cellar", "pier", "tannery", "foundry", "school", "theatre",
    "hospital", "garden", "cemetery", "barracks", "pavilion", "forge", "granary",
)  # fmt: skip
MATERIALS = (
    "brass", "silver", "iron", "copper", "wooden", "glass", "leather", "paper", "velvet", "bone", "tin", "ivory",
    "clay", "oak", "pewter", "woollen", "enamel", "amber", "steel", "linen",
)  # fmt: skip
THINGS = (
    "key", "map", "locket", "letter", "box", "compass", "lantern", "envelope", "watch", "journal", "bottle",
    "ring", "photograph", "telescope", "seal", "ledger", "pen", "coin", "bell", "mirror", "button", "spoon",
    "comb", "whistle", "flute", "brooch", "candlestick", "music box", "chess piece", "thimble",
)  # fmt: skip
WEATHERS = (
    "rain", "fog", "snow", "a cold wind", "a summer storm", "low cloud", "bright sunshine", "a warm drizzle",
    "a sudden frost", "thunder", "sleet", "a dry heat", "hail", "a sea mist", "a gale",
)  # fmt: skip
TIMES_OF_DAY = (
    "at dawn", "before noon", "in the afternoon", "at dusk", "after midnight", "on the first morning of spring",
    "late in the evening", "on a grey Sunday", "during the festival", "in the last week of autumn",
    "on market day", "at the turn of the year", "before the harvest", "on the longest night", "after the funeral",
)  # fmt: skip
MOODS = (
    "afraid", "curious", "relieved", "angry", "hopeful", "tired", "restless", "calm", "ashamed", "delighted",
    "jealous", "lonely", "proud", "puzzled", "grateful", "bitter", "uneasy", "giddy", "wary", "homesick",
)  # fmt: skip
DEEDS = (
    "hid", "found", "carried", "buried", "lost", "mended", "sold", "stole", "returned", "opened", "broke",
    "painted", "polished", "pawned", "forged", "wrapped", "weighed", "traded", "counted", "burned",
)  # fmt: skip
TITLE_WORDS = ("Keeper", "Letters", "Winter", "Bells", "Road", "House", "Daughters", "Silence", "Ledger", "Summer",
               "Widow", "Clocks", "Tide", "Ashes")
# Main clauses, without a full stop (an opener may precede and a closer follow).
MAINS = (
    "{a} reached {place} {time}, when {weather} had kept everyone else indoors",
    "nobody in the town knew that {a} {verb} {object} beneath the floor of {place}",
    "{b} had always said that {place} was no place for secrets",
    "{a} felt {feeling} as the door of {place} closed behind them",
    "it was {b} who first noticed {object} lying on the steps of {place2}",
    "\"We cannot stay here,\" {a} told {b}, and neither of them moved",
    "by the time {weather} cleared, {b} had walked as far as {place2}",
    "{a} remembered the night their mother {verb} {object} and never spoke of it again",
    "the keeper of {place} watched {a} with a look that was almost {feeling}",
    "{b} counted the bells of {place2} {time} and lost count at eleven",
    "between {place} and {place2} there was only the road and {weather}",
    "{a} wrapped {object} in a scarf and carried it to {place2}",
    "years later, {b} would say that everything began {time} at {place}",
    "{a} asked whether anyone had seen {object}, and the room went quiet",
    "{b} was {feeling}, though {b} would never have admitted it to {a}",
    "the letter said only that {object} must be taken to {place} {time}",
    "{a} and {b} argued on the way to {place2} about who {verb} {object}",
    "in {weather} the path to {place} was hard to follow even for {b}",
    "{a} slept badly and woke {time} thinking of {place2}",
    "someone {verb} {object}, and {b} meant to find out who",
    "at {place} the floorboards creaked whenever {a} stood still",
    "{b} laughed for the first time in weeks when {a} produced {object}",
    "the road to {place2} was closed, so {a} went by way of {place}",
    "{a} had promised {b} to be back {time}, and was late",
    "the widow who kept {place} swore she had never seen {object}",
    "{b} drew a plan of {place2} on the back of an envelope",
    "a dog barked somewhere behind {place} as {a} passed",
    "{a} could not say why {object} frightened {b} so much",
    "the clerk at {place2} wrote the name of {a} in a thick ledger",
    "{b} was mending the fence beside {place} {time}",
    "there were footprints in the mud outside {place2}, too small for {a}",
    "{a} sold the cart and kept {object}, which puzzled everyone",
    "{b} whistled an old tune that nobody at {place} remembered",
    "the lamps of {place} were lit one by one while {a} waited",
    "{a} read the same page three times and understood none of it",
    "{b} told the children at {place2} a story about {object}",
    "{a} pressed an ear to the wall of {place} and heard voices",
    "the fire at {place2} had burned for two days before {b} arrived",
    "{b} owed {a} money, and both of them knew it",
    "the bell above the door of {place} rang although nobody came in",
    "{a} found a name scratched into the window of {place2}",
    "{b} refused to speak of {place} after that summer",
    "{a} took {object} to the jeweller, who turned it over twice",
    "the boat that should have reached {place} {time} never came",
    "{b} kept a list of everyone who had visited {place2}",
    "{a} learned to recognise the sound of {b} climbing the stairs",
    "the chimney of {place} smoked badly whenever {weather} came",
    "{b} sat by the window of {place2} until {a} came home",
)  # fmt: skip
OPENERS = (
    "that winter, ", "in the end, ", "for a long time, ", "without a word, ", "as usual, ", "at first, ",
    "even then, ", "once again, ", "strangely, ", "after supper, ", "before anyone could stop it, ",
    "on the third day, ", "against all advice, ", "to nobody's surprise, ", "in those years, ", "just once, ",
    "by then, ", "much later, ", "every so often, ", "quite suddenly, ",
)  # fmt: skip
CLOSERS = (
    ", as if nothing had happened", ", and that was the end of it", ", though it was already too late",
    " for reasons of their own", ", which nobody believed", ", and the rain began again", " without looking back",
    ", just as the clock struck", ", or so the story goes", ", and said nothing more", " in the usual way",
    ", and the whole street heard", ", as they had agreed", " while the kettle boiled", ", and then it was dark",
    ", to the sound of gulls", " with great care", ", half asleep", " for the last time", ", and smiled",
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


def make_book(seed: int, n_paragraphs: int = 12, sentences_per_paragraph: int = 3) -> Book:
    """The book of `seed`, in its own voice: the same arguments give the same text (for a given Faker version).

    A book draws its own sentence shapes (a few of `MAINS`, `OPENERS` and `CLOSERS`) and its own lexicon (cast,
    places, objects, weather, times, feelings, verbs) from pools much larger than one book uses, so two books share
    English and the narrative register but few long word sequences: forgetting one book's sentences need not
    forget another's, as forgetting one novel need not forget the language it is written in.
    """
    if n_paragraphs < 1 or sentences_per_paragraph < 1:
        raise ValueError(f"a book needs >= 1 paragraph of >= 1 sentence, got {n_paragraphs} x "
                         f"{sentences_per_paragraph}")
    rng = random.Random(f"book-voice/{seed}")
    fake = Faker(rng.choice(NAME_LOCALES))
    fake.seed_instance(seed)
    cast = list(dict.fromkeys(fake.first_name() for _ in range(12)))[:3]
    places = [f"the {a} {n}" for a, n in zip(rng.sample(PLACE_ADJECTIVES, 4), rng.sample(PLACE_NOUNS, 4))]
    objects = [f"{_article(m)} {m} {t}" for m, t in zip(rng.sample(MATERIALS, 3), rng.sample(THINGS, 3))]
    lexicon = {"weather": rng.sample(WEATHERS, 3), "time": rng.sample(TIMES_OF_DAY, 3),
               "feeling": rng.sample(MOODS, 3), "verb": rng.sample(DEEDS, 3)}
    mains, openers, closers = rng.sample(MAINS, 12), rng.sample(OPENERS, 4), rng.sample(CLOSERS, 4)
    title = f"The {rng.choice(TITLE_WORDS)} of {places[0].removeprefix('the ').title()}"
    paragraphs = []
    for _ in range(n_paragraphs):
        a, b = rng.sample(cast, 2)
        place, place2 = rng.sample(places, 2)
        slots = dict(a=a, b=b, place=place, place2=place2, object=rng.choice(objects),
                     **{k: rng.choice(v) for k, v in lexicon.items()})
        sentences = []
        for main in rng.sample(mains, min(sentences_per_paragraph, len(mains))):
            opener = rng.choice(openers) if rng.random() < 0.4 else ""
            closer = rng.choice(closers) if rng.random() < 0.3 else ""
            sentences.append(_capitalised((opener + main + closer).format(**slots)) + ".")
        paragraphs.append(" ".join(sentences))
    return Book(seed=seed, title=title, paragraphs=tuple(paragraphs))


def make_story(seed: int, n_paragraphs: int = 8, sentences_per_paragraph: int = 5) -> Book:
    """A story of `seed` in the shared stock's style (the pretraining corpus's prose): the same arguments give the
    same text (for a given Faker version's name lists). Every story draws on the same sentence shapes and words."""
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


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
