"""Module clusters: which box (``subgraph cluster_*``) each drawn node sits in, and its name.

Only modules with drawn submodules or several drawn nodes get a box; a lone node of another
module sits in its parent's box with the module's name on it, and a box that many edges cross
is dissolved into its parent. Plain decisions over nodes and edges; ``dot.py`` writes them.
"""

from __future__ import annotations

from collections.abc import Sequence

from .walk import GraphNode

__all__ = ["placement"]

_CLUSTER_AT = 3
_MAX_CROSSINGS = 24


def placement(
    drawn: Sequence[GraphNode], lines: Sequence[tuple[int, int]]
) -> dict[int, tuple[str, str | None]]:
    """Each node's cluster, and the module name to write on it instead of a cluster.

    A cluster per module makes nested boxes around single nodes, and dot spreads clusters
    diagonally. So only modules with drawn submodules or at least three drawn nodes (attention)
    get a cluster; a node of another module (a Linear, a LayerNorm, a ReLU called twice) sits
    in its parent's cluster with the module's name on it, and a collapsed module sits in its
    parent's cluster too. A cluster that edges cross in and out of many times (a ModuleList
    whose entries the parent calls between its own ops) costs dot minutes and shows nothing:
    it is dissolved into its parent, its nodes keep their names.
    """

    def module_of(n: GraphNode) -> str | None:
        return n.module if (n.module is not None and n.module_source) else None

    count: dict[str, int] = {}
    for n in drawn:
        m = module_of(n)
        if m is not None:
            count[m] = count.get(m, 0) + 1
    parents = {m for m, k in count.items() if k >= _CLUSTER_AT}  # many ops: a box of its own
    for m in count:
        parts = m.split(".") if m else []
        parents.update(".".join(parts[:k]) for k in range(len(parts)))
    home: dict[int, tuple[str, str | None]] = {}  # node -> (its cluster, its module)
    for n in drawn:
        m = module_of(n)
        if m is None:
            home[n.id] = ("", None)
        elif n.kind == "module" or (m not in parents and m):
            home[n.id] = (m.rpartition(".")[0], None if n.kind == "module" else m)
        else:
            home[n.id] = (m, m)
    dissolved = _crowded(home, lines)
    out: dict[int, tuple[str, str | None]] = {}
    for i, (cluster, m) in home.items():
        while cluster in dissolved:
            cluster = cluster.rpartition(".")[0]
        name = None
        if m is not None and m != cluster:
            name = m[len(cluster) + 1 :] if cluster else m
        out[i] = (cluster, name)
    return out


def _crowded(home: dict[int, tuple[str, str | None]], lines: Sequence[tuple[int, int]]) -> set[str]:
    """Clusters more than ``_MAX_CROSSINGS`` drawn edges enter or leave."""
    crossings: dict[str, int] = {}
    for a, b in lines:
        inside_a = _ancestors(home[a][0])
        inside_b = _ancestors(home[b][0])
        for path in inside_a ^ inside_b:
            crossings[path] = crossings.get(path, 0) + 1
    return {path for path, k in crossings.items() if k > _MAX_CROSSINGS}


def _ancestors(cluster: str) -> set[str]:
    """The clusters a node in ``cluster`` is drawn inside (``""`` is no cluster)."""
    if not cluster:
        return set()
    parts = cluster.split(".")
    return {".".join(parts[: k + 1]) for k in range(len(parts))}
