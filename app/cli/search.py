"""tomes search / reembed."""

from __future__ import annotations

import typer
from rich.table import Table

from app.api import Tomes
from app.cli import app
from app.cli._output import console, print_json, progress, safe


@app.command("search")
def search_cmd(
    corpus: str = typer.Argument(..., help="Corpus to search."),
    query: str = typer.Argument(..., help="What to look for."),
    k: int = typer.Option(10, "-k", "--top", min=1, help="How many chunks to return."),
    mode: str = typer.Option("hybrid", "--mode", "-m", help="dense | keyword | hybrid."),
    document: str = typer.Option(None, "--doc", "-d", help="Only this document (id, title or file name)."),
    fusion: str = typer.Option(None, "--fusion", help="Hybrid fusion: rrf | score (default: TOMES_FUSION, else rrf)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Ranked chunks for a query, with document, span and score."""
    with progress(not as_json) as on_event:
        hits = Tomes(fusion=fusion).search(corpus, query, k, mode, document=document,
                                           on_event=on_event)
    if as_json:
        print_json([h.to_dict() for h in hits])
        return
    if not hits:
        console.print(f"No matches in corpus [bold]{safe(corpus)}[/].")
        return
    table = Table("#", "score", "document", "chunk", "span", "page", "text")
    for rank, h in enumerate(hits, start=1):
        preview = " ".join(h.text.split())
        table.add_row(
            str(rank), f"{h.score:.4f}", f"{safe(h.title)} [dim]({h.document_id})[/]", str(h.chunk_id),
            f"{h.start}-{h.end}", str(h.page or ""),
            safe(preview[:160] + ("…" if len(preview) > 160 else "")),
        )
    console.print(table)


@app.command("reembed")
def reembed_cmd(
    corpus: str = typer.Argument(..., help="Corpus whose dense index to rebuild."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Rebuild a corpus's dense index with the current embedder (TOMES_EMBEDDER)."""
    tomes = Tomes()
    with progress(not as_json) as on_event:
        n = tomes.reembed(corpus, on_event=on_event)
    info = tomes.index_status(corpus)
    if as_json:
        print_json({"corpus": corpus, "embedded": n, "index": info})
    else:
        console.print(f"Embedded {n} chunks of corpus [bold]{safe(corpus)}[/] with {info['model']} "
                      f"({info['vectors']} vectors, {info['kind']} index).")
