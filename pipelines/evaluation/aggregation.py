"""Aggregation in the style of OOLONG: many short dated records, each with a label, and
questions whose answer needs all of them - a count, a comparison of two labels, the most
frequent label, a count within one month. Retrieval of a few chunks cannot answer them;
reading everything (and keeping count) can.

Label frequencies are drawn from a skewed distribution and the records re-drawn until
the asked comparison and the most frequent label are unambiguous (no ties).
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, timedelta
from typing import Any

from pipelines.evaluation import Case, Task
from pipelines.evaluation._length import fit

LABELS = ["billing", "shipping", "refund", "login", "warranty", "complaint", "feedback"]
SUBJECTS = ["a customer", "a shop in the north", "a returning client", "the night shift",
            "a wholesale buyer", "the support desk", "a new subscriber", "an old account"]
BODIES = [
    "wrote about an order placed the week before",
    "called twice and left a short message",
    "asked for the case to be looked at again",
    "sent a photograph with the request",
    "wanted an answer before the weekend",
    "mentioned a reference number from a letter",
    "was polite and brief on the telephone",
    "followed up on an earlier conversation",
]
KINDS = ["count", "most_frequent", "compare", "count_month"]
TOKENS_TO_GENERATE = 32


def record_line(number: int, day: date, label: str, subject: str, body: str) -> str:
    return f"Entry {number:05d} | {day.isoformat()} | label: {label} | {subject} {body}."


def generate(spec: Task, length: int, seed: int, index: int, tokenizer: Any) -> Case:
    rng = random.Random(f"aggregation/{seed}/{index}")
    kind = KINDS[index % len(KINDS)]
    labels = rng.sample(LABELS, 5)
    weights = [1.0 / (rank + 1) ** 0.7 for rank in range(len(labels))]
    first_day = date(2019 + rng.randrange(5), rng.randrange(1, 13), 1)
    stream = random.Random(rng.random())
    # Records are drawn once, in order; a length keeps a prefix of them.
    pool = []
    day = first_day
    for number in range(1, 20001):
        day += timedelta(days=stream.choice([0, 0, 1, 1, 2]))
        pool.append((number, day, stream.choices(labels, weights)[0],
                     stream.choice(SUBJECTS), stream.choice(BODIES)))
    pair = rng.sample(labels, 2)
    target = labels[rng.randrange(len(labels))]

    def build(n: int) -> str:
        return "\n".join(record_line(*r) for r in pool[:n])

    def question_for(n: int) -> tuple[str, list[str], list[int]]:
        records = pool[:n]
        counts = Counter(r[2] for r in records)
        if kind == "count":
            label = target
            hits = [r[0] for r in records if r[2] == label]
            return (f"How many entries have the label {label}? Answer with a number.",
                    [str(len(hits))], hits)
        if kind == "most_frequent":
            top = counts.most_common()
            best = top[0][0]
            return ("Which label appears on the most entries? Answer with the label.",
                    [best], [r[0] for r in records if r[2] == best])
        if kind == "compare":
            a, b = pair
            more = a if counts[a] >= counts[b] else b
            return (f"Are there more entries with the label {a} or with the label {b}? "
                    "Answer with the label.", [more], [r[0] for r in records if r[2] in (a, b)])
        month = records[len(records) // 2][1]
        label = target
        hits = [r[0] for r in records
                if r[2] == label and (r[1].year, r[1].month) == (month.year, month.month)]
        return (f"How many entries dated in {month.strftime('%B %Y')} have the label {label}? "
                "Answer with a number.", [str(len(hits))], hits)

    probe = question_for(1)[0]
    budget = length - TOKENS_TO_GENERATE - tokenizer.count(probe) - 8
    n, document = fit(build, tokenizer.count, budget, start=max(8, length // 30), most=len(pool))
    # Ties make "most" and "more" ambiguous: drop records from the end until there are none.
    while n > 2 and _tied(pool[:n], kind, pair):
        n -= 1
    document = build(n)
    question, answers, hits = question_for(n)
    by_number = {r[0]: r for r in pool[:n]}
    evidence = [record_line(*by_number[h]) for h in hits]
    counts = Counter(r[2] for r in pool[:n])
    return Case(task=spec.name, length=length, seed=seed, index=index, document=document,
                question=question, answers=answers, metric="all", evidence=evidence,
                tokens=tokenizer.count(document),
                meta={"kind": kind, "records": n, "counts": dict(counts.most_common())})


def _tied(records: list[tuple], kind: str, pair: list[str]) -> bool:
    counts = Counter(r[2] for r in records)
    if kind == "most_frequent":
        top = counts.most_common(2)
        return len(top) > 1 and top[0][1] == top[1][1]
    if kind == "compare":
        return counts[pair[0]] == counts[pair[1]]
    return False
