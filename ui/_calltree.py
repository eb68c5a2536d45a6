"""A run's call tree (``Tomes.call_tree``) drawn as Graphviz that stays readable at any
size: sibling calls of one kind (the 500 maps of a book) fold into one box with their
totals unless that group is expanded, and levels below a chosen depth fold into their
parent."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# A group of siblings larger than this starts folded.
FOLD_ABOVE = 5
# An expanded group draws at most this many calls, then one "… N more" box.
DRAW_AT_MOST = 60
PALETTE = ["#8ecae6", "#ffb703", "#90be6d", "#f28482", "#cdb4db", "#b8c0ff", "#ffd6a5"]


@dataclass
class Group:
    """Consecutive sibling calls of one node (e.g. the maps, then a collapse level)."""

    key: str  # stable across reruns: parent path + node + position among siblings
    node: str
    parent: str  # "run" or "c<call id>"
    depth: int
    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        where = "the run" if self.parent == "run" else f"call #{self.parent[1:]}"
        kind = " steps" if self.steps else ""
        return f"{self.node}{kind} × {len(self.calls)} under {where}"

    @property
    def steps(self) -> bool:
        return all(c.get("step") for c in self.calls)

    def totals(self) -> dict[str, Any]:
        """What the group's calls and everything under them cost (steps ask no model)."""
        t = subtree_totals(self.calls)
        t["members"] = len(self.calls)
        t["sub_calls"] = t["calls"] - sum(1 for c in self.calls if not c.get("step"))
        return t


def subtree_totals(nodes: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Model calls in ``nodes`` and below them: count, cached, failed, tokens and model
    time of the fresh ones. Steps are walked through, never counted."""
    t = {"calls": 0, "cached": 0, "errors": 0, "tokens": 0, "latency_ms": 0.0}
    stack = list(nodes)
    while stack:
        c = stack.pop()
        stack.extend(c["children"])
        if c.get("step"):
            continue
        t["calls"] += 1
        t["errors"] += bool(c.get("error"))
        if c["cache_hit"]:
            t["cached"] += 1
        else:
            t["tokens"] += c["prompt_tokens"] + c["completion_tokens"]
            t["latency_ms"] += c["latency_ms"]
    return t


def _count(nodes: Iterable[dict[str, Any]]) -> int:
    return sum(1 + _count(n["children"]) for n in nodes)


def model_calls(roots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every model call of the forest (no steps), in the order they were made."""
    out: list[dict[str, Any]] = []
    stack = list(roots)
    while stack:
        c = stack.pop()
        stack.extend(c["children"])
        if not c.get("step"):
            out.append(c)
    return sorted(out, key=lambda c: c["id"])


def groups(roots: list[dict[str, Any]], depth: int = 0, parent: str = "run") -> list[Group]:
    """Every group of siblings in the forest, parents before children."""
    level = _level(roots, depth, parent)
    out = list(level)
    for g in level:
        for call in g.calls:
            out.extend(groups(call["children"], depth + 1, f"c{call['id']}"))
    return out


def depth_of(roots: list[dict[str, Any]]) -> int:
    return 1 + max((depth_of(c["children"]) for c in roots), default=0) if roots else 0


def foldable(roots: list[dict[str, Any]]) -> list[Group]:
    """The groups a user can fold or unfold (more than one call)."""
    return [g for g in groups(roots) if len(g.calls) > 1]


def default_expanded(roots: list[dict[str, Any]]) -> set[str]:
    return {g.key for g in foldable(roots) if len(g.calls) <= FOLD_ABOVE}


def _q(text: str) -> str:
    """A Graphviz double-quoted string (labels are built from model and user text)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def _ms(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"


def dot(roots: list[dict[str, Any]], *, expanded: set[str], max_depth: int | None = None,
        title: str = "run", selected: int | None = None) -> str:
    """Graphviz source for the forest. ``expanded``: keys of groups drawn call by call;
    ``max_depth``: levels drawn (deeper calls fold into their parent's box)."""
    colours: dict[str, str] = {}
    lines = [
        "digraph calls {", "rankdir=LR;", "nodesep=0.15; ranksep=0.35;",
        'node [shape=box, style="rounded,filled", fontsize=10, fontname="Helvetica"];',
        'edge [color="#868e96", arrowsize=0.6];',
        f'run [label={_q(title)}, shape=ellipse, fillcolor="#eeeeee"];',
    ]

    boxes = iter(range(1, 10**9))  # ids for the boxes that are not calls

    def colour(node: str) -> str:
        return colours.setdefault(node, PALETTE[len(colours) % len(PALETTE)])

    def draw(nodes: list[dict[str, Any]], depth: int, parent: str) -> None:
        for g in _level(nodes, depth, parent):
            fold = len(g.calls) > 1 and g.key not in expanded
            if fold:
                t = g.totals()
                gid = f"g{next(boxes)}"
                extra = f" · {t['cached']} cached" if t["cached"] else ""
                extra += f" · {t['errors']} failed" if t["errors"] else ""
                if g.steps:
                    head = f"{g.node} × {t['members']} steps\n{_n(t['calls'], 'call')}"
                else:
                    head = f"{g.node} × {t['members']}" + (f"\n+{_n(t['sub_calls'], 'sub-call')}" if t["sub_calls"] else "")
                label = f"{head}\n{t['tokens']:,} tok · {_ms(t['latency_ms'])}{extra}"
                lines.append(f'{gid} [label={_q(label)}, fillcolor="{colour(g.node)}", peripheries=2, '
                             f'tooltip={_q("unfold this group to draw it call by call")}];')
                lines.append(f"{parent} -> {gid};")
                continue
            shown = g.calls[:DRAW_AT_MOST]
            for c in shown:
                cid = f"c{c['id']}"
                if c.get("step"):
                    t = subtree_totals(c["children"])
                    # A step's label (in the model column) usually starts with its node.
                    name = c.get("model") or g.node
                    name = name if name.split(" ", 1)[0] == g.node else f"{g.node} · {name}"
                    label = (f"{name}\n{_n(t['calls'], 'call')} · {t['tokens']:,} tok · "
                             f"{_ms(c['latency_ms'])} wall")
                    attrs = [f"label={_q(label)}", "shape=folder", 'style="filled"', 'fillcolor="#f1f3f5"']
                else:
                    label = (f"{g.node} #{c['id']}\n{c['prompt_tokens']}+{c['completion_tokens']} tok · "
                             f"{_ms(c['latency_ms'])}")
                    style = "rounded,filled,dashed" if c["cache_hit"] else "rounded,filled"
                    tip = c.get("error") or c.get("preview") or ""
                    attrs = [f"label={_q(label)}", f'fillcolor="{colour(g.node)}"', f'style="{style}"',
                             f"tooltip={_q(tip[:200])}"]
                if c.get("error"):
                    attrs.append('color="#e03131", penwidth=2')
                if c["id"] == selected:
                    attrs.append('penwidth=3, color="#1c7ed6"')
                lines.append(f"{cid} [{', '.join(attrs)}];")
                lines.append(f"{parent} -> {cid};")
                if c["children"]:
                    if max_depth is not None and depth + 1 >= max_depth:
                        t = subtree_totals(c["children"])
                        n = _count(c["children"])
                        more = f"+{_n(t['calls'], 'call')} below" if t["calls"] else f"+{_n(n, 'step')} below"
                        lines.append(f'{cid}_more [label={_q(more)}, shape=note, fillcolor="#f8f9fa"];')
                        lines.append(f"{cid} -> {cid}_more;")
                    else:
                        draw(c["children"], depth + 1, cid)
            if len(g.calls) > len(shown):
                more = f"more{next(boxes)}"
                lines.append(f'{more} [label={_q(f"… {len(g.calls) - len(shown)} more {g.node}")}, '
                             'shape=note, fillcolor="#f8f9fa"];')
                lines.append(f"{parent} -> {more};")

    draw(roots, 0, "run")
    lines.append("}")
    return "\n".join(lines)


def _level(nodes: list[dict[str, Any]], depth: int, parent: str) -> list[Group]:
    """The groups of one level only (``groups`` walks the whole subtree)."""
    level: list[Group] = []
    for call in nodes:
        node = call["node"] or "call"
        if not level or level[-1].node != node:
            level.append(Group(f"{parent}/{len(level)}:{node}", node, parent, depth))
        level[-1].calls.append(call)
    return level
