"""Folding: which nodes a drawing leaves out, and where what they carried is shown instead.

A parameter's ``AccumulateGrad`` node (and a ``TBackward0``-style view that only carries it)
becomes a line in the label of each op that uses it; a view between two ops (one consumer, one
input) becomes part of the edge. Plain decisions over nodes and edges: ``dot.py`` writes them,
``Graph`` counts them against the node budget.
"""

from __future__ import annotations

from collections.abc import Sequence

from .walk import VIEW_OPS, GraphEdge, GraphNode

__all__ = ["drawn_node_count", "folding", "pass_through"]


def folding(
    nodes: Sequence[GraphNode], edges: Sequence[GraphEdge]
) -> tuple[set[int], dict[int, list[int]]]:
    """Nodes not drawn, and for each drawn op the parameter nodes shown in its label."""
    consumers: dict[int, list[int]] = {}
    children: dict[int, list[int]] = {}
    for e in edges:
        consumers.setdefault(e.dst, []).append(e.src)
        children.setdefault(e.src, []).append(e.dst)
    by_id = {n.id: n for n in nodes}
    hidden: set[int] = set()
    shown_in: dict[int, list[int]] = {}
    for n in nodes:
        if n.kind != "parameter" or not consumers.get(n.id):
            continue
        hidden.add(n.id)
        for c in consumers[n.id]:
            view = by_id[c]
            # TBackward0 -> weight: fold the view too when it only carries this parameter
            if (
                view.kind == "op"
                and view.op in VIEW_OPS
                and children.get(c) == [n.id]
                and len(consumers.get(c, [])) >= 1
            ):
                hidden.add(c)
                for cc in consumers[c]:
                    shown_in.setdefault(cc, []).append(n.id)
            else:
                shown_in.setdefault(c, []).append(n.id)
    return hidden, shown_in


def pass_through(
    nodes: Sequence[GraphNode], edges: Sequence[GraphEdge], hidden: set[int]
) -> dict[int, int]:
    """Views with one consumer and one input, drawn as part of an edge: view -> its input.

    A transformer layer has a dozen view/transpose nodes between the ops that compute; they
    keep the gradient's norm, so the edge carries the same number without them.
    """
    consumers: dict[int, int] = {}
    children: dict[int, list[int]] = {}
    for e in edges:
        consumers[e.dst] = consumers.get(e.dst, 0) + 1
        children.setdefault(e.src, []).append(e.dst)
    kinds = {n.id: n.kind for n in nodes}
    return {
        n.id: children[n.id][0]
        for n in nodes
        if n.kind == "op"
        and n.op in VIEW_OPS
        and n.id not in hidden
        and consumers.get(n.id) == 1
        and len(children.get(n.id, ())) == 1
        and kinds[children[n.id][0]] == "op"
    }


def drawn_node_count(nodes: Sequence[GraphNode], edges: Sequence[GraphEdge], fold: bool) -> int:
    if not fold:
        return len(nodes)
    hidden, _ = folding(nodes, edges)
    return len(nodes) - len(hidden) - len(pass_through(nodes, edges, hidden))
