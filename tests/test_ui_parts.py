"""The UI's pure pieces: finding a quote in re-flowed text, marks that overlap, a call
tree folded by kind with steps apart, and the code spans that carry user text."""

from __future__ import annotations

import html

from ui import _calltree as T
from ui import _highlight as H
from ui._state import code


def test_a_quote_is_found_across_reflowed_whitespace_and_case():
    text = "He said:\nthe  ship\n  sailed at DAWN. Then nothing."
    assert H.find_quote(text, "the ship sailed at dawn.", 100) == (109, 100 + text.index(" Then"))
    assert H.find_quote(text, "not there") is None
    assert H.find_quote(text, "   ") is None


def test_overlapping_marks_keep_the_strongest_and_escape_every_piece():
    text = "<b>Walrus</b> & walruses"
    marks = [H.Mark(10, 30, "hit"), H.Mark(13, 19, "quote")]  # absolute: text starts at 10
    out = H.to_html(text, 10, marks + H.term_marks(text, "walrus", 10))
    assert "<b>" not in out and "&lt;b&gt;" in out and "&amp;" in out
    assert '<mark class="tomes-quote"' in out and html.unescape(out.split('tomes-quote"')[1]).find("Walrus") > 0
    assert out.count("<mark") >= 3  # before, inside and after the quote


def _call(i, node, children=(), step=False, tokens=10, label=None):
    return {"id": i, "node": node, "step": step, "model": label, "prompt_tokens": 0 if step else tokens,
            "completion_tokens": 0, "latency_ms": 5.0, "cache_hit": False, "error": None,
            "preview": "", "children": list(children)}


def test_the_call_tree_folds_siblings_by_kind_and_counts_what_is_below_steps():
    maps = [_call(i, "map", [_call(100 + i, "map")]) for i in range(2, 10)]  # each with a retry
    roots = [_call(1, "map", maps, step=True, label="map 8 pieces"),
             _call(20, "reduce", [_call(21, "reduce", tokens=7)], step=True, label="reduce 8 notes")]
    assert T.subtree_totals(roots) == {"calls": 17, "cached": 0, "errors": 0, "tokens": 167,
                                       "latency_ms": 85.0}
    assert [c["id"] for c in T.model_calls(roots)] == sorted([*range(2, 10), *range(102, 110), 21])
    (group,) = [g for g in T.foldable(roots) if g.node == "map"]
    assert group.key not in T.default_expanded(roots)  # 8 > FOLD_ABOVE
    folded = T.dot(roots, expanded=set())
    assert "map × 8\\n+8 sub-calls\\n160 tok" in folded and "map #2\\n" not in folded
    assert "map 8 pieces\\n16 calls" in folded and "shape=folder" in folded
    unfolded = T.dot(roots, expanded={group.key})
    assert all(f"map #{i}\\n" in unfolded for i in range(2, 10))
    shallow = T.dot(roots, expanded={group.key}, max_depth=1)
    assert "+16 calls below" in shallow and "map #2\\n" not in shallow


def test_graphviz_labels_quote_whatever_the_text_holds():
    roots = [_call(1, 'say "hi"\\ now', label=None)]
    source = T.dot(roots, expanded=set(), title='run: "quoted" \\ back')
    assert 'label="run: \\"quoted\\" \\\\ back"' in source
    assert 'say \\"hi\\"\\\\ now #1' in source


def test_code_spans_carry_backticks_and_never_show_escapes():
    assert code("http://a.example:1/v1") == "`http://a.example:1/v1`"
    assert code("a`b") == "`` a`b ``"
    assert code("two\nlines") == "`two lines`"
