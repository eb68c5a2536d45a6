"""An EpBench-style generated book with questions of known answers. The generator lives
in pipelines/evaluation/episodic.py (the evaluation harness uses it); this module keeps
the name the memory benchmark imports.

    from bench.epbench_gen import generate
    book = generate(seed=7, chapters=30)
"""

from __future__ import annotations

from pipelines.evaluation.episodic import (  # noqa: F401 - re-exported
    ACTIONS, FILLER, FIRST, LAST, PLACES, ROLES, Book, Chapter, Person, candidates,
)
from pipelines.evaluation.episodic import generate_book as generate  # noqa: F401
