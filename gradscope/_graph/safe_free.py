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
from typing import Any

__all__ = ["HELD_KEY", "SAFE_FREE_KEY", "attach_safe_free"]

SAFE_FREE_KEY = "gradscope.safe_free"
HELD_KEY = "gradscope.held"  # in a node's metadata: some holder already keeps this node
# a part this small frees recursively without danger (the C stack takes ~20,000 levels)
_SMALL = 2000


class _SafeFree:
    """Drops autograd-node wrappers one at a time, parents first (see the module docstring).

    ``fns`` is in topological order (every node after its consumers) and ``children[k]`` lists
    the positions of ``fns[k]``'s inputs. A node some tensor still uses stays alive: it and its
    alive inputs move to a new holder on that node, so a holder only ever keeps nodes its own
    node reaches (no cycle through node metadata, nothing kept past its natural lifetime).
    """

    __slots__ = ("children", "fns")

    def __init__(self, fns: list[Any], children: list[list[int]]) -> None:
        self.fns = fns
        self.children = children

    def __del__(self) -> None:
        fns, children = self.fns, self.children
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
            if len(part) > _SMALL:
                part.sort()
                _attach(kept[k], [kept[c] for c in part], list(part), children)
        kept.clear()


def _attach(keeper: Any, fns: list[Any], positions: list[int], children: list[list[int]]) -> None:
    where = {p: n for n, p in enumerate(positions)}
    local = [[where[c] for c in children[p] if c in where] for p in positions]
    try:
        keeper.metadata[f"{SAFE_FREE_KEY}.{id(fns)}"] = _SafeFree(fns, local)
    except (RuntimeError, AttributeError):  # a node without metadata: free them now
        fns.clear()


def attach_safe_free(fns_topo: list[Any], children: list[list[int]]) -> None:
    """Make ``fns_topo[0]`` keep the others and free them safely when it is freed.

    Every node must be reachable from the first; ``children[k]`` are positions in ``fns_topo``.
    Leaves (``AccumulateGrad``) and nodes another holder keeps (``HELD_KEY``) need not be
    listed: freeing them never recurses deeply, and listing them again would make holders of
    repeated walks re-home each other's nodes (quadratic).
    """
    if len(fns_topo) < 2:
        return
    for fn in fns_topo[1:]:
        fn.metadata[HELD_KEY] = True
    rest = list(range(1, len(fns_topo)))
    _attach(fns_topo[0], fns_topo[1:], rest, children)
