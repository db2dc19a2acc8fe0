"""``Graph.around()``: the neighbourhood of a node or a module, to draw one part of a huge graph."""

from __future__ import annotations

from .._errors import GradscopeError
from .._naming import describe
from .data import GraphData, NonfiniteGradient
from .walk import GraphNode

__all__ = ["neighbourhood"]


def neighbourhood(
    data: GraphData, target: GraphNode | NonfiniteGradient | int | str, radius: int
) -> GraphData:
    """Every node within ``radius`` edges (either direction) of ``target``'s nodes."""
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise GradscopeError(f"around(radius=...) takes an int >= 0, not {describe(radius)}")
    centres, what = _centres(data, target)
    near: dict[int, list[int]] = {}
    for e in data.edges:
        near.setdefault(e.src, []).append(e.dst)
        near.setdefault(e.dst, []).append(e.src)
    keep = set(centres)
    frontier = list(centres)
    for _ in range(radius):
        nxt = []
        for i in frontier:
            for j in near.get(i, ()):
                if j not in keep:
                    keep.add(j)
                    nxt.append(j)
        frontier = nxt
    nodes = tuple(n for n in data.nodes if n.id in keep)
    edges = tuple(e for e in data.edges if e.src in keep and e.dst in keep)
    has_in = {e.dst for e in edges}
    roots = tuple(r for r in data.roots if r in keep) or tuple(
        n.id for n in nodes if n.id not in has_in
    )
    note = f"{len(nodes)} of {len(data.nodes)} nodes: those within {radius} edges of {what}"
    origin_in = data.origin_id is not None and data.origin_id in keep
    return GraphData(
        nodes,
        edges,
        roots,
        data.origin if origin_in else None,
        data.origin_id if origin_in else None,
        (*data.notes, note),
        data.recorded,
        tuple(o for o in data.origins if o.node.id in keep),
    )


def _centres(
    data: GraphData, target: GraphNode | NonfiniteGradient | int | str
) -> tuple[list[int], str]:
    """The node ids ``around()`` starts from, and how to say what they are."""
    if isinstance(target, NonfiniteGradient):
        target = target.node
    if isinstance(target, GraphNode):
        target = target.id
    if isinstance(target, bool) or not isinstance(target, (int, str)):
        raise GradscopeError(
            f"around() takes a node, a node id, a module path or g.first_nonfinite, "
            f"not {describe(target)}"
        )
    if isinstance(target, int):
        if target not in data.by_id:
            raise GradscopeError(
                f"around({target}): no node has that id (ids run 0..{len(data.nodes) - 1})"
            )
        return [target], f"{data.by_id[target].label} (#{target})"
    inside = [
        n.id
        for n in data.nodes
        if n.module is not None and (n.module == target or n.module.startswith(target + "."))
    ]
    if not inside:
        known = sorted({n.module for n in data.nodes if n.module})
        hint = (
            f"; modules in this graph: {', '.join(known[:12])}"
            if known
            else (
                "; no node carries a module path: build the graph with gradscope.graph(model, x) "
                "or under gradscope.watch(model)"
            )
        )
        raise GradscopeError(f"around({target!r}): no node ran in that module{hint}")
    return inside, f"module {target!r}"
