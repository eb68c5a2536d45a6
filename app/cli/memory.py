"""tomes memory build / show: the episodic memory workspace of a document or corpus."""

from __future__ import annotations

from typing import Any

import typer
from rich import box
from rich.table import Table

from app.api import Tomes
from app.cli import app
from app.cli._output import console, print_json, progress, safe

memory_app = typer.Typer(
    help="The episodic memory workspace: who did what, where and when.",
    no_args_is_help=True,
)
app.add_typer(memory_app, name="memory")

TargetArg = typer.Argument(..., help="A document (id, title, file name) or a corpus name.")


@memory_app.command("build")
def build_cmd(
    target: str = TargetArg,
    backend: str = typer.Option(None, "--backend", "-b", help="Serving backend (default: settings)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Read the target's chunks into its workspace (only those it has not read yet)."""
    with progress(not as_json) as on_event:
        result = Tomes(backend=backend).memory_build(target, on_event=on_event)
    if as_json:
        print_json(result.to_dict())
        return
    built = result.details.get("built") or {}
    console.print(safe(result.answer), highlight=False)
    if result.details.get("workspace") == "existing":
        console.print("[dim]nothing new to read: the workspace had every chunk[/]")
    elif built:
        merges = ", ".join(f"{n} by {how}" for how, n in sorted(built.get("merges", {}).items()))
        console.print(
            f"[dim]read {built.get('chunks', 0)} chunks: {built.get('entities', 0)} new entities"
            + (f", names joined to known ones {safe(merges)}" if merges else "")
            + f", {built.get('dropped', 0)} unusable items dropped[/]", highlight=False)
    for note in result.details.get("fallbacks") or []:
        console.print(f"[yellow]fallback:[/] {safe(note)}", highlight=False)
    cached = f", {result.cache_hits} from cache" if result.cache_hits else ""
    console.print(f"[dim]run {result.run_id} · {result.calls} model calls{cached} · "
                  f"{result.prompt_tokens:,} prompt + {result.completion_tokens:,} completion tokens[/]")


@memory_app.command("show")
def show_cmd(
    target: str = TargetArg,
    entity: str = typer.Option(None, "--entity", "-e", help="Show this entity's timeline (any of its names)."),
    top: int = typer.Option(10, "--top", "-n", min=1, help="How many top entities and places."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """The workspace as counts and top entities, or one entity's timeline as a table."""
    data = Tomes().memory(target, entity=entity, top=top)
    if as_json:
        print_json(data)
        return
    if entity is not None:
        _timeline(data)
        return
    counts = data["counts"]
    console.print(f"[bold]memory workspace of {safe(data['title'])}[/] ({safe(data['target'])})",
                  highlight=False)
    console.print(
        f"{counts['entities']} entities · {counts['places']} places · {counts['events']} events · "
        f"{counts['states']} roles and states · {counts['questions']} open questions "
        f"({counts['answered']} answered) · {counts['chunks_read']} of {counts['chunks']} chunks read")
    if not data["complete"]:
        console.print(f"[yellow]not complete:[/] read the rest with "
                      f"`tomes memory build {safe(target)}`", highlight=False)
    for key, title in (("top_entities", "entities"), ("top_places", "places")):
        rows = data[key]
        if not rows:
            continue
        table = Table(title=f"top {title}", box=box.SIMPLE_HEAD, title_justify="left")
        table.add_column("name")
        table.add_column("kind", no_wrap=True)
        table.add_column("mentions", justify="right")
        table.add_column("also called", overflow="fold")
        for e in rows:
            table.add_row(safe(e["name"]), safe(e["kind"]), str(e["mentions"]),
                          safe(", ".join(e["aliases"][1:6])))
        console.print(table)


def _timeline(data: dict[str, Any]) -> None:
    e = data["entity"]
    aliases = ", ".join(a for a in e["aliases"] if a != e["name"])
    console.print(f"[bold]{safe(e['name'])}[/] ({safe(e['kind'])}"
                  + (f"; also called {safe(aliases)}" if aliases else "") + f") · "
                  f"{e['mentions']} mentions in {len(e['chunks'])} chunks", highlight=False)
    if data.get("also_matching"):
        console.print(f"[dim]other entities by that name: {safe(', '.join(data['also_matching']))}[/]",
                      highlight=False)
    table = Table(box=box.SIMPLE_HEAD)
    for name, kw in (("#", {"justify": "right"}), ("when", {}), ("where", {}), ("what", {"no_wrap": True}),
                     ("", {"overflow": "fold"}), ("chunk", {"justify": "right"})):
        table.add_column(name, **kw)
    for i, item in enumerate(data["timeline"], 1):
        when = item["time"] + (f" ({item['date']})" if item.get("date") and item["date"] not in item["time"] else "")
        if item.get("time_anchor") and not item.get("date"):
            when += f", after {item['time_anchor']}"
        where = item["place"] + (" [dim](carried)[/]" if item["place"] and item.get("place_carried") else "")
        text = item["text"] + (f" [dim]with {safe(', '.join(item['with']))}[/]" if item.get("with") else "")
        table.add_row(str(i), safe(when) + (" [dim](carried)[/]" if when and item.get("time_carried") else ""),
                      safe(item["place"]) + where[len(item["place"]):], safe(item["type"]),
                      safe(item["text"]) + text[len(item["text"]):], str(item["chunk_id"]))
    console.print(table)
