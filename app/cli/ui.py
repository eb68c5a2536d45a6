"""tomes ui: the Streamlit app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from app.cli import app


@app.command("ui")
def ui_cmd(port: int = typer.Option(8501, help="Port to serve on."),
           headless: bool = typer.Option(False, help="Don't open a browser.")) -> None:
    """Open the web UI: upload documents, search, ask, and browse runs and their calls."""
    import ui

    entry = Path(ui.__file__).parent / "app.py"
    raise typer.Exit(subprocess.call([
        sys.executable, "-m", "streamlit", "run", str(entry),
        "--server.port", str(port), "--server.headless", str(headless).lower(),
        "--browser.gatherUsageStats", "false",
    ]))
