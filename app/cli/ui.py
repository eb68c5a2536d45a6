"""tomes ui: the Streamlit app."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import typer

from app.cli import app


def streamlit_command(host: str, port: int, headless: bool) -> list[str]:
    """The ``streamlit run`` command line for the app."""
    import ui
    from app.settings import get_settings

    entry = Path(ui.__file__).parent / "app.py"
    return [
        sys.executable, "-m", "streamlit", "run", str(entry),
        "--server.address", host, "--server.port", str(port),
        "--server.headless", str(headless).lower(),
        # The uploader shows (and Streamlit enforces) whole megabytes; ingestion then
        # enforces TOMES_MAX_FILE_MB exactly.
        "--server.maxUploadSize", str(max(1, math.ceil(get_settings().max_file_mb))),
        # No "Deploy" button or developer menu: this is an app, not a script in progress.
        "--client.toolbarMode", "minimal",
        "--browser.gatherUsageStats", "false",
    ]


@app.command("ui")
def ui_cmd(
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 serves every network "
                             "interface (anyone who can reach this machine can use it)."),
    port: int = typer.Option(8501, min=1, max=65535, help="Port to serve on."),
    headless: bool = typer.Option(False, help="Don't open a browser."),
) -> None:
    """Open the web UI: upload documents, read them, search, ask, and browse runs and their calls."""
    raise typer.Exit(subprocess.call(streamlit_command(host, port, headless)))
