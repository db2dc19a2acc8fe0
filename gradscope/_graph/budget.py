"""The node budget: a graph too big to draw is collapsed until it fits, each step noted.

Modules are collapsed from the deepest depth up; without module paths, chains of
single-input ops become one node, and as a last resort spans of consecutive ops do. The
notes land in the picture's title, so it says what was drawn instead of everything.
"""

from __future__ import annotations

from dataclasses import replace

from .data import GraphData, chain_groups, collapsed, span_groups
from .folding import drawn_node_count

__all__ = ["collapsed_at", "within_budget"]


def collapsed_at(data: GraphData, depth: int) -> GraphData:
    """Each module at ``depth`` (1 = top-level children, checked by the caller) as one node."""
    group: dict[int, str] = {}
    for n in data.nodes:
        if n.module:
            parts = n.module.split(".")
            if len(parts) >= depth:  # ops of shallower modules stay ops in their cluster
                group[n.id] = ".".join(parts[:depth])
    return collapsed(data, group, f"modules collapsed at depth {depth}")


def within_budget(data: GraphData, max_nodes: int, fold: bool) -> GraphData | None:
    """A smaller graph that draws at most ``max_nodes`` boxes, or ``None`` if ``data`` does."""
    if drawn_node_count(data.nodes, data.edges, fold) <= max_nodes:
        return None
    deepest = max((len(n.module.split(".")) for n in data.nodes if n.module), default=0)
    best: GraphData | None = None
    for d in range(deepest, 0, -1):
        best = collapsed_at(data, d)
        count = drawn_node_count(best.nodes, best.edges, fold)
        if count <= max_nodes:
            return _noted(
                best,
                f"{len(data.nodes)} nodes is above the budget of {max_nodes}: "
                f"collapsed to module depth {d}; pass depth=... or max_nodes=... to override",
            )
    del best
    # fallback without module paths: runs of single-input single-output ops become one
    smaller = collapsed(data, chain_groups(data), "chains of single-input ops drawn as one node")
    if drawn_node_count(smaller.nodes, smaller.edges, fold) > max_nodes:
        # last resort: consecutive ops in topological order, drawn as one node per span
        groups, size = span_groups(smaller, max_nodes)
        smaller = collapsed(smaller, groups, f"spans of {size} consecutive ops drawn as one node")
    return _noted(
        smaller,
        f"{len(data.nodes)} nodes is above the budget of {max_nodes}: collapsed; "
        f"pass max_nodes=... to draw everything",
    )


def _noted(data: GraphData, note: str) -> GraphData:
    return replace(data, notes=(*data.notes, note))
