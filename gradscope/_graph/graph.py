"""The Graph object: the backward graph as plain data, text, DOT and SVG."""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._errors import GradscopeError
from .._naming import describe
from .data import (
    GraphData,
    NonfiniteGradient,
    chain_groups,
    collapsed,
    node_with_norm,
    span_groups,
)
from .dot import DotGraph, build_dot, drawn_node_count, format_norm
from .grad_flow import GradRecorder
from .render import find_renderers, render
from .walk import GraphEdge, GraphNode, WalkResult

__all__ = ["DEFAULT_MAX_NODES", "Graph"]

DEFAULT_MAX_NODES = 1500


class Graph:
    """A backward graph: ``nodes``, ``edges``, ``str()``, ``to_dot()``, ``to_svg()``, ``save()``.

    >>> import gradscope, torch
    >>> net = gradscope.LeNet()
    >>> loss = net(torch.randn(1, 1, 32, 32)).sum()
    >>> g = gradscope.graph(loss, params=net)
    >>> [n.label for n in g.path(0, 0)]
    ['SumBackward0', 'AddmmBackward0', 'AccumulateGrad[fc3.bias]']
    """

    def __init__(
        self,
        data: GraphData,
        *,
        walked: WalkResult | None = None,
        recorder: GradRecorder | None = None,
    ) -> None:
        self._static = data
        self._walked = walked
        self._recorder = recorder

    # -- data ---------------------------------------------------------------------------------
    def _data(self) -> GraphData:
        rec, walked = self._recorder, self._walked
        if rec is None or walked is None:
            return self._static
        flow = rec.flow(walked)
        if flow is None:
            return self._static
        cached = getattr(self, "_cache", None)
        if cached is not None and cached[0] is flow:
            data: GraphData = cached[1]
            return data
        norms = flow.node_norms
        nodes = tuple(
            node_with_norm(n, norms[n.id] if n.id < len(norms) else None)
            for n in self._static.nodes
        )
        edges = tuple(
            GraphEdge(e.src, e.dst, e.slot, v)
            for e, v in zip(self._static.edges, flow.edge_norms, strict=True)
        )
        origin = None
        if flow.origin is not None:
            node = nodes[flow.origin.node]
            origin = NonfiniteGradient(
                node, flow.origin.slot, flow.origin.value, flow.origin.reason
            )
        data = GraphData(
            nodes,
            edges,
            self._static.roots,
            origin,
            origin.node.id if origin else None,
            self._static.notes,
            recorded=True,
        )
        self._cache = (flow, data)
        return data

    @property
    def nodes(self) -> tuple[GraphNode, ...]:
        """Every node, with ``grad_norm`` filled in once a recorded backward pass has run."""
        return self._data().nodes

    @property
    def edges(self) -> tuple[GraphEdge, ...]:
        """Every edge, as plain data: from a node to the node that receives its gradient."""
        return self._data().edges

    @property
    def roots(self) -> tuple[GraphNode, ...]:
        """The nodes backward starts from (the loss's ``grad_fn``)."""
        data = self._data()
        return tuple(data.by_id[i] for i in data.roots)

    @property
    def first_nonfinite(self) -> NonfiniteGradient | None:
        """Where a NaN/Inf gradient was born in the recorded backward pass; ``None`` if clean."""
        if self._recorder is None and not self._static.recorded:
            raise GradscopeError(
                "first_nonfinite needs gradients: build the graph with "
                "gradscope.graph(loss, grads=True) before calling loss.backward()"
            )
        rec, walked = self._recorder, self._walked
        if rec is not None and walked is not None:
            flow = rec.flow(walked)  # without building every node: this is read every step
            if flow is not None:
                if flow.origin is None:
                    return None
                o = flow.origin
                node = node_with_norm(self._static.nodes[o.node], flow.node_norms[o.node])
                return NonfiniteGradient(node, o.slot, o.value, o.reason)
        data = self._data()
        if not data.recorded:
            raise GradscopeError(
                "no backward pass was recorded yet: call loss.backward() after "
                "gradscope.graph(loss, grads=True), then read first_nonfinite"
            )
        return data.origin

    def node(self, node_id: int) -> GraphNode:
        """The node with this id."""
        return self._data().by_id[node_id]

    def children(self, node: GraphNode | int) -> list[tuple[int, GraphNode]]:
        """``(slot, node)`` for each input of ``node``, like ``grad_fn.next_functions``."""
        data = self._data()
        key = node if isinstance(node, int) else node.id
        return sorted((e.slot, data.by_id[e.dst]) for e in data.edges if e.src == key)

    def path(self, *slots: int) -> list[GraphNode]:
        """Follow ``next_functions[slot][0]`` from the first root, like the tutorial does by hand.

        ``g.path(0, 0)`` is ``[loss.grad_fn, ...next_functions[0][0], ...[0][0]]``.
        """
        data = self._data()
        out = [data.by_id[data.roots[0]]]
        for depth, slot in enumerate(slots):
            here = dict(self.children(out[-1]))
            if slot not in here:
                raise GradscopeError(
                    f"{out[-1].label} (step {depth}) has no input {slot}; "
                    f"it has inputs {sorted(here)}"
                )
            out.append(here[slot])
        return out

    def saved_bytes_by_module(self) -> dict[str, int]:
        """Saved-activation bytes per module path (and its submodules), shared storage once."""
        per: dict[str, dict[int, int]] = {}
        for n in self._data().nodes:
            if n.module is None or n.kind != "op":
                continue
            parts = n.module.split(".") if n.module else []
            for k in range(len(parts) + 1):
                bucket = per.setdefault(".".join(parts[:k]), {})
                for s in n.saved:
                    if not s.is_parameter:
                        bucket[s.storage or id(s)] = s.nbytes
        return {path: sum(b.values()) for path, b in per.items() if b}

    # -- text ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._data().nodes)

    def __repr__(self) -> str:
        data = self._data()
        return f"<gradscope.Graph: {len(data.nodes)} nodes, {len(data.edges)} edges>"

    def __str__(self) -> str:
        return self.text()

    def text(self, max_lines: int = 200) -> str:
        """One line per chain: each node once, ``#id`` where a line starts at a known node."""
        data = self._data()
        kids: dict[int, list[GraphEdge]] = {}
        for e in data.edges:
            kids.setdefault(e.src, []).append(e)
        for v in kids.values():
            v.sort(key=lambda e: e.slot)

        def show(n: GraphNode) -> str:
            s = n.label
            if n.grad_norm is not None:
                s += f" |g|={format_norm(n.grad_norm)}"
            return s

        lines = [repr(self)]
        printed: set[int] = set()
        starts = list(reversed(data.roots))
        while starts and len(lines) <= max_lines:
            start = starts.pop()
            chain = [f"#{start} {show(data.by_id[start])}"]
            printed.add(start)
            here = start
            while True:
                nxt = [e.dst for e in kids.get(here, []) if e.dst not in printed]
                if not nxt:
                    break
                # branches start their own line from the node they hang off
                starts.extend([here] * (len(nxt) - 1))
                here = nxt[0]
                printed.add(here)
                chain.append(f"#{here} {show(data.by_id[here])}")
            if len(chain) > 1 or start in data.roots:
                lines.append(" -> ".join(chain))
        if len(printed) < len(data.nodes):
            lines.append(f"... ({len(data.nodes) - len(printed)} more nodes; see g.nodes)")
        return "\n".join(lines)

    # -- smaller graphs -----------------------------------------------------------------------
    def collapse(self, depth: int) -> Graph:
        """Each module at ``depth`` (1 = top-level children) becomes one node."""
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise GradscopeError(
                f"collapse(depth) takes a positive int (1 = each top-level submodule), "
                f"not {describe(depth)}"
            )
        data = self._data()
        group: dict[int, str] = {}
        for n in data.nodes:
            if n.module:
                group[n.id] = ".".join(n.module.split(".")[:depth])
        return Graph(collapsed(data, group, f"modules collapsed at depth {depth}"))

    def _collapse_chains(self) -> Graph:
        """Fallback without module paths: runs of single-input single-output ops become one."""
        data = self._data()
        return Graph(
            collapsed(data, chain_groups(data), "chains of single-input ops drawn as one node")
        )

    def _plan(self, depth: int | None, max_nodes: int, fold: bool) -> Graph:
        if depth is not None:
            return self.collapse(depth)
        data = self._data()
        if drawn_node_count(data.nodes, data.edges, fold) <= max_nodes:
            return self
        deepest = max((len(n.module.split(".")) for n in data.nodes if n.module), default=0)
        best: Graph | None = None
        for d in range(deepest, 0, -1):
            best = self.collapse(d)
            count = drawn_node_count(best.nodes, best.edges, fold)
            if count <= max_nodes:
                return best._note(
                    f"{len(data.nodes)} nodes is above the budget of {max_nodes}: "
                    f"collapsed to module depth {d}; pass depth=... or max_nodes=... to override"
                )
        del best
        smaller = self._collapse_chains()
        if drawn_node_count(smaller.nodes, smaller.edges, fold) > max_nodes:
            smaller = smaller._collapse_spans(max_nodes)
        return smaller._note(
            f"{len(data.nodes)} nodes is above the budget of {max_nodes}: collapsed; "
            f"pass max_nodes=... to draw everything"
        )

    def _collapse_spans(self, max_nodes: int) -> Graph:
        """Last resort: consecutive ops in topological order, drawn as one node per span."""
        groups, size = span_groups(self._data(), max_nodes)
        note = f"spans of {size} consecutive ops drawn as one node"
        return Graph(collapsed(self._data(), groups, note))

    def _note(self, note: str) -> Graph:
        data = self._data()
        return Graph(replace(data, notes=(*data.notes, note)))

    # -- output -------------------------------------------------------------------------------
    def to_dot(
        self, *, depth: int | None = None, max_nodes: int = DEFAULT_MAX_NODES, fold: bool = True
    ) -> str:
        """DOT source (no renderer needed). Above ``max_nodes`` modules are collapsed."""
        source: str = self._dot(depth, max_nodes, fold).source()
        return source

    def _dot(self, depth: int | None, max_nodes: int, fold: bool) -> DotGraph:
        if not isinstance(max_nodes, int) or max_nodes < 1:
            raise GradscopeError(f"max_nodes takes a positive int, not {describe(max_nodes)}")
        g = self._plan(depth, max_nodes, fold)
        data = g._data()
        return build_dot(
            data.nodes,
            data.edges,
            origin=data.origin_id,
            origin_text=str(data.origin) if data.origin else None,
            module_saved=g.saved_bytes_by_module() if g is self else self.saved_bytes_by_module(),
            notes=data.notes,
            fold=fold,
        )

    def to_graphviz(
        self, *, depth: int | None = None, max_nodes: int = DEFAULT_MAX_NODES, fold: bool = True
    ) -> Any:
        """The same graph as a ``graphviz.Digraph`` (what torchviz and torchview return)."""
        try:
            import graphviz
        except ImportError:
            raise GradscopeError(
                "to_graphviz() needs the graphviz package: pip install graphviz"
            ) from None
        dot = self._dot(depth, max_nodes, fold)
        return graphviz.Digraph("backward", graph_attr=dot.attrs, body=list(dot.body))

    def render(
        self,
        fmt: str = "svg",
        *,
        depth: int | None = None,
        max_nodes: int = DEFAULT_MAX_NODES,
        fold: bool = True,
        timeout: float = 30.0,
    ) -> bytes:
        """Rendered bytes in ``fmt`` ("svg" or "png"), falling back to sfdp on a timeout."""
        result = render(
            self.to_dot(depth=depth, max_nodes=max_nodes, fold=fold), fmt, timeout=timeout
        )
        return result.data

    def to_svg(
        self,
        *,
        depth: int | None = None,
        max_nodes: int = DEFAULT_MAX_NODES,
        fold: bool = True,
        timeout: float = 30.0,
    ) -> str:
        """The picture as SVG text (see :meth:`render` for the options)."""
        return self.render(
            "svg", depth=depth, max_nodes=max_nodes, fold=fold, timeout=timeout
        ).decode()

    def save(self, path: str | Path, **options: Any) -> Path:
        """Write ``.svg``, ``.png`` or ``.dot``/``.gv`` by suffix; returns the path."""
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix in (".dot", ".gv"):
            target.write_text(self.to_dot(**{k: v for k, v in options.items() if k != "timeout"}))
        elif suffix in (".svg", ".png"):
            target.write_bytes(self.render(suffix[1:], **options))
        else:
            raise GradscopeError(
                f"save() writes .svg, .png, .dot or .gv files, not {target.name!r}; "
                f"e.g. g.save('graph.svg')"
            )
        return target

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        text = str(self)
        if find_renderers():
            try:
                return {"image/svg+xml": self.to_svg(), "text/plain": text}
            except GradscopeError as err:
                text += f"\n({err})"
        body = html.escape(self.to_dot())
        return {
            "text/html": f"<pre>{html.escape(text)}</pre><details><summary>DOT</summary>"
            f"<pre>{body}</pre></details>",
            "text/plain": text,
        }
