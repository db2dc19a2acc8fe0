"""The plain data behind a Graph, and collapsing groups of nodes into one."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from .walk import GraphEdge, GraphNode, topological

__all__ = [
    "GraphData",
    "NonfiniteGradient",
    "chain_groups",
    "collapsed",
    "node_with_norm",
    "norm_of",
    "span_groups",
]


@dataclass(frozen=True)
class NonfiniteGradient:
    """The node where a NaN/Inf gradient first appeared during backward."""

    node: GraphNode
    input: int | None  # which input of the op got the bad gradient (None: its incoming sum)
    value: str  # "nan" | "inf"
    reason: str

    def __str__(self) -> str:
        where = f" in module {self.node.module!r}" if self.node.module else ""
        return f"{self.node.label}{where}: {self.reason}"


@dataclass
class GraphData:
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]
    roots: tuple[int, ...]
    origin: NonfiniteGradient | None = None
    origin_id: int | None = None
    notes: tuple[str, ...] = ()
    recorded: bool = False
    origins: tuple[NonfiniteGradient, ...] = ()  # every independent source, backward order
    by_id: dict[int, GraphNode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id = {n.id: n for n in self.nodes}


def collapsed(data: GraphData, group: Mapping[int, str], note: str) -> GraphData:
    next_id = max((n.id for n in data.nodes), default=-1) + 1
    gid: dict[str, int] = {}
    members: dict[str, list[GraphNode]] = {}
    for n in data.nodes:
        key = group.get(n.id)
        if key is not None:
            if key not in gid:
                gid[key] = next_id
                next_id += 1
            members.setdefault(key, []).append(n)
    where = {i: gid[k] for i, k in group.items()}
    into: dict[int, list[float | None]] = {}
    out_of: dict[int, list[float | None]] = {}
    merged: dict[tuple[int, int], tuple[int, list[float | None]]] = {}
    for e in data.edges:
        a, b = where.get(e.src, e.src), where.get(e.dst, e.dst)
        if a == b:
            continue
        if b != e.dst:
            into.setdefault(b, []).append(e.grad_norm)
        if a != e.src:
            out_of.setdefault(a, []).append(e.grad_norm)
        merged.setdefault((a, b), (e.slot, []))[1].append(e.grad_norm)
    nodes = [n for n in data.nodes if n.id not in where]
    for key, ms in members.items():
        i = gid[key]
        saved: dict[int, int] = {}
        for m in ms:
            for s in m.saved:
                if not s.is_parameter:
                    saved[s.storage or id(s)] = s.nbytes
        nodes.append(
            GraphNode(
                id=i,
                op=key,
                kind="module",
                module=None if key.startswith("#") else key,
                module_source=None if key.startswith("#") else "forward",
                grad_norm=norm_of(into.get(i)) if data.recorded else None,
                grad_norm_out=norm_of(out_of.get(i)) if data.recorded else None,
                ops=sum(m.kind == "op" for m in ms),
                params=tuple(m.param for m in ms if m.param),
                saved_total=sum(saved.values()),
            )
        )
    if any(k.startswith("#") for k in gid):
        nodes = [
            replace(n, op=f"{members[n.op][0].op} ... {members[n.op][-1].op}")
            if n.op.startswith("#")
            else n
            for n in nodes
        ]
    edges = [
        GraphEdge(a, b, slot, norm_of(norms) if data.recorded else None)
        for (a, b), (slot, norms) in merged.items()
    ]
    roots = tuple(dict.fromkeys(where.get(r, r) for r in data.roots))
    origin_id = where.get(data.origin_id, data.origin_id) if data.origin_id is not None else None
    return GraphData(
        tuple(nodes),
        tuple(edges),
        roots,
        data.origin,
        origin_id,
        (*data.notes, note),
        data.recorded,
        data.origins,
    )


def node_with_norm(n: GraphNode, norm: float | None) -> GraphNode:
    # positional: dataclasses.replace() costs ~10 us a node, too much on every training step
    return GraphNode(
        n.id,
        n.op,
        n.kind,
        n.param,
        n.shape,
        n.saved,
        n.module,
        n.module_source,
        norm,
        n.grad_norm_out,
        n.ops,
        n.params,
        n.saved_total,
        n.seq,
    )


def norm_of(values: Iterable[float | None] | None) -> float | None:
    known = [v for v in values or () if v is not None]
    if not known:
        return None
    if not all(math.isfinite(v) for v in known):
        return math.nan if any(math.isnan(v) for v in known) else math.inf
    return math.sqrt(sum(v * v for v in known))


def chain_groups(data: GraphData) -> dict[int, str]:
    """Runs of single-input single-output ops (more than two) as groups ``#chain<id>``."""
    indeg: dict[int, int] = {}
    outs: dict[int, list[int]] = {}
    for e in data.edges:
        indeg[e.dst] = indeg.get(e.dst, 0) + 1
        outs.setdefault(e.src, []).append(e.dst)
    group: dict[int, str] = {}
    for n in data.nodes:
        if n.id in group or n.kind != "op":
            continue
        run = [n.id]
        here = n.id
        while len(outs.get(here, [])) == 1:
            nxt = outs[here][0]
            if indeg.get(nxt, 0) != 1 or data.by_id[nxt].kind != "op" or nxt in group:
                break
            run.append(nxt)
            here = nxt
        if len(run) > 2:
            for i in run:
                group[i] = f"#chain{n.id}"
    return group


def span_groups(data: GraphData, max_nodes: int) -> tuple[dict[int, str], int]:
    """Consecutive ops in topological order as groups ``#span<k>``, and the span size."""
    index = {n.id: k for k, n in enumerate(data.nodes)}
    order = topological(
        len(data.nodes), [index[e.src] for e in data.edges], [index[e.dst] for e in data.edges]
    )
    ops = [data.nodes[k] for k in order if data.nodes[k].kind != "parameter"]
    size = max(2, -(-len(ops) // max(1, (max_nodes * 4) // 5)))
    group = {n.id: f"#span{pos // size}" for pos, n in enumerate(ops)}
    for e in data.edges:  # a parameter goes with its first consumer
        if data.by_id[e.dst].kind == "parameter" and e.dst not in group:
            group[e.dst] = group[e.src]
    return group, size
