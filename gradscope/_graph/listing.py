"""The backward graph as text (``str(g)``): one line per chain of nodes, each node once.

A line starts at a root or at the node a branch hangs off (``#id`` names it), and follows the
first input not printed yet; what does not fit in ``max_lines`` is counted, not listed.
"""

from __future__ import annotations

from .data import GraphData
from .dot import format_norm
from .walk import GraphEdge, GraphNode

__all__ = ["chains_text"]


def chains_text(data: GraphData, header: str, max_lines: int) -> str:
    """``header``, then one line per chain: each node once, ``#id`` where a line starts."""
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

    lines = [header]
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
