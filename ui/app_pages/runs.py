"""Past runs and the tree of model calls each one made."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui._state import tomes

st.header("Runs & calls")
runs = tomes().runs()
if not runs:
    st.info("No runs yet.")
    st.stop()

st.dataframe(pd.DataFrame(runs), hide_index=True, width="stretch")
run_id = st.selectbox("Run", [r["id"] for r in runs])
calls = tomes().calls(run_id)
if not calls:
    st.info("This run made no model calls.")
    st.stop()


def dot(calls: list[dict]) -> str:
    """The call tree as Graphviz source: a node per call, coloured by pipeline node,
    dashed when the answer came from the cache."""
    palette = ["#8ecae6", "#ffb703", "#90be6d", "#f28482", "#cdb4db", "#b8c0ff"]
    colours: dict[str, str] = {}
    lines = ["digraph calls {", "rankdir=LR;", 'node [shape=box, style="rounded,filled", fontsize=10];',
             'run [label="run", shape=ellipse, fillcolor="#eeeeee"];']
    for c in calls:
        colour = colours.setdefault(c["node"] or "", palette[len(colours) % len(palette)])
        label = f"{c['node'] or 'call'} #{c['id']}\\n{c['prompt_tokens']}+{c['completion_tokens']} tok · {c['latency_ms']:.0f} ms"
        style = '"rounded,filled,dashed"' if c["cache_hit"] else '"rounded,filled"'
        lines.append(f'c{c["id"]} [label="{label}", fillcolor="{colour}", style={style}];')
        lines.append(f'{"c" + str(c["parent_id"]) if c["parent_id"] else "run"} -> c{c["id"]};')
    lines.append("}")
    return "\n".join(lines)


frame = pd.DataFrame(calls)
a, b, c = st.columns(3)
a.metric("calls", len(frame))
b.metric("tokens", f"{int(frame.prompt_tokens.sum() + frame.completion_tokens.sum()):,}")
c.metric("cache hits", int(frame.cache_hit.sum()))
st.graphviz_chart(dot(calls), width="stretch")
pick = st.selectbox("Call", frame["id"])
call = next(x for x in calls if x["id"] == pick)
st.json({"messages": call["messages"], "response": call["response"], "params": call["params"],
         "error": call["error"]}, expanded=False)
