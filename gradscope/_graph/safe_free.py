"""Free walked autograd nodes one at a time, so that freeing never recurses deeply.

Why: in torch 2.13 an autograd node that has ever been seen from Python keeps its Python wrapper
alive for as long as the node lives, and freeing such nodes runs one nested C call per node.
Freeing a chain of ~45,000 walked nodes therefore overflows the C stack (segfault) when the user
drops the loss, even after the walk let go of every reference. The fix: the graph's own root
keeps the wrappers, in topological order, and drops them one at a time when the root dies, so
each node is freed at constant stack depth. gradscope's Graph holds no node at all.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["HELD", "SAFE_FREE_KEY", "SMALL", "attach_safe_free"]

SAFE_FREE_KEY = "gradscope.safe_free"
# a part this small frees recursively without danger (the C stack takes ~20,000 levels)
SMALL = 2000
# id() of every node some holder keeps -> a weak reference to that holder. Entries leave
# before their node can die (the holder removes them first), so an id is never stale. A dict
# lookup is cheaper than the per-node metadata dict a mark on the node itself would create.
HELD: dict[int, weakref.ref[_SafeFree]] = {}


class _SafeFree:
    """Drops autograd-node wrappers one at a time, parents first (see the module docstring).

    ``fns`` is in topological order (every node after its consumers) and ``children[k]`` lists
    the positions of ``fns[k]``'s inputs. A node some tensor still uses stays alive: it and its
    alive inputs move to a new holder on that node, so a holder only ever keeps nodes its own
    node reaches (no cycle through node metadata, nothing kept past its natural lifetime).
    """

    __slots__ = ("__weakref__", "_by_key", "children", "fns", "on_free", "ref")

    def __init__(self, fns: list[Any], children: list[list[int]] | None) -> None:
        self.fns = fns
        self.children = children  # None: too few nodes to ever need re-homing
        self._by_key: dict[int, Any] | None = None
        self.on_free: Callable[[], None] | None = None  # runs first, while every node lives
        self.ref = weakref.ref(self)
        for fn in fns:
            HELD[id(fn)] = self.ref

    def find(self, key: int) -> Any:
        """The node whose ``id()`` is ``key``, while this holder keeps it; else ``None``.

        How a Graph reads a node's saved tensors later without holding any node itself.
        """
        if self._by_key is None:
            self._by_key = {id(fn): k for k, fn in enumerate(self.fns) if fn is not None}
        k = self._by_key.get(key)
        return None if k is None else self.fns[k]

    def __del__(self) -> None:
        if self.on_free is not None:  # it never raises (SavedReader.read)
            self.on_free()
            self.on_free = None
        fns, children = self.fns, self.children
        self._by_key = None
        for fn in fns:
            if HELD.get(id(fn)) is self.ref:
                del HELD[id(fn)]
        if children is None:
            for k in range(len(fns)):  # consumers first: each free recurses only a little
                fns[k] = None
            return
        alive: list[bool] = [False] * len(fns)
        kept: dict[int, Any] = {}
        for k in range(len(fns)):
            fn = fns[k]
            fns[k] = None
            # 2 = this local + getrefcount's argument; more means the node lives on
            if sys.getrefcount(fn) > 2:
                alive[k] = True
                kept[k] = fn
            del fn  # a dead node is freed here, its inputs are still held below: no recursion
        done: set[int] = set()
        for k in sorted(kept):
            if k in done:
                continue
            done.add(k)
            part, stack = [], [k]
            while stack:  # k's alive inputs, reached through alive nodes only
                for c in children[stack.pop()]:
                    if alive[c] and c not in done:
                        done.add(c)
                        part.append(c)
                        stack.append(c)
            if len(part) > SMALL:
                part.sort()
                _attach(kept[k], [kept[c] for c in part], list(part), children)
        kept.clear()


def _attach(keeper: Any, fns: list[Any], positions: list[int], children: list[list[int]]) -> None:
    where = {p: n for n, p in enumerate(positions)}
    local = [[where[c] for c in children[p] if c in where] for p in positions]
    _keep(keeper, fns, local)


def _keep(keeper: Any, fns: list[Any], children: list[list[int]] | None) -> _SafeFree | None:
    holder = _SafeFree(fns, children)
    try:
        keeper.metadata[f"{SAFE_FREE_KEY}.{id(fns)}"] = holder
    except (RuntimeError, AttributeError):  # a node without metadata: free them now
        fns.clear()
        return None
    return holder


def attach_safe_free(
    fns_topo: list[Any], children: list[list[int]] | None
) -> weakref.ref[_SafeFree] | None:
    """Make ``fns_topo[0]`` keep the others and free them safely when it is freed.

    Every node must be reachable from the first; ``children[k]`` are positions in ``fns_topo``
    (``None`` for a part of at most ``SMALL`` nodes, which never needs re-homing). Leaves
    (``AccumulateGrad``) and nodes another holder keeps (``HELD``) need not be listed: freeing
    them never recurses deeply, and listing them again would make holders of repeated walks
    re-home each other's nodes (quadratic). Returns a weak reference to the holder, whose
    ``find()`` reaches the nodes (all but the first) while they live.
    """
    if len(fns_topo) < 2:
        return None
    local = None
    if children is not None:
        local = [[c - 1 for c in children[p] if c > 0] for p in range(1, len(fns_topo))]
    holder = _keep(fns_topo[0], fns_topo[1:], local)
    return None if holder is None else holder.ref
