"""What an evaluation leaves in its folder besides ``cases.jsonl``: ``summary.json``,
``table.md`` and per-task PNG plots (accuracy and prompt tokens against input length,
one line per strategy)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "–"
    if pct:
        return f"{100 * value:.0f}%"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the summary rows."""
    head = ("| task | strategy | length | n | accuracy | reach any | reach final | calls "
            "| prompt tok | completion tok | wall s |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['strategy']} | {r['length']:,} | {r['n']} | "
            f"{_fmt(r['accuracy'], True)} | {_fmt(r['reach_any'], True)} | "
            f"{_fmt(r['reach_final'], True)} | {r['calls']:,} | {r['prompt_tokens']:,} | "
            f"{r['completion_tokens']:,} | {r['wall_s']:,.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], task: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display here, and never a window from a CLI
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r["task"] == task]
    strategies = sorted({r["strategy"] for r in mine})
    fig, (acc, tok) = plt.subplots(1, 2, figsize=(10, 3.8))
    for strategy in strategies:
        points = sorted((r["length"], r) for r in mine if r["strategy"] == strategy)
        xs = [x for x, _ in points]
        acc.plot(xs, [100 * r["accuracy"] for _, r in points], marker="o", label=strategy)
        tok.plot(xs, [r["prompt_tokens"] / max(1, r["n"]) for _, r in points], marker="o",
                 label=strategy)
    for ax in (acc, tok):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("input length (tokens)")
        ax.grid(alpha=0.3)
    lengths = sorted({r["length"] for r in mine})
    for ax in (acc, tok):
        ax.set_xticks(lengths, [f"{x / 1024:g}K" for x in lengths])
    acc.set_ylabel("accuracy (%)")
    acc.set_ylim(-5, 105)
    tok.set_ylabel("prompt tokens per case")
    tok.set_yscale("log")
    acc.legend(loc="best", fontsize=8)
    fig.suptitle(task)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(out: Path, rows: list[dict[str, Any]], info: dict[str, Any], *,
          elapsed_s: float, plots: bool = True) -> list[str]:
    """Write summary.json, table.md and the plots; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    summary = {**info, "elapsed_s": elapsed_s, "rows": rows}
    path = out / "summary.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    files.append(str(path))
    (out / "table.md").write_text(table(rows), encoding="utf-8")
    files.append(str(out / "table.md"))
    if plots and rows:
        for task in sorted({r["task"] for r in rows}):
            files.append(str(plot(rows, task, out / f"{task}.png")))
    return files
