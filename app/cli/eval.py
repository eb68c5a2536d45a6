"""tomes eval: tasks with known answers, every strategy side by side, resumable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich import box
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from app.api import Tomes
from app.cli import app
from app.cli._output import console, console_err, print_json, safe
from app.errors import TomesError
from app.events import Event, OnEvent


@app.command("eval")
def eval_cmd(
    task: str = typer.Argument(None, help="A task, a group (ruler, niah, all) or a comma list; "
                               "`tomes eval --list` shows them."),
    strategy: list[str] = typer.Option(None, "--strategy", "-s",
                                       help="A strategy to compare (repeat it; default: all but auto)."),
    lengths: str = typer.Option("4k", "--lengths", "-l", help="Input lengths in tokens, e.g. 4k,8k,32k."),
    n: int = typer.Option(3, "--n", "-n", min=1, help="Cases per task and length."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated cases."),
    backend: str = typer.Option(None, "--backend", "-b", help="Serving backend (default: settings)."),
    model: str = typer.Option(None, "--model", "-m", help="Model (default: settings)."),
    out: Path = typer.Option(None, "--out", "-o", help="Results folder (default: <home>/eval). "
                             "The same folder again carries on where it stopped."),
    concurrency: int = typer.Option(None, "--concurrency", "-j", min=1,
                                    help="Cases at once (default and most: the backend's capacity)."),
    list_tasks: bool = typer.Option(False, "--list", help="List the tasks and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON for scripts."),
) -> None:
    """Score strategies on seeded tasks with known answers (RULER, aggregation, episodic):
    accuracy, evidence reach, calls, tokens and time per task x strategy x length.

    Writes cases.jsonl, summary.json, table.md and a plot per task to --out."""
    tomes = Tomes(backend=backend, model=model)
    if list_tasks:
        rows = tomes.eval_tasks()
        if as_json:
            print_json(rows)
            return
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("task", "group", "what it tests"):
            table.add_column(col)
        for row in rows:
            table.add_row(row["name"], row["group"], safe(row["about"]))
        console.print(table)
        return
    if not task:
        raise TomesError("no task named", "name one (e.g. `tomes eval niah_single_2`); "
                         "`tomes eval --list` shows them")
    strategies = [s for item in strategy or [] for s in item.split(",") if s] or None
    with eval_progress(not as_json) as on_event:
        report = tomes.eval(task, strategies=strategies, lengths=lengths, n=n, seed=seed,
                            out=out, concurrency=concurrency, on_event=on_event)
    if as_json:
        print_json(report.to_dict())
        return
    print_summary(report)


@contextmanager
def eval_progress(enabled: bool = True) -> Iterator[OnEvent]:
    if not enabled:
        yield lambda _e: None
        return
    bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[message]}", style="dim"), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console_err)
    ids: dict[str, int] = {}

    def on_event(event: Event) -> None:
        name = {"eval-generate": "cases", "eval-ingest": "ingest", "eval": "eval"}.get(event.stage)
        if name is None:
            return
        if name not in ids:
            ids[name] = bars.add_task(name, total=event.total, message="")
        bars.update(ids[name], completed=event.done, total=event.total,
                    message=safe((event.message or "")[:40]))

    with bars:
        yield on_event


def print_summary(report) -> None:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=safe(report.out), title_justify="left")
    for col in ("task", "strategy", "length", "n", "accuracy", "reach any", "reach final",
                "calls", "prompt tok", "wall s"):
        table.add_column(col, justify="left" if col in ("task", "strategy") else "right")

    def pct(v):
        return "–" if v is None else f"{100 * v:.0f}%"

    for r in report.summary:
        table.add_row(r["task"], r["strategy"], f"{r['length']:,}", str(r["n"]), pct(r["accuracy"]),
                      pct(r["reach_any"]), pct(r["reach_final"]), f"{r['calls']:,}",
                      f"{r['prompt_tokens']:,}", f"{r['wall_s']:,.1f}")
    console.print(table)
    console.print(f"{report.done} cases run ({report.failed} failed), {report.skipped} already done, "
                  f"{report.elapsed_s:,.0f} s", highlight=False)
    for path in report.files:
        console.print(f"[dim]{safe(path)}[/]", highlight=False)
