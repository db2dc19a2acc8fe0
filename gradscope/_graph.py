"""``gradscope.graph(loss)``: the backward graph as plain data, text, DOT and SVG."""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._errors import GradscopeError
from ._grad_flow import GradRecorder
from ._graph_dot import DotGraph, build_dot, drawn_node_count, format_norm
from ._graph_walk import (
    VIEW_OPS,
    GraphEdge,
    GraphFreed,
    GraphNode,
    WalkResult,
    raise_freed,
    topological,
    walk,
)
from ._module_tags import MODULE_PATH_KEY
from ._naming import describe, named_parameters
from ._render import find_renderers, render

__all__ = ["Graph", "NonfiniteGradient", "graph"]

DEFAULT_MAX_NODES = 1500


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
class _Data:
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]
    roots: tuple[int, ...]
    origin: NonfiniteGradient | None = None
    origin_id: int | None = None
    notes: tuple[str, ...] = ()
    recorded: bool = False
    by_id: dict[int, GraphNode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id = {n.id: n for n in self.nodes}


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
        data: _Data,
        *,
        walked: WalkResult | None = None,
        recorder: GradRecorder | None = None,
    ) -> None:
        self._static = data
        self._walked = walked
        self._recorder = recorder

    # -- data ---------------------------------------------------------------------------------
    def _data(self) -> _Data:
        rec, walked = self._recorder, self._walked
        if rec is None or walked is None:
            return self._static
        flow = rec.flow(walked)
        if flow is None:
            return self._static
        cached = getattr(self, "_cache", None)
        if cached is not None and cached[0] is flow:
            data: _Data = cached[1]
            return data
        norms = flow.node_norms
        nodes = tuple(
            _node_with_norm(n, norms[n.id] if n.id < len(norms) else None)
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
        data = _Data(
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
        return self._data().edges

    @property
    def roots(self) -> tuple[GraphNode, ...]:
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
                node = _node_with_norm(self._static.nodes[o.node], flow.node_norms[o.node])
                return NonfiniteGradient(node, o.slot, o.value, o.reason)
        data = self._data()
        if not data.recorded:
            raise GradscopeError(
                "no backward pass was recorded yet: call loss.backward() after "
                "gradscope.graph(loss, grads=True), then read first_nonfinite"
            )
        return data.origin

    def node(self, node_id: int) -> GraphNode:
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
        return _collapsed(data, group, note=f"modules collapsed at depth {depth}")

    def _collapse_chains(self) -> Graph:
        """Fallback without module paths: runs of single-input single-output ops become one."""
        data = self._data()
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
        return _collapsed(data, group, note="chains of single-input ops drawn as one node")

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
        data = self._data()
        index = {n.id: k for k, n in enumerate(data.nodes)}
        order = topological(
            len(data.nodes), [GraphEdge(index[e.src], index[e.dst], 0) for e in data.edges]
        )
        ops = [data.nodes[k] for k in order if data.nodes[k].kind != "parameter"]
        size = max(2, -(-len(ops) // max(1, (max_nodes * 4) // 5)))
        group = {n.id: f"#span{pos // size}" for pos, n in enumerate(ops)}
        for e in data.edges:  # a parameter goes with its first consumer
            if data.by_id[e.dst].kind == "parameter" and e.dst not in group:
                group[e.dst] = group[e.src]
        return _collapsed(data, group, note=f"spans of {size} consecutive ops drawn as one node")

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
        import html

        body = html.escape(self.to_dot())
        return {
            "text/html": f"<pre>{html.escape(text)}</pre><details><summary>DOT</summary>"
            f"<pre>{body}</pre></details>",
            "text/plain": text,
        }


def _collapsed(data: _Data, group: Mapping[int, str], note: str) -> Graph:
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
                grad_norm=_norm_of(into.get(i)) if data.recorded else None,
                grad_norm_out=_norm_of(out_of.get(i)) if data.recorded else None,
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
        GraphEdge(a, b, slot, _norm_of(norms) if data.recorded else None)
        for (a, b), (slot, norms) in merged.items()
    ]
    roots = tuple(dict.fromkeys(where.get(r, r) for r in data.roots))
    origin_id = where.get(data.origin_id, data.origin_id) if data.origin_id is not None else None
    return Graph(
        _Data(
            tuple(nodes),
            tuple(edges),
            roots,
            data.origin,
            origin_id,
            (*data.notes, note),
            data.recorded,
        )
    )


def _node_with_norm(n: GraphNode, norm: float | None) -> GraphNode:
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
    )


def _norm_of(values: Iterable[float | None] | None) -> float | None:
    known = [v for v in values or () if v is not None]
    if not known:
        return None
    if not all(math.isfinite(v) for v in known):
        return math.nan if any(math.isnan(v) for v in known) else math.inf
    return math.sqrt(sum(v * v for v in known))


def _roots(outputs: tuple[Any, ...]) -> list[torch.Tensor]:
    items: list[Any] = list(outputs)
    if len(items) == 1 and isinstance(items[0], (list, tuple)):
        items = list(items[0])
    if not items:
        raise GradscopeError(
            "graph() needs at least one tensor, e.g. gradscope.graph(loss); got nothing"
        )
    problems = []
    for k, t in enumerate(items):
        if not isinstance(t, torch.Tensor):
            problems.append(f"output {k} is {describe(t)}, not a tensor")
        elif t.grad_fn is None and not t.requires_grad:
            problems.append(
                f"output {k} ({describe(t)}) has no grad_fn and does not require grad: it was "
                f"computed under torch.no_grad()/inference_mode, detached, or from tensors that "
                f"do not require grad; compute it with autograd on (e.g. from the model's output)"
            )
    if problems:
        raise GradscopeError("graph() cannot walk its input: " + "; ".join(problems))
    return items


def graph(
    *outputs: torch.Tensor | Sequence[torch.Tensor],
    params: nn.Module | Mapping[str, torch.Tensor] | None = None,
    grads: bool = False,
) -> Graph:
    """Walk the backward graph behind ``outputs`` (usually the loss).

    ``params`` (a module or a name -> tensor mapping) names the ``AccumulateGrad`` leaves.
    ``grads=True``, called before ``backward()``, records the gradient through every node.

    >>> import gradscope, torch
    >>> x = torch.tensor([-1.0, 4.0], requires_grad=True)
    >>> loss = x.sqrt().sum()
    >>> g = gradscope.graph(loss, grads=True)
    >>> loss.backward()
    >>> g.first_nonfinite.node.op
    'SqrtBackward0'
    """
    if not isinstance(grads, bool):
        raise GradscopeError(f"grads= takes True or False, not {describe(grads)}")
    roots = _roots(outputs)
    names: dict[int, str] = {}
    ptrs: set[int] = set()
    if params is not None:
        resolved = named_parameters(params)
        for name, tensor in resolved.params.items():
            names[id(tensor)] = name
            if tensor.layout == torch.strided:
                ptrs.add(tensor.data_ptr())
    recorder = GradRecorder() if grads else None
    # A walk allocates several objects per node and frees none, so Python's cyclic collector
    # would sweep everything alive again and again (2x the time on a 12,000-node chain).
    collecting = gc.isenabled()
    gc.disable()
    try:
        result = walk(
            roots,
            names,
            ptrs,
            module_key=MODULE_PATH_KEY,
            on_walked=recorder.attach if recorder is not None else None,
        )
        result.nodes = _hint_modules(result.nodes, result.edges)
        nodes = tuple(result.nodes)  # in id order
        data = _Data(nodes, tuple(result.edges), tuple(result.roots))
    except GraphFreed as err:
        raise_freed(err.op, grads)
    finally:
        if collecting:
            gc.enable()
    return Graph(data, walked=result, recorder=recorder)


def _hint_modules(nodes: list[GraphNode], edges: list[GraphEdge]) -> list[GraphNode]:
    """Without forward tags, an op that uses a module's parameters is placed in that module."""
    if not any(n.kind == "parameter" and n.param for n in nodes):
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
