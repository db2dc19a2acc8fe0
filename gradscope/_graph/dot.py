"""DOT text for a backward graph: colours by log gradient norm, legend, module clusters, folding.

Folding (on by default) draws no ``AccumulateGrad`` node: a parameter becomes a line in the label
of each op that uses it (through a ``TBackward0``-style view too). That halves the node count
and removes the fan-out edges of a parameter used many times, which is what makes Graphviz slow.
A view between two ops (one consumer, one input) becomes part of the edge (its tooltip names
it): views keep the gradient's norm, and a transformer has one for every two ops that compute.
What is folded is decided in ``folding.py`` and which module box a node sits in in
``clusters.py``; this module writes both as DOT.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._text import printable
from .clusters import placement
from .folding import folding, pass_through
from .walk import GraphEdge, GraphNode

__all__ = ["DotGraph", "build_dot", "format_bytes", "format_norm"]

# light to dark blue for small to large gradients; red is kept for NaN/Inf. Node fills may be
# light (the node has a border and dark text); edges are lines on white, so their scale starts
# at a mid blue: every edge colour contrasts at least 3:1 with the background (WCAG 2 ratio).
_PALETTE = ("#f7fbff", "#c6dbef", "#6baed6", "#2171b5", "#08306b")
_EDGE_PALETTE = ("#4292c6", "#3182bd", "#2171b5", "#08519c", "#08306b")
_NONFINITE = "#e31a1c"
_ZERO = "#d9d9d9"
_EDGE_ZERO = "#888888"


def format_norm(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Inf"
    return f"{v:.2e}"


def format_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@dataclass
class DotGraph:
    attrs: dict[str, str]
    body: list[str] = field(default_factory=list)
    drawn: list[int] = field(default_factory=list)  # node ids drawn
    lines: list[tuple[int, int]] = field(default_factory=list)  # edges drawn

    def add_note(self, note: str) -> None:
        """One more line in the title (what was left out, how it was laid out)."""
        self.attrs["label"] = f"{self.attrs['label']}\n{note}"

    def source(self) -> str:
        head = "".join(f"\t{k}={_q(v)}\n" for k, v in self.attrs.items())
        return "digraph backward {\n" + head + "".join(self.body) + "}\n"


def _q(text: str) -> str:
    """A DOT string: quotes and backslashes escaped, control characters and lone surrogates in
    names shown as escapes (a NUL would end DOT's parse, a surrogate cannot reach ``dot``)."""
    lines = (printable(line).replace("\\", "\\\\").replace('"', '\\"') for line in text.split("\n"))
    return '"' + "\\n".join(lines) + '"'


class _Scale:
    def __init__(self, values: list[float]) -> None:
        finite = [math.log10(v) for v in values if v > 0 and math.isfinite(v)]
        self.lo = min(finite) if finite else 0.0
        self.hi = max(finite) if finite else 0.0

    def t(self, v: float) -> float:
        if self.hi <= self.lo:
            return 0.5
        return min(1.0, max(0.0, (math.log10(v) - self.lo) / (self.hi - self.lo)))

    def color(self, v: float | None) -> str | None:
        if v is None:
            return None
        if not math.isfinite(v):
            return _NONFINITE
        if v == 0:
            return _ZERO
        return _PALETTE[round(self.t(v) * (len(_PALETTE) - 1))]

    def edge_color(self, v: float | None) -> str | None:
        if v is None:
            return None
        if not math.isfinite(v):
            return _NONFINITE
        if v == 0:
            return _EDGE_ZERO
        return _EDGE_PALETTE[round(self.t(v) * (len(_EDGE_PALETTE) - 1))]


def build_dot(
    nodes: Sequence[GraphNode],
    edges: Sequence[GraphEdge],
    *,
    origin: int | None,
    origin_text: str | None,
    module_saved: dict[str, int],
    notes: Sequence[str],
    fold: bool = True,
) -> DotGraph:
    """The DOT statements; gradient colours appear only where nodes carry ``grad_norm``."""
    hidden, shown_in = folding(nodes, edges) if fold else (set(), {})
    through = pass_through(nodes, edges, hidden) if fold else {}
    hidden = hidden | set(through)
    by_id = {n.id: n for n in nodes}
    norms = [n.grad_norm for n in nodes if n.grad_norm is not None]
    norms += [e.grad_norm for e in edges if e.grad_norm is not None]
    scale = _Scale(norms)
    drawn = [n for n in nodes if n.id not in hidden]
    title = [f"backward graph: {len(nodes)} nodes, {len(edges)} edges ({len(drawn)} drawn)"]
    title += list(notes)
    if origin_text:
        title.append(f"first non-finite gradient: {origin_text}")
    dot = DotGraph(
        {
            "rankdir": "TB",
            "label": "\n".join(title),
            "labelloc": "t",
            "fontname": "Helvetica",
        }
    )
    dot.body.append('\tnode [shape=box style="rounded,filled" fontname=Helvetica fontsize=10]\n')
    dot.body.append("\tedge [fontname=Helvetica fontsize=8]\n")
    dot.drawn = [n.id for n in drawn]
    shown: list[tuple[GraphEdge, int, list[str]]] = []
    for e in edges:
        dst, via = e.dst, []
        while dst in through:  # views drawn as part of the edge
            via.append(by_id[dst].op)
            dst = through[dst]
        if e.src not in hidden and dst not in hidden:
            shown.append((e, dst, via))
    lines: dict[str, list[str]] = {}
    placed = placement(drawn, [(e.src, dst) for e, dst, _ in shown])
    for n in drawn:
        cluster, name = placed[n.id]
        lines.setdefault(cluster, []).append(
            _node_stmt(n, by_id, shown_in.get(n.id, ()), scale, n.id == origin, name)
        )
    _clusters(dot, lines, module_saved)
    few = len(drawn) <= 60  # more numbers on edges than that is noise (tooltips keep them)
    for e, dst, via in shown:
        attrs = {"id": f"edge-{e.src}-{e.dst}-{e.slot}"}
        color = scale.edge_color(e.grad_norm)
        if via:
            attrs["tooltip"] = f"through {', '.join(via)}"
        if e.grad_norm is not None:
            where = f"; through {', '.join(via)}" if via else ""
            attrs["tooltip"] = f"|grad| {format_norm(e.grad_norm)} (input {e.slot}{where})"
            if few:
                attrs["label"] = format_norm(e.grad_norm)
        if color is not None:
            attrs["color"] = color
            g = e.grad_norm
            finite = g is not None and math.isfinite(g) and g > 0
            attrs["penwidth"] = f"{1 + 2.5 * scale.t(g):.1f}" if g is not None and finite else "3"
        dot.body.append(f"\tn{e.src} -> n{dst} [{_attrs(attrs)}]\n")
        dot.lines.append((e.src, dst))
    if norms:
        dot.body.append(_legend(scale))
    return dot


def _attrs(attrs: dict[str, str]) -> str:
    return " ".join(f"{k}={_q(v)}" for k, v in attrs.items())


def _node_stmt(
    n: GraphNode,
    by_id: dict[int, GraphNode],
    folded: Sequence[int],
    scale: _Scale,
    is_origin: bool,
    module_name: str | None = None,
) -> str:
    first = n.label if n.kind != "module" else f"{n.module or n.op} ({n.ops} ops)"
    text = [f"{module_name}: {first}" if module_name else first]
    if n.grad_norm is not None or n.grad_norm_out is not None:
        g = f"|g| {format_norm(n.grad_norm)}"
        if n.kind == "module":
            g = f"|g| in {format_norm(n.grad_norm)} out {format_norm(n.grad_norm_out)}"
        text.append(g)
    if n.saved_bytes:
        text.append(f"saved {format_bytes(n.saved_bytes)}")
    for p in folded:
        leaf = by_id[p]
        shape = "x".join(str(s) for s in leaf.shape or ())
        text.append(f"+ {leaf.param or 'param'} ({shape}) |g| {format_norm(leaf.grad_norm)}")
    if n.kind == "module" and n.params:
        text.append(f"{len(n.params)} params")
    classes = [n.kind]
    attrs = {"id": f"node-{n.id}", "label": "\n".join(text)}
    tip = [n.op]
    tip += [f"{s.name}: {s.shape} {s.dtype} {format_bytes(s.nbytes)}" for s in n.saved]
    attrs["tooltip"] = "\n".join(tip)
    color = scale.color(n.grad_norm)
    if color is not None:
        attrs["fillcolor"] = color
        if color in _PALETTE[3:] or color == _NONFINITE:
            attrs["fontcolor"] = "white"
    elif n.kind in ("parameter", "leaf"):
        attrs["fillcolor"] = "#e5f5e0"
    else:
        attrs["fillcolor"] = "white"
    if n.kind == "module":
        attrs["shape"] = "box3d"
    if n.grad_norm is not None and not math.isfinite(n.grad_norm):
        classes.append("nonfinite")
    if is_origin:
        classes.append("origin")
        attrs["label"] += "\nnon-finite gradient born here"
        attrs["color"] = _NONFINITE
        attrs["penwidth"] = "4"
        attrs["peripheries"] = "2"
    attrs["class"] = " ".join(classes)
    return f"n{n.id} [{_attrs(attrs)}]\n"


def _clusters(dot: DotGraph, lines: dict[str, list[str]], module_saved: dict[str, int]) -> None:
    """Nested ``subgraph cluster_*`` blocks, one per module path prefix."""
    tree: dict[str, set[str]] = {}
    for path in lines:
        if not path:
            continue
        parts = path.split(".")
        for k in range(1, len(parts) + 1):
            parent = ".".join(parts[: k - 1])
            tree.setdefault(parent, set()).add(".".join(parts[:k]))
    for stmt in lines.get("", []):
        dot.body.append("\t" + stmt)
    counter = 0
    # iterative pre-order over the module tree; "}" markers close a cluster
    todo: list[str | None] = list(sorted(tree.get("", ()), reverse=True))
    depth = 1
    while todo:
        item = todo.pop()
        if item is None:
            depth -= 1
            dot.body.append("\t" * depth + "}\n")
            continue
        counter += 1
        path = item
        pad = "\t" * depth
        label = path
        if module_saved.get(path):
            label += f"\nsaved {format_bytes(module_saved[path])}"
        dot.body.append(f"{pad}subgraph cluster_{counter} {{\n")
        dot.body.append(
            f'{pad}\tlabel={_q(label)} id={_q("cluster-" + path)} style="rounded,dashed" '
            # left-justified: a centred label sits right where the edge into the cluster runs
            f"color=gray50 fontsize=10 labeljust=l\n"
        )
        for stmt in lines.get(path, []):
            dot.body.append(pad + "\t" + stmt)
        todo.append(None)
        depth += 1
        todo.extend(sorted(tree.get(path, ()), reverse=True))


def _legend(scale: _Scale) -> str:
    cells = []
    steps = len(_PALETTE)
    for k, color in enumerate(_PALETTE):
        exponent = scale.lo + (scale.hi - scale.lo) * k / (steps - 1)
        font = ' COLOR="white"' if k >= 3 else ""
        cells.append(f'<TD BGCOLOR="{color}"><FONT{font}>{10**exponent:.1e}</FONT></TD>')
    cells.append(f'<TD BGCOLOR="{_NONFINITE}"><FONT COLOR="white">NaN/Inf</FONT></TD>')
    cells.append(f'<TD BGCOLOR="{_ZERO}">0</TD>')
    table = (
        '<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">'
        f'<TR><TD COLSPAN="{len(cells)}">gradient L2 norm (log colour scale; '
        "edges: darker and thicker = larger)</TD></TR>"
        f"<TR>{''.join(cells)}</TR></TABLE>>"
    )
    return f'\tlegend [id="legend" class="legend" shape=plaintext style="" label={table}]\n'
