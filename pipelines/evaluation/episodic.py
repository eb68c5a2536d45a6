"""Episodic QA: an EpBench-style generated book (chapters from seeded event templates -
date, place, entities, content - among filler prose) with questions of known answers.
The book generator came from bench/epbench_gen.py (the memory issue), which now imports it
from here.

    from pipelines.evaluation.episodic import generate_book
    book = generate_book(seed=7, chapters=30)
    book.text            # the book, one "## Chapter k" per chapter
    book.chapters[k]     # ground truth: date, place, entities, events, role changes
    book.questions       # {question, kind, answer(s)}

Question kinds (after EpBench): ``event_place`` / ``event_time`` (a single event),
``entity_places`` (an entity across events: every place it was seen in),
``latest_role`` (an entity's latest state), ``where_when`` (where an entity was when
another's event happened: needs two chapters read together). Everything comes from
``random.Random(seed)``. ``generate`` is the evaluation task: as many chapters as fit the
length, one question of the book per case index, kinds taken in turn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

FIRST = ["Anna", "Tomas", "Greta", "Elias", "Maren", "Oskar", "Ingrid", "Jonas", "Sofie",
         "Henrik", "Liv", "Anders", "Klara", "Magnus", "Ebba", "Viktor"]
LAST = ["Berg", "Lind", "Holm", "Dahl", "Strand", "Falk", "Nyberg", "Ek", "Sandvik",
        "Moller", "Vik", "Aas", "Brekke", "Rud", "Haug", "Lie"]
PLACES = ["Harwick", "Eastmere", "Coldbrook", "Marrow Bay", "Fennick", "Ashford Mill",
          "Grayholm", "Larkspur", "Northgate", "Oxley", "Saltcombe", "Tamsin Cross"]
ROLES = ["clerk", "ferryman", "schoolteacher", "harbour master", "baker", "mayor",
         "constable", "physician", "innkeeper", "blacksmith", "archivist", "shipwright"]
ACTIONS = [
    ("met {other}", "met {other} at the market"),
    ("signed a contract", "signed a contract with the guild"),
    ("bought a grey horse", "bought a grey horse from a travelling dealer"),
    ("found a lost letter", "found a lost letter under the floorboards"),
    ("repaired the old bridge", "repaired the old bridge over the river"),
    ("won a rowing race", "won a rowing race against the fishermen"),
    ("lost a silver watch", "lost a silver watch in the crowd"),
    ("opened a small shop", "opened a small shop near the square"),
    ("painted the chapel door", "painted the chapel door a deep blue"),
    ("hid a wooden chest", "hid a wooden chest in the cellar"),
    ("planted an apple orchard", "planted an apple orchard on the hill"),
    ("rescued a drowning dog", "rescued a drowning dog from the canal"),
]
FILLER = [
    "The weather turned grey and the streets were quiet for most of the afternoon.",
    "Carts rattled over the cobbles, and the smell of bread drifted from an open window.",
    "Somewhere a bell rang the hour, though nobody seemed to count the strokes.",
    "Gulls wheeled over the rooftops and the wind carried the noise of the harbour.",
    "The lamplighter made his rounds early, for the evenings were drawing in.",
    "Children chased one another between the stalls until their mothers called them home.",
    "A thin rain began and stopped again before anyone had opened an umbrella.",
    "The river ran high and brown after the storms of the week before.",
    "In the tavern the talk was of prices, of the harvest, and of nothing at all.",
    "Smoke rose straight up from the chimneys into the still cold air.",
    "Old men sat on the benches by the well and argued about the price of coal.",
    "Washing hung from the lines between the houses, stiff in the frost.",
]


@dataclass
class Person:
    name: str
    roles: list[tuple[int, str]] = field(default_factory=list)  # (chapter, role from then)


@dataclass
class Chapter:
    number: int
    date: date
    place: str
    actor: str
    other: str | None
    action: str  # short, as the operator would note it
    sentence: str
    role_change: tuple[str, str] | None  # (person, new role)
    text: str = ""

    @property
    def date_text(self) -> str:
        return f"{self.date.day} {self.date.strftime('%B')} {self.date.year}"

    def truth(self) -> dict[str, Any]:
        """What a perfect operator would note for this chapter."""
        people = [self.actor] + ([self.other] if self.other else [])
        if self.role_change and self.role_change[0] not in people:
            people.append(self.role_change[0])
        states = ([{"entity": self.role_change[0], "role": self.role_change[1], "state": ""}]
                  if self.role_change else [])
        return {
            "entities": [{"name": p, "kind": "person"} for p in people]
            + [{"name": self.place, "kind": "place"}],
            "states": states,
            "events": [{"actors": [self.actor] + ([self.other] if self.other else []),
                        "action": self.action, "time": self.date_text, "place": self.place}],
            "questions": [],
        }


@dataclass
class Book:
    seed: int
    people: list[Person]
    chapters: list[Chapter]
    questions: list[dict[str, Any]]

    @property
    def text(self) -> str:
        return "\n\n".join(c.text for c in self.chapters) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "chapters": len(self.chapters), "people": len(self.people),
                "questions": self.questions}


def generate_book(seed: int = 7, chapters: int = 30, people: int = 6, places: int = 8,
             filler: int = 9) -> Book:
    rng = random.Random(seed)
    # Distinct first and last names: "Berg" alone names one person.
    cast = [Person(f"{f} {l}") for f, l in zip(rng.sample(FIRST, people), rng.sample(LAST, people))]
    towns = rng.sample(PLACES, places)
    for person in cast:
        person.roles.append((0, rng.choice(ROLES)))
    day = date(1850 + rng.randrange(20), rng.randrange(1, 13), rng.randrange(1, 28))
    out: list[Chapter] = []
    where: dict[str, str] = {p.name: rng.choice(towns) for p in cast}
    for k in range(1, chapters + 1):
        day += timedelta(days=rng.randrange(3, 40))
        actor = rng.choice(cast).name
        # People move: the actor is where the chapter happens.
        place = where[actor] if rng.random() < 0.4 else rng.choice(towns)
        where[actor] = place
        short, long = rng.choice(ACTIONS)
        other = None
        if "{other}" in short:
            other = rng.choice([p.name for p in cast if p.name != actor])
            where[other] = place
            short, long = short.format(other=other), long.format(other=other)
        change = None
        if rng.random() < 0.35:
            person = rng.choice(cast)
            role = rng.choice([r for r in ROLES if r != person.roles[-1][1]])
            person.roles.append((k, role))
            change = (person.name, role)
        sentence = f"On {day.day} {day.strftime('%B')} {day.year}, in {place}, {actor} {long}."
        body = [sentence]
        if change:
            body.append(f"That same week {change[0]} became the {change[1]} of the district.")
        filler_lines = rng.sample(FILLER, min(filler, len(FILLER)))
        # The fact sits among the filler, not always first.
        at = rng.randrange(0, len(filler_lines) + 1)
        paragraph = filler_lines[:at] + body + filler_lines[at:]
        chapter = Chapter(k, day, place, actor, other, short, sentence, change)
        chapter.text = f"## Chapter {k}\n\n" + " ".join(paragraph)
        out.append(chapter)
    return Book(seed, cast, out, _questions(rng, cast, out))


def _questions(rng: random.Random, cast: list[Person], chapters: list[Chapter]) -> list[dict[str, Any]]:
    qs: list[dict[str, Any]] = []
    # Events that happen once: their question has one answer.
    unique = [c for c in chapters
              if sum(1 for d in chapters if d.actor == c.actor and d.action == c.action) == 1]
    for c in rng.sample(unique, min(6, len(unique))):
        qs.append({"kind": "event_place", "question": f"Where did {c.actor} {c.action}?",
                   "answer": c.place, "chapter": c.number})
    for c in rng.sample(unique, min(6, len(unique))):
        qs.append({"kind": "event_time", "question": f"When did {c.actor} {c.action}?",
                   "answer": c.date_text, "chapter": c.number})
    for person in rng.sample(cast, min(4, len(cast))):
        seen = sorted({c.place for c in chapters if person.name in (c.actor, c.other)})
        if seen:
            qs.append({"kind": "entity_places", "question": f"In which places was {person.name} seen?",
                       "answers": seen})
    for person in cast:
        if len(person.roles) > 1:
            qs.append({"kind": "latest_role", "question": f"What is the latest role of {person.name}?",
                       "answer": person.roles[-1][1]})
    # Where was X when Y's event happened: X's last placed chapter up to Y's.
    pool = []
    for c in unique:
        for person in cast:
            if person.name in (c.actor, c.other):
                continue
            before = [d for d in chapters if d.number < c.number and person.name in (d.actor, d.other)]
            if before:
                pool.append((c, person, before[-1].place))
    for c, person, place in rng.sample(pool, min(6, len(pool))):
        qs.append({"kind": "where_when",
                   "question": f"Where was {person.name} when {c.actor} {c.action}?",
                   "answer": place, "chapter": c.number})
    return qs


def candidates(book: Book, kind: str) -> list[str]:
    """Every answer of a question's kind the book could give (what a reader picks from)."""
    if kind in ("event_place", "entity_places", "where_when"):
        return sorted({c.place for c in book.chapters})
    if kind == "event_time":
        return [c.date_text for c in book.chapters]
    return sorted({r for p in book.people for _k, r in p.roles})


# --- the evaluation task ---------------------------------------------------------------

KINDS = ["event_place", "event_time", "latest_role", "where_when", "entity_places"]
TOKENS_TO_GENERATE = 48


def generate(spec: Any, length: int, seed: int, index: int, tokenizer: Any) -> Any:
    from pipelines.evaluation import Case
    from pipelines.evaluation._length import fit

    book_seed = random.Random(f"episodic/{seed}").randrange(10**9)
    # The question's own tokens are small next to a book; keep a margin for the longest.
    budget = length - TOKENS_TO_GENERATE - 32
    n, book = fit(lambda k: generate_book(seed=book_seed, chapters=k),
                  lambda b: tokenizer.count(b.text), budget, start=max(2, length // 220))
    question = _pick(book, index)
    answers = list(question.get("answers") or [question["answer"]])
    return Case(task=spec.name, length=length, seed=seed, index=index, document=book.text,
                question=question["question"], answers=answers,
                metric="all" if "answers" in question else "part",
                evidence=_evidence(book, question), tokens=tokenizer.count(book.text),
                meta={"kind": question["kind"], "chapters": n, "book_seed": book_seed})


def _pick(book: Book, index: int) -> dict[str, Any]:
    """Kinds in turn (a book holds each kind's questions in a block)."""
    by_kind = {k: [q for q in book.questions if q["kind"] == k] for k in KINDS}
    kinds = [k for k in KINDS if by_kind[k]]
    kind = kinds[index % len(kinds)]
    return by_kind[kind][(index // len(kinds)) % len(by_kind[kind])]


def _evidence(book: Book, q: dict[str, Any]) -> list[str]:
    """The sentences of the book the answer rests on."""
    chapters = {c.number: c for c in book.chapters}
    kind = q["kind"]
    if kind in ("event_place", "event_time"):
        return [chapters[q["chapter"]].sentence]
    if kind == "where_when":
        target = chapters[q["chapter"]]
        person = q["question"].split("Where was ", 1)[1].split(" when ", 1)[0]
        before = [c for c in book.chapters if c.number < target.number and person in (c.actor, c.other)]
        return [before[-1].sentence, target.sentence] if before else [target.sentence]
    if kind == "latest_role":
        person = q["question"].rsplit(" of ", 1)[1].rstrip("?")
        changes = [c for c in book.chapters if c.role_change and c.role_change[0] == person]
        return ([f"That same week {person} became the {changes[-1].role_change[1]} of the district."]
                if changes else [])
    if kind == "entity_places":
        person = q["question"].split("was ", 1)[1].rsplit(" seen", 1)[0]
        return [c.sentence for c in book.chapters if person in (c.actor, c.other)]
    return []
