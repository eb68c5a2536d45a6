"""tomes ingest / docs / show / rm."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from app.api import Tomes
from app.cli import app
from app.cli._output import console, print_json, progress, safe
from app.cli.batch import RayAddressOpt, RayCpusOpt, RayOpt, ray_target

JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts.")


@app.command("ingest")
def ingest_cmd(
    paths: list[Path] = typer.Argument(..., help="Files or directories to ingest."),
    corpus: str = typer.Option("default", "--corpus", "-c", help="Corpus to add them to."),
    embed: bool = typer.Option(True, "--embed/--no-embed", help="Embed and index the chunks."),
    as_json: bool = JsonOpt,
    ray: bool = RayOpt,
    ray_address: str = RayAddressOpt,
    ray_cpus: int = RayCpusOpt,
) -> None:
    """Read files into a corpus: text, chunks, embeddings. Same content twice is a no-op.
    With --ray the files are read and chunked as Ray tasks and embedded with Ray Data."""
    with progress(not as_json) as on_event:
        report = Tomes().ingest(paths, corpus, embed=embed, on_event=on_event,
                                ray=ray_target(ray, ray_address), ray_cpus=ray_cpus)
    if as_json:
        print_json({
            "corpus": report.corpus, "embedded": report.embedded,
            "outcomes": [o.__dict__ for o in report.outcomes],
        })
    else:
        console.print(
            f"[green]{len(report.added)} added[/], "
            + (f"[green]{len(report.updated)} updated[/], " if report.updated else "")
            + f"{len(report.skipped)} unchanged, "
            f"[red]{len(report.failed)} failed[/] in corpus [bold]{safe(report.corpus)}[/]"
            + (f"; {report.embedded} chunks embedded" if report.embedded else "")
        )
        for o in report.failed:
            console.print(f"  [red]✗[/] {safe(o.error)}")
        for warning in report.warnings:
            console.print(f"  [yellow]![/] {safe(warning)}")
    if report.failed:  # the good files are stored; the exit code still says not all were
        raise typer.Exit(1)


@app.command("docs")
def docs_cmd(
    corpus: str = typer.Option(None, "--corpus", "-c", help="Only this corpus."),
    as_json: bool = JsonOpt,
) -> None:
    """List documents."""
    docs = Tomes().documents(corpus)
    if as_json:
        print_json(docs)
        return
    table = Table("id", "title", "corpus", "format", "chars", "chunks", "tokens")
    for d in docs:
        table.add_row(str(d["id"]), safe(d["title"]), safe(d["corpus"]), d["format"],
                      f"{d['chars']:,}", str(d["chunks"]), f"{d['tokens']:,}")
    console.print(table if docs else "No documents yet: add some with `tomes ingest PATH`.")


@app.command("show")
def show_cmd(
    doc: str = typer.Argument(..., help="Document id, title or file name."),
    limit: int = typer.Option(20, "--limit", "-n", min=0, help="Chunks to show (0: all)."),
    as_json: bool = JsonOpt,
) -> None:
    """A document's metadata and chunks."""
    info = Tomes().document(doc)
    if as_json:
        print_json(info)
        return
    chunks, meta = info.chunks, info.meta
    for key, value in info.items():
        if key in ("chunks", "meta", "warnings") or (key == "pages_without_text" and value is None):
            continue
        console.print(f"[bold]{key:>10}[/] {safe(value)}", highlight=False)
    if meta.get("boilerplate"):
        console.print(f"[bold]{'removed':>10}[/] {len(meta['boilerplate'])} boilerplate block(s)")
    for warning in info.warnings:
        console.print(f"[bold yellow]{'warning':>10}[/] {safe(warning)}", highlight=False)
    table = Table("#", "id", "span", "page", "tokens", "text")
    for c in chunks[: limit or None]:
        preview = " ".join(c["text"].split())[:80]
        table.add_row(str(c["ordinal"]), str(c["id"]), f"{c['start']}-{c['end']}",
                      str(c["page"] or ""), str(c["tokens"]), safe(preview))
    console.print(table)
    if limit and len(chunks) > limit:
        console.print(f"... {len(chunks) - limit} more (use --limit 0 for all)")


@app.command("rm")
def rm_cmd(doc: str = typer.Argument(..., help="Document id, title or file name."),
           as_json: bool = JsonOpt) -> None:
    """Remove a document, its chunks and its vectors."""
    info = Tomes().remove(doc)
    if as_json:
        print_json(info)
    else:
        console.print(f"Removed document {info['id']} ({safe(info['title'])}), {info['chunks']} chunks.")
