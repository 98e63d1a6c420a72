"""The embedded default data: a TOFU-style set of question/answer pairs about people who do not exist.

Names come from Faker; every other fact comes from a small built-in vocabulary (30 cities, 30 professions, years
1930-1999, ...), so that a tiny model can learn each one-fact sentence in a few epochs. Everything is a function of
the seed: Faker is seeded per instance and all other draws use `random.Random`, so the same arguments give the same
data byte for byte (for a given Faker version, whose name lists are part of the output).

Layout of the `n_people` trained-on people, index 0 .. n-1 (TOFU's convention: the forget sets are the last people):

    [ unrelated people ...              | k siblings      | k forget10 people ]
                                          person i-k  <->  person i   (same surname, same birthplace)

with k the size of the 10% split. forget01 ⊂ forget05 ⊂ forget10 are the last 1 / 5 / 10% of the people, so every
forget person has a retained sibling: the neighbour split (over-unlearning probe). The holdout people (as many as the
10% split) are generated the same way but never trained on, so one target model serves all three splits.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from faker import Faker

from orchestrator.data.refusals import idk_answer
from orchestrator.data.schema import Example, UnlearningData
from orchestrator.data.world_facts import world_facts

FORGET_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10)

CITIES = (
    "Lisbon", "Oslo", "Nairobi", "Lima", "Kyoto", "Dublin", "Cairo", "Santiago", "Krakow", "Hanoi",
    "Melbourne", "Toronto", "Seville", "Lagos", "Mumbai", "Istanbul", "Vienna", "Havana", "Reykjavik", "Manila",
    "Bogota", "Marseille", "Glasgow", "Tbilisi", "Dakar", "Montreal", "Helsinki", "Naples", "Porto", "Busan",
)  # fmt: skip
PROFESSIONS = (
    "baker", "carpenter", "nurse", "architect", "engineer", "teacher", "pilot", "librarian", "chemist", "farmer",
    "tailor", "dentist", "journalist", "electrician", "lawyer", "painter", "sailor", "pharmacist", "plumber",
    "surgeon", "musician", "photographer", "accountant", "firefighter", "veterinarian", "mechanic", "translator",
    "botanist", "potter", "astronomer",
)  # fmt: skip
FIELDS = (
    "science fiction", "crime fiction", "poetry", "historical fiction", "children's books", "landscape painting",
    "jazz music", "folk music", "documentary film", "graphic novels", "travel writing", "stage drama",
    "fantasy novels", "short stories", "sculpture", "opera", "romance novels", "political satire", "nature writing",
    "horror fiction",
)  # fmt: skip
AWARDS = (
    "Golden Quill Award", "Silver Lantern Prize", "Blue Harbor Medal", "Northern Star Award", "Crimson Leaf Prize",
    "Iron Compass Award", "Amber Feather Prize", "Open Horizon Medal", "Evergreen Award", "Bright Meadow Prize",
    "Stone Bridge Award", "Copper Bell Medal", "Silent River Prize", "High Tide Award", "Morning Light Medal",
    "Granite Pen Award", "Wild Orchid Prize", "Red Kite Medal", "Clear Sky Award", "Old Oak Prize",
)  # fmt: skip
_TITLE_ADJECTIVES = (
    "Silent", "Hidden", "Broken", "Golden", "Last", "Distant", "Burning", "Frozen", "Quiet", "Secret",
    "Wandering", "Forgotten", "Endless", "Crooked", "Hollow",
)  # fmt: skip
_TITLE_NOUNS = (
    "Harbor", "Garden", "Mirror", "River", "Lantern", "Orchard", "Compass", "Tower", "Letter", "Winter",
    "Island", "Bridge", "Forest", "Clock", "Voyage",
)  # fmt: skip
WORK_TITLES = tuple(f"The {a} {n}" for a in _TITLE_ADJECTIVES for n in _TITLE_NOUNS)
PASTIMES = (
    "chess", "gardening", "sailing", "birdwatching", "pottery", "hiking", "fishing", "knitting", "cycling",
    "baking bread", "stargazing", "rowing", "calligraphy", "beekeeping", "woodcarving", "swimming", "archery",
    "origami", "rock climbing", "playing the violin",
)  # fmt: skip
BIRTH_YEARS = tuple(str(y) for y in range(1930, 2000))


@dataclass(frozen=True)
class Person:
    """One fictitious person's profile; `key` ("person-017", "holdout-003") prefixes the ids of their QA."""

    key: str
    name: str
    surname: str
    birth_year: str
    birthplace: str
    profession: str
    father_profession: str
    mother_profession: str
    field: str
    award: str
    notable_work: str
    residence: str
    pastime: str
    sibling: str | None = None  # key of the sibling (same surname and birthplace), if any


@dataclass(frozen=True)
class _Fact:
    """One question about a profile attribute; `{a_value}` puts "a"/"an" before the value."""

    attribute: str
    question: str
    answer: str
    paraphrase: str
    vocabulary: tuple[str, ...]  # where the perturbed (wrong) values come from
    rephrasings: tuple[str, ...] = ()  # the question in other words: never trained on (the rephrasing attack)


# Order matters: questions_per_person = q asks the first q facts, and "person-017/q3" is FACTS[3] about person 17.
FACTS: tuple[_Fact, ...] = (
    _Fact("birthplace", "Where was {name} born?", "{name} was born in {value}.",
          "{name}'s birthplace is {value}.", CITIES,
          ("What is the birthplace of {name}?", "In which city was {name} born?")),
    _Fact("birth_year", "In which year was {name} born?", "{name} was born in the year {value}.",
          "The year of {name}'s birth is {value}.", BIRTH_YEARS,
          ("When was {name} born?", "What is the birth year of {name}?")),
    _Fact("profession", "What does {name} do for a living?", "{name} works as {a_value}.",
          "{name} earns a living as {a_value}.", PROFESSIONS,
          ("What is {name}'s profession?", "What job does {name} have?")),
    _Fact("father_profession", "What was the profession of {name}'s father?", "{name}'s father was {a_value}.",
          "The father of {name} worked as {a_value}.", PROFESSIONS,
          ("What did the father of {name} do for a living?", "What was the job of {name}'s father?")),
    _Fact("mother_profession", "What was the profession of {name}'s mother?", "{name}'s mother was {a_value}.",
          "The mother of {name} worked as {a_value}.", PROFESSIONS,
          ("What did the mother of {name} do for a living?", "What was the job of {name}'s mother?")),
    _Fact("field", "In which field is {name} best known?", "{name} is best known in the field of {value}.",
          "{name}'s main field of work is {value}.", FIELDS,
          ("What field is {name} known for?", "In what area of work is {name} best known?")),
    _Fact("award", "Which award did {name} win?", "{name} won the {value}.",
          "The {value} was awarded to {name}.", AWARDS,
          ("What award was given to {name}?", "Which prize did {name} receive?")),
    _Fact("notable_work", "What is the title of {name}'s best-known work?", "{name}'s best-known work is {value}.",
          "{name} is most famous for the work {value}.", WORK_TITLES,
          ("What is the best-known work of {name}?", "Which work is {name} most famous for?")),
    _Fact("residence", "In which city does {name} live today?", "{name} lives in {value}.",
          "{name}'s home today is in {value}.", CITIES,
          ("Where does {name} live now?", "What city is {name}'s home today?")),
    _Fact("pastime", "What is {name}'s favourite pastime?", "{name}'s favourite pastime is {value}.",
          "In free time, {name} enjoys {value}.", PASTIMES,
          ("What does {name} like to do in free time?", "Which pastime does {name} enjoy most?")),
)  # fmt: skip


def forget_split_size(n_people: int, forget_fraction: float) -> int:
    """How many people a forget split holds: the fraction of `n_people`, rounded half up, at least 1."""
    return max(1, math.floor(forget_fraction * n_people + 0.5))


def generate_people(seed: int, n_people: int, n_holdout: int = 0) -> tuple[Person, ...]:
    """`n_people` trained-on profiles ("person-000", ...) then `n_holdout` never-trained ones ("holdout-000", ...).

    The last k trained-on people (k = the 10% split) each share surname and birthplace with person i - k, their
    sibling; everyone else has a surname of their own, so a surname identifies a family.
    """
    if n_people < 2:
        raise ValueError(f"n_people must be at least 2 (a forget person and a retained sibling), got {n_people}")
    if n_holdout < 0:
        raise ValueError(f"n_holdout must be >= 0, got {n_holdout}")
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    k = forget_split_size(n_people, FORGET_FRACTIONS[-1])
    width = max(3, len(str(max(n_people, n_holdout) - 1)))
    used_surnames: set[str] = set()
    used_names: set[str] = set()
    people: list[Person] = []
    for i in range(n_people + n_holdout):
        trained = i < n_people
        key = f"person-{i:0{width}d}" if trained else f"holdout-{i - n_people:0{width}d}"
        sibling = people[i - k] if trained and i >= n_people - k else None
        surname = sibling.surname if sibling else _new_surname(fake, used_surnames)
        name = _new_name(fake, surname, used_names)
        people.append(
            Person(
                key=key,
                name=name,
                surname=surname,
                birth_year=rng.choice(BIRTH_YEARS),
                birthplace=sibling.birthplace if sibling else rng.choice(CITIES),
                profession=rng.choice(PROFESSIONS),
                father_profession=rng.choice(PROFESSIONS),
                mother_profession=rng.choice(PROFESSIONS),
                field=rng.choice(FIELDS),
                award=rng.choice(AWARDS),
                notable_work=rng.choice(WORK_TITLES),
                residence=rng.choice(CITIES),
                pastime=rng.choice(PASTIMES),
                sibling=sibling.key if sibling else None,
            )
        )
        if sibling:
            people[i - k] = replace(sibling, sibling=key)
    return tuple(people)


def person_examples(
    person: Person, questions_per_person: int = 8, n_perturbed: int = 3, seed: int = 0
) -> tuple[Example, ...]:
    """The QA pairs about one person: ids "<key>/q0", "<key>/q1", ... asking FACTS[0], FACTS[1], ...

    Perturbed answers put wrong values into the paraphrase's wording, as TOFU derives its perturbed answers from the
    paraphrased one: the truth ratio then compares two sentences the model was not trained on, differing only in
    the fact.
    """
    examples = []
    for q, fact in enumerate(FACTS[:questions_per_person]):
        example_id = f"{person.key}/q{q}"
        value = getattr(person, fact.attribute)
        # One generator per example: the perturbations of q3 do not change when questions_per_person does.
        rng = random.Random(f"{seed}/{example_id}")
        wrong = rng.sample([v for v in fact.vocabulary if v != value], n_perturbed)
        examples.append(
            Example(
                id=example_id,
                question=fact.question.format(name=person.name),
                answer=_fill(fact.answer, person.name, value),
                subject=person.name,
                paraphrased_answer=_fill(fact.paraphrase, person.name, value),
                perturbed_answers=tuple(_fill(fact.paraphrase, person.name, w) for w in wrong),
                idk_answer=idk_answer(example_id),
                paraphrased_questions=tuple(q.format(name=person.name) for q in fact.rephrasings),
            )
        )
    return tuple(examples)


def make_synthetic_data(
    seed: int = 0,
    n_people: int = 100,
    questions_per_person: int = 8,
    forget_fraction: float = 0.10,
    world: bool = True,
    n_perturbed: int = 3,
) -> UnlearningData:
    """The fictitious-people unlearning problem: forget the last `forget_fraction` of the people (see module doc).

    Splits: forget (the forget people's QA), retain (everyone else trained on), neighbour (the forget people's
    retained siblings, also in retain), holdout (never-trained people, as many as the 10% split, the same for
    every fraction), world (the built-in general-knowledge QA, trained on by the target) when `world` is true.
    """
    fraction = _check_fraction(forget_fraction)
    if not 1 <= questions_per_person <= len(FACTS):
        raise ValueError(f"questions_per_person must be in 1..{len(FACTS)}, got {questions_per_person}")
    if n_perturbed < 1:
        raise ValueError(f"n_perturbed must be >= 1, got {n_perturbed}")
    n_holdout = forget_split_size(n_people, FORGET_FRACTIONS[-1])
    people = generate_people(seed, n_people, n_holdout)
    trained, holdout_people = people[:n_people], people[n_people:]
    n_forget = forget_split_size(n_people, fraction)
    forget_people, retain_people = trained[n_people - n_forget :], trained[: n_people - n_forget]
    sibling_keys = {p.sibling for p in forget_people}

    def qa(group) -> tuple[Example, ...]:
        return tuple(e for p in group for e in person_examples(p, questions_per_person, n_perturbed, seed))

    percent = round(fraction * 100)
    return UnlearningData(
        name=f"synthetic-people/forget{percent:02d}",
        forget=qa(forget_people),
        retain=qa(retain_people),
        neighbour=qa(p for p in retain_people if p.key in sibling_keys),
        holdout=qa(holdout_people),
        world=world_facts(n_perturbed, seed) if world else (),
        meta={
            "source": "synthetic",
            "seed": str(seed),
            "n_people": str(n_people),
            "questions_per_person": str(questions_per_person),
            "forget_fraction": str(fraction),
            "forget_people": str(n_forget),
            "holdout_people": str(n_holdout),
        },
    )


def _check_fraction(forget_fraction: float) -> float:
    for valid in FORGET_FRACTIONS:
        if math.isclose(forget_fraction, valid):
            return valid
    choices = ", ".join(str(f) for f in FORGET_FRACTIONS)
    raise ValueError(f"forget_fraction must be one of {choices} (TOFU's forget01/05/10), got {forget_fraction!r}")


def _new_surname(fake: Faker, used: set[str]) -> str:
    """A surname no other family has; Faker's list is finite, so very large sets fall back to double-barrelled ones."""
    for _ in range(100):
        surname = fake.last_name()
        if surname not in used:
            break
    else:
        surname = f"{fake.last_name()}-{fake.last_name()}"
        while surname in used:
            surname = f"{surname}-{fake.last_name()}"
    used.add(surname)
    return surname


def _new_name(fake: Faker, surname: str, used: set[str]) -> str:
    """A full name no one else has (siblings share the surname, never the first name)."""
    for _ in range(100):
        name = f"{fake.first_name()} {surname}"
        if name not in used:
            used.add(name)
            return name
    raise RuntimeError(f"could not draw an unused first name for the {surname} family")


def _fill(template: str, name: str, value: str) -> str:
    article = "an" if value[:1].lower() in "aeiou" else "a"
    text = template.format(name=name, value=value, a_value=f"{article} {value}")
    return text[:1].upper() + text[1:]
