"""tomes models / chat / calls / serve vllm: the model boundary from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from app.api import Tomes
from app.cli import app
from app.cli._output import console, console_err, print_json, progress
from app.errors import TomesError

JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts.")

serve_app = typer.Typer(help="Start a model server (vLLM) with a preset's arguments.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


@app.command("models")
def models_cmd(as_json: bool = JsonOpt) -> None:
    """List model presets and show which backend and model are active."""
    info = Tomes().models()
    if as_json:
        print_json(info)
        return
    active = info["active"]
    line = f"[bold]active:[/] backend [cyan]{active['backend']}[/]"
    if active.get("model"):
        line += f", model [cyan]{active['model']}[/]"
    if active.get("base_url"):
        line += f" at {active['base_url']}"
    if active.get("context_window"):
        line += f", window {active['context_window']:,} tokens"
    console.print(line)
    table = Table("preset", "model", "window", "code", "runs on", box=box.SIMPLE)
    for i in (0, 2, 3, 4):
        table.columns[i].no_wrap = True
    for p in info["presets"]:
        mark = " *" if p["name"] == active.get("preset") else ""
        where = f"{p['gpus']}x{p['gpu_memory_gb']}GB" if p["gpus"] else "CPU"
        table.add_row(p["name"] + mark, p["model"], _window(p["context_window"]),
                      "yes" if p["writes_code"] else "no", where)
    console.print(table)
    for p in info["presets"]:
        console.print(f"  [bold]{p['name']}[/]: {escape(p['notes'])}", style="dim")
    vllm = info["vllm"]
    console.print(
        f"backends: {', '.join(info['backends'])}; vLLM: "
        + (vllm if vllm else escape("not installed (pip install 'tomes[gpu]' on a GPU machine)"))
    )
    console.print("start a preset: [bold]tomes serve vllm --preset NAME[/] (--dry-run prints the command)")


def _window(tokens: int) -> str:
    return f"{tokens / 1e6:.2g}M" if tokens >= 1_000_000 else f"{round(tokens / 1024)}K"


def _schema(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not a JSON schema (a file or inline JSON): {exc}",
                                 param_hint="--schema") from None
    if not isinstance(schema, dict):
        raise typer.BadParameter("the schema must be a JSON object", param_hint="--schema")
    return schema


@app.command("chat")
def chat_cmd(
    prompt: str = typer.Argument(..., help="The prompt, in quotes."),
    backend: str = typer.Option(None, "--backend", "-b", help="Serving backend (default: settings)."),
    model: str = typer.Option(None, "--model", "-m", help="Model or preset name (default: the backend's)."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible server URL (openai backend)."),
    system: str = typer.Option(None, "--system", "-s", help="A system message."),
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Longest reply, in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 for greedy decoding."),
    schema: str = typer.Option(None, "--schema", help="JSON schema (file or inline) the reply must match."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Call the model even if this prompt was answered before."),
    as_json: bool = JsonOpt,
) -> None:
    """Send one prompt through the active backend and print the reply."""
    out = Tomes(backend=backend, model=model, base_url=base_url).chat(
        prompt, system=system, max_tokens=max_tokens, temperature=temperature,
        json_schema=_schema(schema), cache=False if no_cache else None,
    )
    if as_json:
        print_json(out)
        return
    console.print(out["text"], markup=False, highlight=False)
    usage = out["usage"]
    console_err.print(
        f"[dim]{out['backend']} / {out['model']}: {usage['prompt_tokens']} prompt + "
        f"{usage['completion_tokens']} completion tokens, {out['latency_s']:.2f} s"
        + (", cached" if out["cache_hit"] else "") + f", call {out['call_id']}[/]"
    )


def _label(call: dict[str, Any]) -> str:
    if call.get("step"):  # a pipeline step: the calls under it are what it caused
        return f"[bold magenta]{escape(call['model'])}[/] [dim]step, {call['latency_ms'] / 1000:.1f} s[/]"
    tokens = f"{call['prompt_tokens']}+{call['completion_tokens']} tok"
    if call.get("cached_tokens"):  # read from the server's prefix cache
        tokens += f" ({call['cached_tokens']} prefix-cached)"
    status = "[red]error[/]" if call["error"] else ("[green]cache[/]" if call["cache_hit"] else "")
    preview = escape(call["preview"])
    return (f"[bold]#{call['id']}[/] {call['node'] or '-'}  [dim]{tokens}, "
            f"{call['latency_ms']:.0f} ms[/] {status}  {preview}")


@app.command("calls")
def calls_cmd(
    run_id: str = typer.Argument(..., help="Run id (from `tomes runs`)."),
    as_json: bool = JsonOpt,
) -> None:
    """A run's model calls as a tree: node, tokens, latency, cache hits, a preview."""
    info = Tomes().call_tree(run_id)
    if as_json:
        print_json(info)
        return
    t = info["totals"]
    tree = Tree(
        f"run [bold]{run_id}[/]: {t['calls']} calls ({t['cache_hits']} cached, {t['errors']} failed), "
        f"{t['prompt_tokens']:,}+{t['completion_tokens']:,} tokens"
        + (f" ({t['cached_tokens']:,} prompt tokens prefix-cached)" if t.get("cached_tokens") else "")
        + f", {t['latency_ms'] / 1000:.1f} s in models, "
        f"{t['depth']} levels deep"
    )
    pending = [(tree, call) for call in info["calls"]]
    while pending:  # iterative: deep recursive-controller trees must not hit the recursion limit
        parent, call = pending.pop(0)
        branch = parent.add(_label(call))
        pending[0:0] = [(branch, child) for child in call["children"]]
    console.print(tree)


@serve_app.command("vllm", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve_vllm_cmd(
    ctx: typer.Context,
    preset: str = typer.Option(..., "--preset", "-p", help="Preset name (`tomes models`)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command; start nothing."),
    detach: bool = typer.Option(False, "--detach", help="Leave the server running in the background."),
    timeout: float = typer.Option(1800.0, "--timeout", help="Seconds to wait for the server to be ready."),
    as_json: bool = JsonOpt,
) -> None:
    """Start `vllm serve` with a preset's arguments, wait until it is healthy and print
    the base_url to use. Arguments after the options go to vllm serve unchanged."""
    tomes = Tomes()
    extra = list(ctx.args)
    plan = tomes.serve_command(preset, host=host, port=port, extra=extra)
    if dry_run:
        if as_json:
            print_json(plan)
        else:  # plain stdout: Rich would wrap the line and break copy-paste
            sys.stdout.write(plan["shell"] + "\n")
        return
    with progress(not as_json) as on_event:
        served = tomes.serve(preset, host=host, port=port, extra=extra, timeout=timeout, on_event=on_event)
    info = {**plan, "pid": served.pid, "log": str(served.log_path)}
    if as_json:
        print_json(info)
    else:
        env = " ".join(f"{k}={v}" for k, v in plan["settings"].items())
        console.print(f"[green]ready[/] base_url: [bold]{served.base_url}[/] (pid {served.pid}, log {served.log_path})")
        sys.stdout.write(f"use it: {env} tomes ...\n")
    if detach:
        return
    console_err.print("[dim]serving; Ctrl-C stops the server[/]")
    try:
        code = served.wait()
    except KeyboardInterrupt:
        served.stop()
        return
    if code:
        raise TomesError(f"vllm serve exited with code {code}", f"see its log at {served.log_path}")
