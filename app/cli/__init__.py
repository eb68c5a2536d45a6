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
from app.cli import batch  # noqa: E402,F401
from app.cli import memory  # noqa: E402,F401
from app.cli import eval  # noqa: E402,F401


def main() -> None:
    import atexit
    import gc
    import signal

    # The interpreter's last cycle collection walks every object of ~1,800 modules: ~1 s
    # on a busy 2-core machine, after the answer or error is printed (bench/faults.py's
    # server rows). Nothing the CLI leaves needs collecting; frozen objects are skipped.
    atexit.register(gc.freeze)
    # SIGTERM stops as cleanly as Ctrl-C: runs are marked interrupted, finished work kept.
    signal.signal(signal.SIGTERM, _terminate)
    from app.cli.batch import spell_ray_address

    sys.argv[1:] = spell_ray_address(sys.argv[1:])
    try:
        app()
    except KeyboardInterrupt:  # click turns most into SystemExit(130) first
        _interrupted()
        sys.exit(130)
    except SystemExit:
        _interrupted()
        raise
    except TomesError as exc:
        _print_error(exc)
        sys.exit(1)
    except Exception as exc:
        # A damaged page of tomes.db shows on whichever query reads it, also outside the
        # store's sessions (the call log writes through its own connection).
        from app.store.db import damaged_store, is_damage
        from app.settings import get_settings

        if not is_damage(exc):
            raise
        _print_error(damaged_store(get_settings().db_path, exc))
        sys.exit(1)


def _print_error(exc: TomesError) -> None:
    from rich.markup import escape

    from app.cli._output import console_err

    # Escaped: causes and fixes quote commands like `pip install 'tomes[gpu]'`.
    console_err.print(f"[bold red]error:[/] {escape(exc.cause)}")
    if exc.fix:
        console_err.print(f"[yellow]fix:[/] {escape(exc.fix)}")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _interrupted() -> None:
    """Runs cut off mid-way by Ctrl-C or SIGTERM: say how to carry on."""
    from app.cli._output import console_err

    for run_id in _stopped_runs():
        console_err.print(f"run {run_id} is interrupted; finished work is kept. "
                          f"Continue with `tomes resume {run_id}`")


def _stopped_runs() -> list[str]:
    if "pipelines._runs" not in sys.modules:
        return []
    from pipelines import _runs

    return _runs.last_runs()
