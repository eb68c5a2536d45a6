"""The recursive controller for real: actions mode driven by the embedded SmolLM2-135M
(chosen from its preset, which says it cannot write code) over a real book."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.api import Tomes


@pytest.mark.slow
def test_embedded_model_drives_actions_mode_on_a_real_book(shared_data: Path) -> None:
    tomes = Tomes(backend="embedded")
    doc = tomes.ingest([shared_data / "books" / "a_modest_proposal.txt"], "swift",
                       embed=False).added[0].document_id
    chunks = {c["id"] for c in tomes.document(doc)["chunks"]}
    max_seconds = 240.0
    started = time.monotonic()
    result = tomes.ask(doc, "What does the author propose to do with the children of the poor?",
                       strategy="recursive", max_iterations=5, map_chunks=4,
                       max_seconds=max_seconds)
    elapsed = time.monotonic() - started
    d = result.details
    assert d["mode"] == "actions" and "smollm2" in d["mode_from"]
    assert 1 <= d["iterations"] <= 5
    # Within its limits: the time limit ends the work, at most one call after it.
    assert elapsed < max_seconds + 60
    assert result.answer.strip()
    if d["limit"] is None:
        assert d["answer_from"] in ("final", "summary", "evidence")
    else:
        assert d["limit"] in ("iterations", "wall_time", "errors", "tokens")
    # Whatever the model chose, the controller read real chunks and says which.
    assert d["read"] and set(d["read"]) <= chunks
    assert result.provenance and all(p.chunk_id in chunks and p.quote for p in result.provenance)
    calls = tomes.calls(result.run_id)
    iterations = [c for c in calls if c["node"] == "iteration"]
    assert len(iterations) >= d["iterations"] and all(c["parent_id"] is None for c in iterations)
    ids = {c["id"] for c in iterations}
    assert all(c["parent_id"] in ids for c in calls if c["node"] == "map")
    # Every step ran an action the model chose under the schema (or one taken for it,
    # recorded as a fallback), unless a limit stopped it before it could.
    assert all(s["what"].get("action") or s["error"] for s in d["steps"])
    assert tomes.run(result.run_id)["status"] == "done"
