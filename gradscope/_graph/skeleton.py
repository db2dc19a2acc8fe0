"""A walked graph, turned into nodes and edges only when someone looks.

A training loop that builds ``graph(loss, grads=True)`` every step and reads only
``first_nonfinite`` never builds a :class:`GraphNode`: the walk's lists, the hooks and a flag
are all it pays for. The first look (``g.nodes``, drawing, ``str(g)``) builds every node: its
module from the sequence number (``module_tags``), its saved tensors (``saved``), and, without
forward tags, a module guessed from the parameters it uses.
"""

from __future__ import annotations

from dataclasses import replace

from .data import GraphData, NonfiniteGradient, node_with_norm
from .grad_flow import GradRecorder, Origin
from .module_tags import ModulePaths
from .saved import SavedReader
from .walk import ACCUMULATE, VIEW_OPS, GraphEdge, GraphNode, WalkResult

__all__ = ["FREED_NOTE", "Walked", "hint_modules"]

FREED_NOTE = (
    "saved tensors not shown: backward() freed them before they were read (draw or read "
    "g.nodes before backward, or build the graph with grads=True)"
)


class Walked:
    """What ``graph()`` walked, with the recorder (``grads=True``) and the lazy readers."""

    def __init__(
        self,
        result: WalkResult,
        reader: SavedReader,
        paths: ModulePaths,
        recorder: GradRecorder | None,
    ) -> None:
        self.result = result
        self.reader = reader
        self.paths = paths
        self.recorder = recorder
        self._static: GraphData | None = None
        self._recorded: tuple[object, GraphData] | None = None

    def static(self) -> GraphData:
        """Nodes and edges without gradient norms (built once)."""
        if self._static is None:
            self._static = _build(self.result, self.reader, self.paths)
        return self._static

    def data(self) -> GraphData:
        """With gradient norms and the origin once a recorded backward pass has ended."""
        rec = self.recorder
        flow = rec.flow(self.result) if rec is not None else None
        if flow is None:
            return self.static()
        if self._recorded is not None and self._recorded[0] is flow:
            return self._recorded[1]
        static = self.static()
        norms = flow.node_norms
        nodes = tuple(node_with_norm(n, norms[n.id]) for n in static.nodes)
        edges = tuple(
            GraphEdge(e.src, e.dst, e.slot, v)
            for e, v in zip(static.edges, flow.edge_norms, strict=True)
        )
        origins = tuple(_nonfinite(nodes, o) for o in flow.origins)
        data = GraphData(
            nodes,
            edges,
            static.roots,
            origins[0] if origins else None,
            origins[0].node.id if origins else None,
            static.notes,
            recorded=True,
            origins=origins,
        )
        self._recorded = (flow, data)
        return data

    def origins(self) -> tuple[NonfiniteGradient, ...] | None:
        """Independent NaN/Inf sources in backward order; ``None`` before a recorded pass.

        A clean pass answers ``()`` from a flag, without building any node.
        """
        rec = self.recorder
        if rec is None:
            return None
        found = rec.origins(self.result)
        if found is None:
            return None
        if not found:
            return ()
        return self.data().origins


def _nonfinite(nodes: tuple[GraphNode, ...], o: Origin) -> NonfiniteGradient:
    return NonfiniteGradient(nodes[o.node], o.slot, o.value, o.reason)


def _build(result: WalkResult, reader: SavedReader, paths: ModulePaths) -> GraphData:
    saved = reader.read()
    leaves, seqs = result.leaves, result.seq
    nodes: list[GraphNode] = []
    for i, op in enumerate(result.ops):
        leaf = leaves.get(i)
        if leaf is not None:
            module = leaf.name.rpartition(".")[0] if leaf.name is not None else None
            nodes.append(
                GraphNode(
                    id=i,
                    op=ACCUMULATE,
                    kind="parameter" if leaf.is_param else "leaf",
                    param=leaf.name,
                    shape=leaf.shape,
                    module=module,
                    module_source="parameters" if module is not None else None,
                )
            )
            continue
        seq = seqs[i]
        module = paths.path_of(seq) if paths else None
        nodes.append(
            GraphNode(
                id=i,
                op=op,
                kind="op",
                saved=saved.get(i, ()),
                module=module,
                module_source=None if module is None else "forward",
                seq=seq,
            )
        )
    edges = [
        GraphEdge(s, d, k) for s, d, k in zip(result.src, result.dst, result.slot, strict=True)
    ]
    nodes = hint_modules(nodes, edges)
    notes: tuple[str, ...] = (FREED_NOTE,) if reader.freed else ()
    if reader.errors:
        notes += (f"saved tensors of some nodes could not be read: {reader.errors[0]!r}",)
    return GraphData(tuple(nodes), tuple(edges), tuple(result.roots), notes=notes)


def hint_modules(nodes: list[GraphNode], edges: list[GraphEdge]) -> list[GraphNode]:
    """Without forward tags, an op that uses a module's parameters is placed in that module."""
    if not any(n.kind == "parameter" and n.param for n in nodes):
        return nodes
    if all(n.module is not None for n in nodes if n.kind == "op"):
        return nodes
    by_id = {n.id: n for n in nodes}
    kids: dict[int, list[int]] = {}
    for e in edges:
        kids.setdefault(e.src, []).append(e.dst)

    def param_module(i: int) -> str | None:
        n = by_id[i]
        if n.kind == "parameter" and n.param is not None:
            return n.param.rpartition(".")[0]
        if n.kind == "op" and n.op in VIEW_OPS and len(kids.get(i, ())) == 1:
            child = by_id[kids[i][0]]
            if child.kind == "parameter" and child.param is not None:
                return child.param.rpartition(".")[0]
        return None

    out = []
    for n in nodes:
        if n.kind == "op" and n.module is None:
            found = {m for m in (param_module(k) for k in kids.get(n.id, ())) if m is not None}
            own = param_module(n.id)
            if own is not None:
                found = {own}
            if len(found) == 1:
                n = replace(n, module=found.pop(), module_source="parameters")
        out.append(n)
    return out
