"""The ``tomes`` command. One module per group of commands; each calls app.api only."""

from __future__ import annotations

import sys

import typer

from app.errors import TomesError

app = typer.Typer(
    name="tomes",
    help="Read documents far longer than any model's context: ask, summarize, track.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Importing a module registers its commands on `app`.
from app.cli import documents, models, runs, search, ui  # noqa: E402,F401


def main() -> None:
    try:
        app()
    except TomesError as exc:
        from rich.markup import escape

        from app.cli._output import console_err

        # Escaped: causes and fixes quote commands like `pip install 'tomes[gpu]'`.
        console_err.print(f"[bold red]error:[/] {escape(exc.cause)}")
        if exc.fix:
            console_err.print(f"[yellow]fix:[/] {escape(exc.fix)}")
        sys.exit(1)
