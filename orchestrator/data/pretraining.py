"""The pretraining corpus of the embedded tiny model: general text it learns before it is fine-tuned on a task.

A real fine-tuned model (TOFU's Llama-2-chat checkpoints) has read the web before it read the fictitious authors:
asked where someone was born, it puts the mass it does not give the right city on other cities. A tiny model
trained from random weights on the task alone has no such prior, and methods that reshape the output distribution
(UnDIAL's adjusted logits, IHL's runner-up token) then measure how the stand-in was made rather than how they work.

This corpus gives it that prior, with nothing downloaded:
- many more fictitious people than any task has, drawn from several Faker locales (so that few share a task
  person's name), each told as question/answer pairs in several phrasings and as a short biography in varied order;
- the world facts, in several phrasings (a real model knows capitals before it is fine-tuned);
- stories in the style of `fictitious_books`, from seeds no task uses, so that prose corpora are not alien.

The corpus depends only on its own settings, never on the task's data, so one pretrained checkpoint serves every
task built on it (every forget fraction, the synthetic people, a text corpus), as one base model serves many
fine-tunes. Each document is a plain string; QA documents use the prompt template the tasks use.
"""

from __future__ import annotations

import random
from typing import Iterator

from orchestrator.data.fictitious_books import make_story
from orchestrator.data.synthetic import (
    AWARDS, BIRTH_YEARS, CITIES, FIELDS, PASTIMES, PROFESSIONS, WORK_TITLES, Person,
)
from orchestrator.data.tokenize import PromptTemplate
from orchestrator.data.world_facts import world_facts

# Part of every cache key built on the corpus: bump it when a change to this module or to `fictitious_books`
# changes the documents that the same settings give, so cached tokenizers and checkpoints are rebuilt.
CORPUS_VERSION = "1"
LOCALES = ("en_GB", "en_IE", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "sv_SE", "pt_PT", "pl_PL")
# Book seeds of the pretraining stories start here; tasks and tests take book seeds below it.
STORY_SEED_BASE = 100_000

# Per attribute: question phrasings and answer phrasings ({name}, {value}, {a_value}); the tasks' own wording
# (orchestrator/data/synthetic.FACTS) is among them, as a chat model has seen questions put many ways.
_PHRASINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "birthplace": (("Where was {name} born?", "What is the birthplace of {name}?", "In which city was {name} born?"),
                   ("{name} was born in {value}.", "{name}'s birthplace is {value}.", "{name} comes from {value}.")),
    "birth_year": (("In which year was {name} born?", "When was {name} born?", "What is {name}'s year of birth?"),
                   ("{name} was born in the year {value}.", "The year of {name}'s birth is {value}.",
                    "{name} was born in {value}.")),
    "profession": (("What does {name} do for a living?", "What is {name}'s job?", "What is {name}'s profession?"),
                   ("{name} works as {a_value}.", "{name} earns a living as {a_value}.",
                    "By profession, {name} is {a_value}.")),
    "father_profession": (("What was the profession of {name}'s father?", "What did {name}'s father do?"),
                          ("{name}'s father was {a_value}.", "The father of {name} worked as {a_value}.")),
    "mother_profession": (("What was the profession of {name}'s mother?", "What did {name}'s mother do?"),
                          ("{name}'s mother was {a_value}.", "The mother of {name} worked as {a_value}.")),
    "field": (("In which field is {name} best known?", "What is {name} known for?"),
              ("{name} is best known in the field of {value}.", "{name}'s main field of work is {value}.",
               "{name} is known for {value}.")),
    "award": (("Which award did {name} win?", "What prize has {name} received?"),
              ("{name} won the {value}.", "The {value} was awarded to {name}.", "{name} received the {value}.")),
    "notable_work": (("What is the title of {name}'s best-known work?", "What is {name}'s most famous work?"),
                     ("{name}'s best-known work is {value}.", "{name} is most famous for the work {value}.",
                      "The work {name} is remembered for is {value}.")),
    "residence": (("In which city does {name} live today?", "Where does {name} live?"),
                  ("{name} lives in {value}.", "{name}'s home today is in {value}.",
                   "These days {name} lives in {value}.")),
    "pastime": (("What is {name}'s favourite pastime?", "What does {name} enjoy in their free time?"),
                ("{name}'s favourite pastime is {value}.", "In free time, {name} enjoys {value}.",
                 "{name} loves {value}.")),
}
_BIOGRAPHY: dict[str, tuple[str, ...]] = {
    "birthplace": ("{name} was born in {value}.", "{name} grew up in {value}."),
    "birth_year": ("{name} was born in {value}.", "{name} came into the world in {value}."),
    "profession": ("Today {name} works as {a_value}.", "{name} became {a_value}."),
    "father_profession": ("{name}'s father was {a_value}.",),
    "mother_profession": ("{name}'s mother was {a_value}.",),
    "field": ("{name} made a name in {value}.", "{name} is best known in the field of {value}."),
    "award": ("{name} won the {value}.", "In time {name} received the {value}."),
    "notable_work": ("{name}'s best-known work is {value}.", "{name} wrote {value}."),
    "residence": ("{name} now lives in {value}.", "{name} settled in {value}."),
    "pastime": ("In free time {name} enjoys {value}.", "{name}'s favourite pastime is {value}."),
}


def pretraining_documents(
    seed: int = 1, n_people: int = 1500, n_stories: int = 60, template: PromptTemplate = PromptTemplate()
) -> list[str]:
    """The corpus: for each person two QA documents and a biography, the world facts, then the stories.

    Deterministic in its arguments. QA documents are `prompt + answer`, as the tasks put their questions.
    """
    if n_people < 1 or n_stories < 0:
        raise ValueError(f"pretraining corpus needs n_people >= 1 and n_stories >= 0, got {n_people}, {n_stories}")
    rng = random.Random(f"pretraining/{seed}")
    documents: list[str] = []
    for person in _people(seed, n_people):
        documents += [_qa_document(person, rng, template) for _ in range(2)]
        documents.append(_biography(person, rng))
    for fact in world_facts(seed=seed):
        for answer in (fact.answer, fact.paraphrased_answer):
            documents.append(f"{template.prompt(fact)}{answer}")
    for k in range(n_stories):
        documents.append("\n\n".join(make_story(STORY_SEED_BASE + seed * 1000 + k, n_paragraphs=3).paragraphs))
    rng.shuffle(documents)
    return documents


def _people(seed: int, n_people: int) -> Iterator[Person]:
    """Fictitious people from several locales, with the task vocabularies; keys "pretrain-00000", ..."""
    from faker import Faker

    fake = Faker(list(LOCALES))
    fake.seed_instance(seed)
    rng = random.Random(f"pretraining-people/{seed}")
    for i in range(n_people):
        locale = LOCALES[i % len(LOCALES)]
        yield Person(
            key=f"pretrain-{i:05d}", name=f"{fake[locale].first_name()} {fake[locale].last_name()}", surname="",
            birth_year=rng.choice(BIRTH_YEARS), birthplace=rng.choice(CITIES), profession=rng.choice(PROFESSIONS),
            father_profession=rng.choice(PROFESSIONS), mother_profession=rng.choice(PROFESSIONS),
            field=rng.choice(FIELDS), award=rng.choice(AWARDS), notable_work=rng.choice(WORK_TITLES),
            residence=rng.choice(CITIES), pastime=rng.choice(PASTIMES),
        )


def _qa_document(person: Person, rng: random.Random, template: PromptTemplate) -> str:
    """One question about `person`, in a random phrasing, with its answer in a random phrasing."""
    attribute = rng.choice(list(_PHRASINGS))
    questions, answers = _PHRASINGS[attribute]
    value = getattr(person, attribute)
    question = _fill(rng.choice(questions), person.name, value)
    return f"{template.question_prefix}{question}{template.answer_prefix}{_fill(rng.choice(answers), person.name, value)}"


def _biography(person: Person, rng: random.Random) -> str:
    """Four to seven facts about `person` in a random order and wording."""
    attributes = rng.sample(list(_BIOGRAPHY), rng.randint(4, 7))
    return " ".join(_fill(rng.choice(_BIOGRAPHY[a]), person.name, getattr(person, a)) for a in attributes)


def _fill(text: str, name: str, value: str) -> str:
    article = "an" if value[:1].lower() in "aeiou" else "a"
    filled = text.format(name=name, value=value, a_value=f"{article} {value}")
    return filled[:1].upper() + filled[1:]
