"""tomes batch: questions and summaries from a JSONL file, unattended and resumable."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from app.api import Tomes
from app.cli import app
from app.cli._output import console, console_err, print_json, safe
from app.events import Event, OnEvent

# Exit status when the batch ran but some items failed (their errors are in the output).
SOME_FAILED = 2
# Typer has no option with an optional value, so the address is an option of its own;
# ``main`` reads `--ray ADDRESS` as `--ray-address ADDRESS` (spell_ray_address).
RayOpt = typer.Option(False, "--ray", help="Run on Ray: a local Ray started for the run, or "
                      "the cluster at --ray ADDRESS (or --ray-address ADDRESS).")
RayAddressOpt = typer.Option(
    None, "--ray-address", metavar="ADDRESS",
    help="A running Ray cluster (host:6379, ray://host:10001, auto); implies --ray. Its "
         "machines share the store only through TOMES_DATABASE_URL (PostgreSQL).")
RayCpusOpt = typer.Option(None, "--ray-cpus", min=1,
                          help="CPUs (workers) of the local Ray started by --ray (default: all).")


# What `--ray` may be followed by as the address of a running cluster (what is not is
# the command's next argument: `tomes ingest --ray books/`).
_RAY_ADDRESS = re.compile(r"^(?:auto|ray://\S+|[\w.-]+:\d+)$")


def spell_ray_address(argv: list[str]) -> list[str]:
    """``--ray ADDRESS`` and ``--ray=ADDRESS`` as ``--ray-address ADDRESS``."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--ray=") and arg != "--ray=":
            out[i] = "--ray-address=" + arg[len("--ray="):]
        elif arg == "--ray" and i + 1 < len(out) and _RAY_ADDRESS.match(out[i + 1]):
            out[i] = "--ray-address"
    return out


def ray_target(ray: bool, address: str | None) -> str | bool | None:
    """--ray / --ray-address for the API: True for a local Ray, else the address."""
    return address or (True if ray else None)


@app.command("batch")
def batch_cmd(
    input: Path = typer.Argument(..., help="JSONL: one item per line, each with custom_id, "
                                 'target and "question" or "summary" (optional "strategy", '
                                 '"options").'),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL answers, one per custom_id. Run "
                             "again with the same --out to carry on where it stopped."),
    concurrency: int = typer.Option(None, "--concurrency", "-j", min=1,
                                    help="Items at once (default and most: the backend's capacity)."),
    corpus: str = typer.Option("default", "--corpus", "-c",
                               help="Corpus that file targets are ingested into."),
    retry_failed: bool = typer.Option(False, "--retry-failed",
                                      help="Run the items that failed before again."),
    backend: str = typer.Option(None, "--backend", "-b", help="Serving backend (default: settings)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON for scripts."),
    ray: bool = RayOpt,
    ray_address: str = RayAddressOpt,
    ray_cpus: int = RayCpusOpt,
) -> None:
    """Run many questions and summaries; answers go to --out as they finish.

    Exits with 2 when some items failed (each failure is a line in --out with its cause
    and fix)."""
    with batch_progress(not as_json) as on_event:
        report = Tomes(backend=backend).batch(input, out, concurrency=concurrency, corpus=corpus,
                                              retry_failed=retry_failed, on_event=on_event,
                                              ray=ray_target(ray, ray_address), ray_cpus=ray_cpus)
    finish(report, as_json)


def finish(report: Any, as_json: bool) -> None:
    if as_json:
        data = report.to_dict()
        data.pop("records")  # they are in the output file
        print_json(data)
    else:
        print_report(report)
    if report.failed:
        raise typer.Exit(SOME_FAILED)


@contextmanager
def batch_progress(enabled: bool = True) -> Iterator[OnEvent]:
    """One bar for the batch, with its ETA and the done / failed counts, on stderr."""
    if not enabled:
        yield lambda _e: None
        return
    bars = Progress(
        TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
        TextColumn("[green]{task.fields[ok]} done[/] [red]{task.fields[bad]} failed[/]"),
        TextColumn("{task.fields[message]}", style="dim"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console_err, transient=False,
    )
    task = bars.add_task("batch", total=None, ok=0, bad=0, message="")

    def on_event(event: Event) -> None:
        if event.stage != "batch":
            return
        bars.update(task, completed=event.done, total=event.total,
                    ok=event.data.get("done", 0), bad=event.data.get("failed", 0),
                    message=safe(event.message[:30]))

    with bars:
        yield on_event


def print_report(report: Any) -> None:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=safe(report.out),
                  title_justify="left")
    table.add_column("items", justify="left")
    table.add_column("", justify="right")
    rows = [
        ("done", f"[green]{report.done}[/]"),
        ("failed", f"[red]{report.failed}[/]" + (f" ({report.bad_lines} bad lines)"
                                                 if report.bad_lines else "")),
        ("skipped (already in the output)", str(report.skipped)),
        ("runs carried on", str(report.resumed)),
        ("model calls", f"{report.calls:,}" + (f" + {report.cache_hits:,} from cache"
                                               if report.cache_hits else "")),
        ("tokens", f"{report.prompt_tokens:,} prompt + {report.completion_tokens:,} completion"),
        ("wall", f"{report.wall_s:,.1f} s at {report.concurrency} at once"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    failures = [r for r in report.records if r.get("status") != "done"]
    for record in failures[:10]:
        error = record.get("error") or {}
        console.print(f"[red]✗[/] {safe(record['custom_id'])}: {safe(error.get('cause', '?'))}"
                      + (f"\n    [yellow]fix:[/] {safe(error['fix'])}" if error.get("fix") else ""),
                      highlight=False)
    if len(failures) > 10:
        console.print(f"[dim]... {len(failures) - 10} more failures in {safe(report.out)}[/]")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {safe(note)}", highlight=False)
