"""The Graph object: the backward graph as plain data, text, DOT and SVG."""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._errors import GradscopeError
from .._naming import describe
from .around import neighbourhood
from .budget import collapsed_at, within_budget
from .data import GraphData, NonfiniteGradient
from .dot import DotGraph, build_dot
from .layout import BUDGET_S, estimate
from .listing import chains_text
from .render import RenderResult, find_renderers, render
from .skeleton import Walked
from .walk import GraphEdge, GraphNode

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

    def __init__(self, data: GraphData | Walked) -> None:
        if isinstance(data, Walked):
            self._walked: Walked | None = data
            self._static: GraphData | None = None
        else:
            self._walked = None
            self._static = data

    # -- data ---------------------------------------------------------------------------------
    def _data(self) -> GraphData:
        if self._walked is not None:
            return self._walked.data()
        assert self._static is not None
        return self._static

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
        """Where a NaN/Inf gradient was born in the recorded backward pass; ``None`` if clean.

        With several independent sources, the first one backward ran: see
        :attr:`nonfinite_origins`.
        """
        found = self.nonfinite_origins
        return found[0] if found else None

    @property
    def nonfinite_origins(self) -> tuple[NonfiniteGradient, ...]:
        """Every node whose incoming gradients were finite and whose outgoing gradient (or the
        sum of its incoming ones) was NaN/Inf, in the order backward ran them.

        torch runs ready nodes with the highest sequence number first, so among independent
        sources the first is usually the one created last in forward (nearest the loss).
        Reading it after a clean pass costs a flag check: this can be read every step.
        """
        walked = self._walked
        if walked is not None and walked.recorder is not None:
            found = walked.origins()
            if found is None:
                raise GradscopeError(
                    "no backward pass was recorded yet: call loss.backward() after "
                    "gradscope.graph(loss, grads=True), then read first_nonfinite"
                )
            return found
        data = self._data()
        if not data.recorded:
            raise GradscopeError(
                "first_nonfinite needs gradients: build the graph with "
                "gradscope.graph(loss, grads=True) before calling loss.backward()"
            )
        return data.origins

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
        return chains_text(self._data(), repr(self), max_lines)

    # -- smaller graphs -----------------------------------------------------------------------
    def around(self, target: GraphNode | NonfiniteGradient | int | str, radius: int = 2) -> Graph:
        """The part of the graph within ``radius`` edges of ``target``, as its own Graph.

        ``target`` is a node, its id, a module path (every node of that module and its
        submodules is a centre) or ``g.first_nonfinite``. Draw one corner of a huge graph::

            g.around(g.first_nonfinite, radius=3).save("nan.svg")
            g.around("layers.3.self_attn").save("attention.svg")
        """
        return Graph(neighbourhood(self._data(), target, radius))

    def collapse(self, depth: int) -> Graph:
        """Each module at ``depth`` (1 = top-level children) becomes one node.

        Every op that ran inside such a module (or its submodules) goes into that node; ops
        that ran in a shallower module itself stay single ops, drawn in its cluster.
        """
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise GradscopeError(
                f"collapse(depth) takes a positive int (1 = each top-level submodule), "
                f"not {describe(depth)}"
            )
        return Graph(collapsed_at(self._data(), depth))

    def _plan(self, depth: int | None, max_nodes: int, fold: bool) -> Graph:
        if depth is not None:
            return self.collapse(depth)
        smaller = within_budget(self._data(), max_nodes, fold)
        return self if smaller is None else Graph(smaller)

    # -- output -------------------------------------------------------------------------------
    def drawn(
        self, *, depth: int | None = None, max_nodes: int = DEFAULT_MAX_NODES, fold: bool = True
    ) -> Graph:
        """The graph that :meth:`to_svg` draws with the same options: collapsed when over the
        node budget (its notes say how), else this graph itself."""
        return self._plan(depth, max_nodes, fold)

    def drawn_count(
        self, *, depth: int | None = None, max_nodes: int = DEFAULT_MAX_NODES, fold: bool = True
    ) -> int:
        """How many boxes :meth:`to_svg` draws with the same options (the picture's title says
        "N drawn"): each ``AccumulateGrad`` folded into the op that uses it, unless ``fold=False``.
        """
        return len(self._dot(depth, max_nodes, fold).drawn)

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
        engine: str | None = None,
    ) -> bytes:
        """Rendered bytes in ``fmt`` ("svg" or "png"); see :meth:`render_result`."""
        return self.render_result(
            fmt, depth=depth, max_nodes=max_nodes, fold=fold, timeout=timeout, engine=engine
        ).data

    def render_result(
        self,
        fmt: str = "svg",
        *,
        depth: int | None = None,
        max_nodes: int = DEFAULT_MAX_NODES,
        fold: bool = True,
        timeout: float = 30.0,
        engine: str | None = None,
    ) -> RenderResult:
        """The rendered bytes, the renderer and engine used, and notes on what was chosen.

        ``engine=None`` estimates how long ``dot`` would take (nodes plus the layers long
        edges skip, see ``layout.py``) and, above a few seconds, lays the graph out with
        ``sfdp`` instead and says so in the picture's title; ``engine="dot"`` waits for dot
        (up to ``timeout``, then sfdp), ``engine="sfdp"`` skips it.
        """
        if engine not in (None, "dot", "sfdp"):
            raise GradscopeError(f"engine= takes None, 'dot' or 'sfdp', not {describe(engine)}")
        dot = self._dot(depth, max_nodes, fold)
        engines: tuple[str, ...] = ("dot", "sfdp") if engine != "sfdp" else ("sfdp",)
        notes: list[str] = []
        if engine is None:
            guess = estimate(dot.drawn, dot.lines)
            if guess.seconds > BUDGET_S:
                engines = ("sfdp",)
                note = (
                    f"{guess}: laid out with sfdp instead (no layers); pass engine='dot' to "
                    f"wait for it, or depth=N to collapse modules"
                )
                dot.add_note(note)
                notes.append(note)
        result = render(dot.source(), fmt, timeout=timeout, engines=engines)
        return replace(result, notes=(*notes, *result.notes))

    def to_svg(
        self,
        *,
        depth: int | None = None,
        max_nodes: int = DEFAULT_MAX_NODES,
        fold: bool = True,
        timeout: float = 30.0,
        engine: str | None = None,
    ) -> str:
        """The picture as SVG text (see :meth:`render` for the options)."""
        return self.render(
            "svg", depth=depth, max_nodes=max_nodes, fold=fold, timeout=timeout, engine=engine
        ).decode()

    def save(self, path: str | Path, **options: Any) -> Path:
        """Write ``.svg``, ``.png`` or ``.dot``/``.gv`` by suffix; returns the path."""
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix in (".dot", ".gv"):
            skip = ("timeout", "engine")
            target.write_text(self.to_dot(**{k: v for k, v in options.items() if k not in skip}))
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
