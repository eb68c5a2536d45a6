"""Scale benchmark: one 200-item batch (one model call per item, "direct" strategy) against
loopback OpenAI-compatible servers that take L seconds a call and serve C calls at once,
the store in PostgreSQL. Side by side in one run:

- the local runner at 1, 2 and 4 items at once, and local Ray with 1, 2 and 4 workers
  (one item per worker at a time): Ray's cost per item is the difference of the two
  walls at the same parallelism, times the parallelism, over the items;
- the local runner against 1 and against 2 endpoints (C each), 8 items at once, at L
  and at a latency where the model, not this machine's 2 cores, is the bottleneck
  (--endpoint-latency, 0.5 s: at 0.05 s the runner itself tops out near 35 items/s).

    .venv/bin/python bench/scale.py                  # L = 0.05 s, C = 4, 200 items (~4 min)
    .venv/bin/python bench/scale.py --sections endpoints   # one section, merged into the JSON

Prints figures and writes bench/results/scale.json. Ray's start-up and each worker's
first item (imports, store connection) are left out: a warm-up batch runs first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(msg, flush=True)


_SERVER = """
import sys, threading
sys.path.insert(0, sys.argv[3])
from tests.test_serving_http import FakeVLLM
latency, capacity = float(sys.argv[1]), int(sys.argv[2])
fake = FakeVLLM()
slots = threading.BoundedSemaphore(capacity)

class Bounded(fake.server.RequestHandlerClass):  # per request: connections stay open
    def do_POST(self):
        with slots:
            super().do_POST()

fake.server.RequestHandlerClass = Bounded
fake.script.extend(("sleep", latency, ("ok", "an answer")) for _ in range(100_000))
fake.thread.start()
print(fake.base_url, flush=True)
sys.stdin.read()  # until the bench closes it
"""


class Server:
    """A FakeVLLM in its own process (as a model server is: one in the bench's process
    would take the GIL from the runner it serves) whose every reply takes ``latency`` and
    that serves ``capacity`` requests at once (the rest wait, as on a full batch)."""

    def __init__(self, latency: float, capacity: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(latency), str(capacity),
                                      str(ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.base_url = self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def server(latency: float, capacity: int) -> Server:
    return Server(latency, capacity)


def items(n: int, tag: str) -> list[str]:
    return [json.dumps({"custom_id": f"{tag}{i:03d}", "target": "book", "strategy": "direct",
                        "question": f"What happens in part {i} ({tag})?"}) for i in range(n)]


def check(out: Path, n: int) -> dict:
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    ids = [r["custom_id"] for r in records]
    return {"lost": n - len(set(ids)), "duplicated": len(ids) - len(set(ids)),
            "failed": sum(r["status"] != "done" for r in records)}


def one(tomes, work: Path, name: str, n: int, **kwargs) -> dict:
    source = work / f"{name}.jsonl"
    source.write_text("\n".join(items(n, name)) + "\n")
    out = work / f"{name}.out.jsonl"
    started = time.perf_counter()
    report = tomes.batch(source, out, **kwargs)
    wall = time.perf_counter() - started
    row = {"wall_s": round(wall, 3), "items_per_s": round(n / wall, 2), **check(out, n),
           "calls": report.calls}
    log(f"  {name:<14} {wall:7.2f} s  {n / wall:7.1f} items/s  lost {row['lost']} "
        f"dup {row['duplicated']} failed {row['failed']}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--capacity", type=int, default=4)
    parser.add_argument("--endpoint-latency", type=float, default=0.5)
    parser.add_argument("--sections", default="endpoints,workers")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    n, L, C = args.items, args.latency, args.capacity

    from tests import _postgres

    pg = _postgres.start()
    work = Path(tempfile.mkdtemp(prefix="tomes-scale-"))
    a, b = server(L, C), server(L, C)
    slow_a, slow_b = server(args.endpoint_latency, C), server(args.endpoint_latency, C)
    os.environ.update(TOMES_HOME=str(work / "home"), TOMES_BACKEND="openai",
                      TOMES_EMBEDDER="hash", TOMES_DATABASE_URL=pg.create_database("scale"))
    os.environ.pop("TOMES_CONCURRENCY", None)
    results: dict = {"items": n, "latency_s": L, "server_capacity": C,
                     "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    try:
        from app import settings
        from app.api import Tomes

        def use(*fakes) -> Tomes:
            os.environ["TOMES_BASE_URL"] = ",".join(f.base_url for f in fakes)
            settings.reset()
            return Tomes()

        book = work / "book.txt"
        book.write_text("The harbour town keeps a lighthouse on the northern cape. " * 40)
        use(a).ingest([book], "default")

        log(f"{n} items, L = {L} s, C = {C} per server; store: PostgreSQL")
        checked = []
        for latency, (x, y) in ((L, (a, b)), (args.endpoint_latency, (slow_a, slow_b))):
            if "endpoints" not in sections:
                break
            log(f"endpoints at L = {latency} s (local runner, 8 items at once):")
            tag = f"{latency:g}".replace(".", "_")
            tomes = use(x)
            one(tomes, work, f"warm1-{tag}", 8, concurrency=8)
            e1 = one(tomes, work, f"endpoints1-{tag}", n, concurrency=8)
            tomes = use(x, y)
            one(tomes, work, f"warm2-{tag}", 8, concurrency=8)
            e2 = one(tomes, work, f"endpoints2-{tag}", n, concurrency=8)
            checked += [e1, e2]
            results[f"endpoints_at_{latency:g}s"] = {
                "one": e1, "two": e2, "speedup": round(e2["items_per_s"] / e1["items_per_s"], 2),
                "floor_one_s": round(n * latency / C, 2), "floor_two_s": round(n * latency / (2 * C), 2)}
            log(f"  2 endpoints: {results[f'endpoints_at_{latency:g}s']['speedup']}x the items/s of one")

        import ray

        tomes = use(a)
        rows = {}
        for workers in (1, 2, 4) if "workers" in sections else ():
            log(f"{workers} at once:")
            one(tomes, work, f"warm-local{workers}", 4, concurrency=workers)
            local = one(tomes, work, f"local{workers}", n, concurrency=workers)
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            try:
                one(tomes, work, f"warm-ray{workers}", 2 * workers, ray=True)
                on_ray = one(tomes, work, f"ray{workers}", n, ray=True)
            finally:
                ray.shutdown()
            overhead_ms = (on_ray["wall_s"] - local["wall_s"]) * workers / n * 1000
            rows[str(workers)] = {"local": local, "ray": on_ray,
                                  "ray_overhead_ms_per_item": round(overhead_ms, 1),
                                  "ratio_ray_to_local_items_per_s":
                                      round(on_ray["items_per_s"] / local["items_per_s"], 2)}
            log(f"  Ray adds {overhead_ms:.1f} ms per item")
        if rows:
            results["workers"] = rows
        checked += [r[k] for r in rows.values() for k in ("local", "ray")]
        path = ROOT / "bench" / "results" / "scale.json"
        if sections != {"endpoints", "workers"} and path.exists():  # one section: merge
            results = {**json.loads(path.read_text()), **results}
        goals = results.setdefault("goals", {})
        if "endpoints" in sections:
            goals["two_endpoints_at_least_1.8x"] = {
                k: v["speedup"] >= 1.8 for k, v in results.items() if k.startswith("endpoints_at_")}
        if rows:
            goals["ray_under_20ms_per_item"] = all(
                r["ray_overhead_ms_per_item"] < 20 for r in rows.values())
        goals["nothing_lost_or_duplicated"] = all(
            r["lost"] == 0 and r["duplicated"] == 0 and r["failed"] == 0 for r in checked)
    finally:
        for fake in (a, b, slow_a, slow_b):
            fake.stop()
        pg.stop()
    path.write_text(json.dumps(results, indent=2) + "\n")
    log(json.dumps(results["goals"]))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
