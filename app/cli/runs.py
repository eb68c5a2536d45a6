"""tomes summarize / ask / resume / runs: pipeline runs and their results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from app.api import STRATEGIES, Result, Tomes
from app.cli import app
from app.cli._output import console, print_json, progress, safe

JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts.")
BackendOpt = typer.Option(None, "--backend", "-b", help="Serving backend (default: settings).")
MapTokensOpt = typer.Option(
    None, "--map-tokens", min=0,
    help="Tokens of consecutive chunks per map call; 0: one chunk per call (default: "
    "TOMES_MAP_TOKENS, else what the window leaves, up to 16,000). A target that fits "
    "one call is answered by one call.",
)


GROUNDING_HELP = ("How records stay true to the text: select (pick sentences; the default "
                  "for the embedded model) | verify (records quote their text, checked) | off | "
                  "auto (default: TOMES_GROUNDING).")
STRICT_HELP = "Drop answer sentences that the text they cite does not bear out."


@app.command("summarize")
def summarize_cmd(
    doc: str = typer.Argument(..., help="Document id, title or file name (or a corpus name)."),
    length: str = typer.Option("medium", "--length", "-l", help="short | medium | long."),
    style: str = typer.Option(None, "--style", "-s", help='Free text, e.g. "bullet points".'),
    backend: str = BackendOpt,
    map_tokens: int = MapTokensOpt,
    grounding: str = typer.Option(None, "--grounding", help=GROUNDING_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
    each: bool = typer.Option(False, "--each", help="DOC is a corpus: one summary per document, "
                              "run as a resumable batch."),
    out: Path = typer.Option(None, "--out", "-o", help="--each: JSONL of the summaries "
                             "(default: a file under TOMES_HOME/batches)."),
    concurrency: int = typer.Option(None, "--concurrency", "-j", min=1,
                                    help="--each: documents at once (default: the backend's capacity)."),
    as_json: bool = JsonOpt,
) -> None:
    """Summarize a long document by map-reduce, with the chunks the summary rests on
    (--each: every document of a corpus, one summary each)."""
    if length not in ("short", "medium", "long"):
        raise typer.BadParameter("choose short, medium or long", param_hint="--length")
    if each:
        _summarize_each(doc, length, style, backend, map_tokens, grounding, strict, out,
                        concurrency, as_json)
        return
    with progress(not as_json) as on_event:
        result = Tomes(backend=backend).summarize(doc, length=length, style=style,
                                                  map_tokens=map_tokens, on_event=on_event,
                                                  grounding=grounding, strict=strict)
    _show(result, as_json)


@app.command("ask")
def ask_cmd(
    target: str = typer.Argument(..., help="A document (id, title, file name) or a corpus name."),
    question: str = typer.Argument(..., help="The question, in quotes."),
    strategy: str = typer.Option("auto", "--strategy",
                                 help=f"How to answer: {' | '.join(STRATEGIES)} (auto picks one "
                                 "and says why)."),
    backend: str = BackendOpt,
    map_tokens: int = MapTokensOpt,
    mode: str = typer.Option(None, "--mode", help="recursive: code | actions (default: "
                             "from the model's preset)."),
    max_depth: int = typer.Option(None, "--max-depth", min=0, help="recursive: recursion depth."),
    max_iterations: int = typer.Option(None, "--max-iterations", min=1,
                                       help="recursive: root iterations."),
    budget_tokens: int = typer.Option(None, "--budget-tokens", min=1,
                                      help="recursive: total token budget."),
    k: int = typer.Option(None, "-k", "--k", min=1, help="rag: passages to retrieve (default 8)."),
    grounding: str = typer.Option(None, "--grounding", help="mapreduce: " + GROUNDING_HELP),
    strict: bool = typer.Option(False, "--strict", help="mapreduce: " + STRICT_HELP),
    as_json: bool = JsonOpt,
) -> None:
    """Answer a question over a document or corpus, with provenance."""
    if strategy not in STRATEGIES:
        raise typer.BadParameter(f"choose one of: {', '.join(STRATEGIES)}", param_hint="--strategy")
    given = {"mode": mode, "max_depth": max_depth, "max_iterations": max_iterations,
             "budget_tokens": budget_tokens, "grounding": grounding, "strict": strict or None,
             "k": k}
    options = {k: v for k, v in given.items() if v is not None}
    with progress(not as_json) as on_event:
        result = Tomes(backend=backend).ask(target, question, strategy=strategy,
                                            map_tokens=map_tokens, on_event=on_event, **options)
    _show(result, as_json)


def _summarize_each(corpus: str, length: str, style: str | None, backend: str | None,
                    map_tokens: int | None, grounding: str | None, strict: bool,
                    out: Path | None, concurrency: int | None, as_json: bool) -> None:
    from app.cli.batch import batch_progress, finish

    tomes = Tomes(backend=backend)
    with batch_progress(not as_json) as on_event:
        report = tomes.summarize_each(corpus, length=length, style=style, out=out,
                                      concurrency=concurrency, map_tokens=map_tokens,
                                      grounding=grounding, strict=strict, on_event=on_event)
    if not as_json:
        titles = {f"doc:{d['id']}": d["title"]
                  for d in tomes.documents(corpus.removeprefix("corpus:"))}
        for record in report.records:
            if record.get("status") != "done":
                continue
            console.print(f"\n[bold]{safe(titles.get(record['target'], record['target']))}[/] "
                          f"[dim]({safe(record['target'])}, run {record['run_id']})[/]")
            console.print(safe(record["answer"]), highlight=False)
        console.print()
    finish(report, as_json)


@app.command("resume")
def resume_cmd(
    run_id: str = typer.Argument(..., help="Run id (from `tomes runs`)."),
    backend: str = typer.Option(None, "--backend", "-b",
                                help="Continue on this backend (default: the run's own)."),
    model: str = typer.Option(None, "--model", "-m", help="Continue on this model (default: the run's own)."),
    base_url: str = typer.Option(None, "--base-url", help="Continue on this endpoint (default: the run's own)."),
    as_json: bool = JsonOpt,
) -> None:
    """Continue a stopped run on the model it started with; work already done is not repeated."""
    with progress(not as_json) as on_event:
        result = Tomes().resume(run_id, on_event=on_event, backend=backend, model=model,
                                base_url=base_url)
    _show(result, as_json)


@app.command("runs")
def runs_cmd(
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many, newest first."),
    why: bool = typer.Option(False, "--why", help="Show why each run's strategy was chosen "
                             "instead of its answer."),
    as_json: bool = JsonOpt,
) -> None:
    """List runs, newest first: status, pipeline (auto:NAME when auto chose it), target,
    question and answer."""
    runs = Tomes().runs(limit)
    if as_json:
        print_json(runs)
        return
    if not runs:
        console.print("No runs yet: try `tomes summarize DOC` or `tomes ask TARGET \"question\"`.")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", no_wrap=True, min_width=36)  # users copy it into `tomes resume`
    chosen = any(r.get("chosen_by") for r in runs)
    pipeline_width = 14 if chosen else 9  # "auto:mapreduce"
    for name, width in (("status", 11), ("pipeline", pipeline_width)):
        table.add_column(name, no_wrap=True, min_width=width)
    table.add_column("target", no_wrap=True, overflow="ellipsis", max_width=16)
    # Rich squeezes unwrappable columns to nothing when one row is too long: the last
    # column gets what the others leave, explicitly.
    rest = max(12, console.width - (36 + 7 + pipeline_width + 16) - 2 * 5)
    table.add_column("question / why" if why else "question / answer", overflow="ellipsis",
                     no_wrap=True, max_width=rest)
    colour = {"done": "green", "failed": "red", "running": "yellow", "interrupted": "magenta"}
    for r in runs:
        text = r["question"] or ""
        if why:
            text = (text + " → " if text else "") + (r.get("why") or "named by the user")
        elif r["answer"]:
            text = (text + " → " if text else "") + " ".join(r["answer"].split())
        elif r["error"]:
            text = (text + " → " if text else "") + r["error"]
        pipeline = f"{r['chosen_by']}:{r['pipeline']}" if r.get("chosen_by") else r["pipeline"]
        table.add_row(r["id"], f"[{colour.get(r['status'], 'white')}]{r['status']}[/]",
                      safe(pipeline), safe(r["target"]), safe(text))
    console.print(table)


def _show(result: Result, as_json: bool) -> None:
    if as_json:
        data: dict[str, Any] = result.to_dict()
        data["tokens"] = result.tokens
        print_json(data)
        return
    console.print(safe(result.answer) if result.answer else "[dim](no answer)[/]", highlight=False)
    if result.provenance:
        console.print("\n[bold]rests on[/]")
        for p in result.provenance[:12]:
            page = f" p.{p.page}" if p.page else ""
            quote = p.quote if len(p.quote) <= 100 else p.quote[:99] + "…"
            console.print(
                f"  [cyan]chunk {p.chunk_id}[/] · doc {p.document_id} {safe(p.title)} · "
                f"chars {p.start}-{p.end}{page}\n    [dim]“{safe(quote)}”[/]",
                highlight=False,
            )
        if len(result.provenance) > 12:
            console.print(f"  [dim]... {len(result.provenance) - 12} more chunks (see --json)[/]")
    support = result.details.get("support") or {}
    for judged in support.get("unsupported") or []:
        mark = "dropped" if support.get("dropped") else "unsupported"
        console.print(f"[red]{mark}:[/] {safe(judged['sentence'])} [dim](not borne out by the "
                      f"text it cites{'; names ' + ', '.join(judged['invented']) if judged['invented'] else ''})[/]",
                      highlight=False)
    if result.details.get("unsupported_records"):
        console.print(f"[yellow]unchecked:[/] {result.details['unsupported_records']} notes were not "
                      "borne out by their own text and were left out", highlight=False)
    if result.details.get("why"):  # what auto chose, and why
        dropped = result.details.get("dropped_options")
        console.print(f"[dim]strategy {safe(result.pipeline)}, chosen by "
                      f"{safe(result.details.get('chosen_by') or 'auto')}: "
                      f"{safe(result.details['why'])}"
                      + (f" (not used by it: {safe(', '.join(dropped))})" if dropped else "")
                      + "[/]", highlight=False)
    for note in result.details.get("fallbacks") or []:  # never silent: the answer is less than asked
        console.print(f"[yellow]fallback:[/] {safe(note)}", highlight=False)
    cached = f", {result.cache_hits} from cache" if result.cache_hits else ""
    console.print(
        f"\n[dim]run {result.run_id} · {result.calls} model calls{cached} · "
        f"{result.prompt_tokens:,} prompt + {result.completion_tokens:,} completion tokens"
        + (f" ({result.cached_tokens:,} prompt tokens prefix-cached)" if result.cached_tokens else "")
        + "[/]"
    )
