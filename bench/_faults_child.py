"""The `tomes` command as bench/faults.py runs it: the real CLI, plus a scripted model
("slow") and the hash embedder wrapped so that the bench can see, from outside, which
model request or embedding batch the process is in when it is killed.

    python bench/_faults_child.py ARGS...      # same arguments as `tomes`

Every request and batch is appended to TOMES_FAULTS_LOG as one JSON line; a request's
key is a hash of its messages, so the same request sent again after a kill is seen as
redone. TOMES_FAULTS_LATENCY (seconds per request) and TOMES_FAULTS_EMBED_DELAY
(seconds per embedding batch) slow things down enough to be killed mid-way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines import _mapreduce_prompts as P  # noqa: E402
from retrieval import embedders  # noqa: E402
from serving import registry  # noqa: E402
from serving.backends.scripted import ScriptedBackend  # noqa: E402

# Sentences of the bench's book (bench/_faults_files.py): the summary is borne out by it.
ANSWER = "The river keeps its own counsel through the valley."
# Long enough that all the map notes cannot fit one reduce prompt: the run collapses.
MAP_NOTE = "the river and the valley and the mill " * 12


def log(event: dict) -> None:
    path = os.environ.get("TOMES_FAULTS_LOG")
    if not path:
        return
    event = {"pid": os.getpid(), "t": time.time(), **event}
    # One write per line in append mode: lines from several processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(event) + "\n").encode())
    finally:
        os.close(fd)


def kind(messages: list[dict]) -> str:
    system = messages[0]["content"]
    if system.startswith(P.SYSTEM_MAP):
        return "map"
    if system.startswith(P.SYSTEM_MERGE):
        return "collapse"
    return "reduce"


def reply(request) -> str:
    k = kind(request.messages)
    prompt = request.messages[-1]["content"]
    if k == "map":
        # Each note names its section, so merges of different notes are different requests.
        section = re.search(r"Section (\d+)", prompt)
        note = f"section {section.group(1) if section else '?'}: {MAP_NOTE}"
        return json.dumps({"extracted": note, "rationale": "r", "answer": note, "confidence": 4})
    if k == "collapse":
        merged = "sections " + ", ".join(re.findall(r"section (\d+)", prompt)) + ": the river and the valley"
        return json.dumps({"extracted": merged, "rationale": "r", "answer": merged, "confidence": 4})
    return ANSWER


class Slow(ScriptedBackend):
    name = "slow"

    def __init__(self, **kwargs) -> None:
        super().__init__(reply, latency=float(os.environ.get("TOMES_FAULTS_LATENCY", "0.4")),
                         capacity=2, context_window=int(os.environ.get("TOMES_FAULTS_WINDOW", "1600")))

    async def achat(self, request):
        key = hashlib.sha1(json.dumps(request.messages, sort_keys=True).encode()).hexdigest()[:16]
        k = kind(request.messages)
        log({"ev": "begin", "kind": k, "key": key})
        response = await super().achat(request)
        log({"ev": "end", "kind": k, "key": key})
        return response


class LoggedHash(embedders.HashEmbedder):
    """The hash embedder (same vectors, same model id), one log line per batch."""

    def encode(self, texts, *, batch_size=32):
        log({"ev": "encode", "rows": len(texts)})
        delay = float(os.environ.get("TOMES_FAULTS_EMBED_DELAY", "0"))
        if delay:
            time.sleep(delay)
        return super().encode(texts, batch_size=batch_size)


registry.register("slow", "__main__:Slow")
embedders.register_embedder("hash", LoggedHash)

if __name__ == "__main__":
    from app.cli import main

    sys.argv = ["tomes", *sys.argv[1:]]
    main()
