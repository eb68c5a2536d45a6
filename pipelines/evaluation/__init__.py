"""The evaluation harness: tasks with known answers, generated for a seed and a length in
tokens of the active model's tokenizer, run through every strategy side by side.

    from pipelines.evaluation import generate, TASKS
    case = generate("niah_single_2", length=4096, seed=0, index=0)
    case.document, case.question, case.answers, case.evidence

It sits on top of the strategies (DESIGN: "batch and evaluation runners sit on top of
the strategies, never inside them"): a case is a document and a question; the runner
(``runner.py``) ingests the document and asks each strategy through the batch runner, so
every case is an ordinary run in the store.

Importing this package is cheap: task modules load when a task is generated.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import Any

from app.errors import TomesError


@dataclass
class Case:
    task: str
    length: int  # the target, in tokens of the active tokenizer
    seed: int
    index: int
    document: str
    question: str
    answers: list[str]  # RULER's references: every one must appear ("all") or one ("part")
    metric: str  # "all" | "part"
    evidence: list[str] = field(default_factory=list)  # spans of ``document`` the answer rests on
    tokens: int = 0  # the document's tokens, as the generator counted them
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Task:
    name: str
    module: str  # pipelines.evaluation.<module> has ``generate(spec, length, seed, index, tokenizer)``
    group: str  # ruler | aggregation | episodic
    about: str
    args: dict[str, Any] = field(default_factory=dict)


def _ruler(name: str, about: str, **args: Any) -> Task:
    return Task(name, "ruler", "ruler", about, args)


# RULER's 13 tasks as its synthetic.yaml configures them, plus a needle in the real books.
_TASKS = [
    _ruler("niah_single_1", "one needle (word key, number) in a repeated-sentence haystack",
           kind="niah", type_haystack="repeat", type_needle_k="words", type_needle_v="numbers"),
    _ruler("niah_single_2", "one needle (word key, number) in Paul Graham essays",
           kind="niah", type_haystack="essay", type_needle_k="words", type_needle_v="numbers"),
    _ruler("niah_single_3", "one needle (word key, UUID) in Paul Graham essays",
           kind="niah", type_haystack="essay", type_needle_k="words", type_needle_v="uuids"),
    _ruler("niah_multikey_1", "one of four needles asked for, in essays",
           kind="niah", type_haystack="essay", type_needle_k="words", type_needle_v="numbers",
           num_needle_k=4),
    _ruler("niah_multikey_2", "one needle among a haystack made of needles (word keys)",
           kind="niah", type_haystack="needle", type_needle_k="words", type_needle_v="numbers"),
    _ruler("niah_multikey_3", "one needle among a haystack made of needles (UUID keys)",
           kind="niah", type_haystack="needle", type_needle_k="uuids", type_needle_v="uuids"),
    _ruler("niah_multivalue", "four values of one key, in essays",
           kind="niah", type_haystack="essay", type_needle_k="words", type_needle_v="numbers",
           num_needle_v=4),
    _ruler("niah_multiquery", "four keys asked at once, in essays",
           kind="niah", type_haystack="essay", type_needle_k="words", type_needle_v="numbers",
           num_needle_q=4),
    _ruler("niah_books", "one needle (word key, number) in a real book of ../shared/data/books",
           kind="niah", type_haystack="books", type_needle_k="words", type_needle_v="numbers"),
    _ruler("vt", "variable tracking: one chain of four hops among noise",
           kind="vt", num_chains=1, num_hops=4),
    _ruler("cwe", "common words extraction: the 10 most common words of a numbered list",
           kind="cwe", freq_cw=30, freq_ucw=3, num_cw=10),
    _ruler("qa_1", "single-hop QA over SQuAD paragraphs", kind="qa", dataset="squad"),
    _ruler("qa_2", "multi-hop QA over HotpotQA paragraphs", kind="qa", dataset="hotpotqa"),
    Task("aggregation", "aggregation", "aggregation",
         "OOLONG-style: dated labelled records; count, compare, most frequent label"),
    Task("episodic", "episodic", "episodic",
         "EpBench-style generated book: where, when, latest role, where-when across chapters"),
]
TASKS: dict[str, Task] = {t.name: t for t in _TASKS}
GROUPS: dict[str, list[str]] = {
    "ruler": [t.name for t in _TASKS if t.group == "ruler"],
    "niah": [t.name for t in _TASKS if t.args.get("kind") == "niah"],
    "all": list(TASKS),
}


def task_names(spec: str | list[str]) -> list[str]:
    """Task names from a name, a group (ruler, niah, all) or a comma list of them."""
    parts = spec if isinstance(spec, list) else [spec]
    names: list[str] = []
    for part in (p.strip() for s in parts for p in str(s).split(",")):
        if not part:
            continue
        found = GROUPS.get(part) or ([part] if part in TASKS else None)
        if found is None:
            raise TomesError(f"unknown evaluation task {part!r}",
                             f"use one of: {', '.join(TASKS)} (or a group: {', '.join(GROUPS)}); "
                             "`tomes eval --list` describes them")
        names.extend(n for n in found if n not in names)
    if not names:
        raise TomesError("no evaluation task named", "name one: `tomes eval --list`")
    return names


def tasks() -> list[dict[str, Any]]:
    """What ``tomes eval --list`` prints."""
    return [{"name": t.name, "group": t.group, "about": t.about} for t in _TASKS]


def generate(task: str, length: int, seed: int = 0, index: int = 0, tokenizer: Any = None) -> Case:
    """Case ``index`` of a task at a target length (tokens of ``tokenizer``, default the
    active model's); the same arguments always give the same case."""
    if task not in TASKS:
        task_names(task)  # raises with the list
    if length < 256:
        raise TomesError(f"length {length} is too short for a task with a haystack",
                         "use 256 tokens or more (e.g. --lengths 2k,4k)")
    if tokenizer is None:
        from serving.tokenizers import active_tokenizer

        tokenizer = active_tokenizer()
    spec = TASKS[task]
    module = importlib.import_module(f"pipelines.evaluation.{spec.module}")
    return module.generate(spec, length, seed, index, tokenizer)


def score(prediction: str | None, case: Case | dict[str, Any]) -> float:
    """RULER's per-sample string match, 0..100 (``ruler.score``)."""
    from pipelines.evaluation.ruler import score as ruler_score

    answers = case.answers if isinstance(case, Case) else case["answers"]
    metric = case.metric if isinstance(case, Case) else case["metric"]
    return ruler_score(prediction, answers, metric)


__all__ = ["Case", "GROUPS", "TASKS", "Task", "generate", "score", "task_names", "tasks"]
