"""The tensors each node saved for backward, read when someone asks rather than during the walk.

Reading a saved tensor unpacks it into a new Python tensor (~2 us each), which was a third of a
walk's time and is wasted in a training loop that only asks ``first_nonfinite``. So the walk
only notes where each node can be found again (its safe-free holder and ``id()``), and
:class:`SavedReader` reads every node's saved tensors on the first request: while the graph is
alive and not yet freed by ``backward()``, or, for ``grads=True`` graphs, at the start of
backward (the only moment they are sure to exist), when the graph asked for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .walk import ACCUMULATE, GraphFreed, SavedTensor, WalkResult, op_name

__all__ = ["SavedReader", "probe_freed", "read_saved"]

_SAVED_NAMES: dict[type, tuple[tuple[str, str], ...]] = {}
_SAVES: dict[str, bool] = {}  # op name -> whether nodes of that name save tensors
_DTYPES: dict[torch.dtype, str] = {}


def _saved_names(fn: Any) -> tuple[tuple[str, str], ...]:
    """``(name, attribute)`` of the tensors this node type saves; ``dir()`` once per type."""
    cls = type(fn)
    names = _SAVED_NAMES.get(cls)
    if names is None:
        names = tuple(
            (name, "saved_tensors" if name == "tensors" else "_saved_" + name)
            for name in (
                attr[len("_raw_saved_") :] for attr in dir(fn) if attr.startswith("_raw_saved_")
            )
        )  # a custom autograd.Function keeps ctx.save_for_backward's tensors as saved_tensors
        _SAVED_NAMES[cls] = names
        _SAVES[op_name(fn)] = _SAVES.get(op_name(fn), False) or bool(names)
    return names


def read_saved(fn: Any, param_ptrs: set[int]) -> tuple[SavedTensor, ...]:
    """Shape, dtype and bytes of every tensor ``fn`` saved; raises GraphFreed once freed."""
    names = _saved_names(fn)
    if not names:
        return ()
    out = []
    for name, attr in names:
        try:
            value = getattr(fn, attr)
        except RuntimeError as err:
            if "freed" in str(err):
                raise GraphFreed(op_name(fn)) from None
            raise
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            out.append(_describe(name, value, param_ptrs))
        elif isinstance(value, (list, tuple)):
            out.extend(
                _describe(f"{name}[{k}]", t, param_ptrs)
                for k, t in enumerate(value)
                if isinstance(t, torch.Tensor)
            )
    return tuple(out)


def _describe(name: str, t: torch.Tensor, param_ptrs: set[int]) -> SavedTensor:
    try:
        ptr = t.data_ptr()
    except RuntimeError:  # sparse and other storage-less layouts
        ptr = 0
    dtype = _DTYPES.get(t.dtype)
    if dtype is None:
        dtype = _DTYPES[t.dtype] = str(t.dtype).removeprefix("torch.")
    return SavedTensor(name, tuple(t.shape), dtype, t.nbytes, ptr in param_ptrs, ptr)


def probe_freed(fns: Iterable[Any]) -> None:
    """Raise GraphFreed if backward() already freed these nodes (checks the first that saves).

    A walk after ``backward()`` without ``retain_graph`` would draw a graph whose saved tensors
    are gone and whose nodes ``grads=True`` can never see run: refuse it early and clearly.
    """
    for fn in fns:
        if fn is None or op_name(fn) == ACCUMULATE:
            continue
        names = _saved_names(fn)
        if names:
            try:
                getattr(fn, names[0][1])
            except RuntimeError as err:
                if "freed" in str(err):
                    raise GraphFreed(op_name(fn)) from None
                raise
            return


class SavedReader:
    """Reads every walked node's saved tensors once, from the live nodes, when first asked.

    Holds no node: it finds them through the safe-free holders (weak references), by ``id()``.
    Nodes no holder keeps (each root) are read right after the walk.
    """

    def __init__(self, result: WalkResult, fns: list[Any], param_ptrs: set[int]) -> None:
        self._keys = result.keys
        self._holders = result.holders
        self._ptrs = param_ptrs
        self._ops = result.ops
        self.values: dict[int, tuple[SavedTensor, ...]] = {}
        self.done = False
        self.freed = False
        self.errors: list[Exception] = []  # kept for the picture's notes, never raised
        # nodes no holder keeps (each root: a node cannot hold itself), read now
        for i in {*result.roots, *(i for i, h in enumerate(result.holders) if h is None)}:
            fn = fns[i]
            if fn is not None and result.ops[i] != ACCUMULATE:
                self.values[i] = read_saved(fn, param_ptrs)

    def _find(self, i: int) -> Any:
        ref = self._holders[i] if i < len(self._holders) else None
        holder = ref() if ref is not None else None
        return None if holder is None else holder.find(self._keys[i])

    def read(self) -> dict[int, tuple[SavedTensor, ...]]:
        """Every node's saved tensors (read now if not yet); partial once the graph is freed.

        Never raises: it runs inside backward and while nodes are freed.
        """
        if self.done:
            return self.values
        self.done = True
        try:  # after backward everything is gone: one look says so (each failed read costs)
            probe_freed(self._find(i) for i, op in enumerate(self._ops) if _SAVES.get(op, True))
        except GraphFreed:
            self.freed = True
            return self.values
        except Exception as err:
            self.errors.append(err)
            return self.values
        for i, op in enumerate(self._ops):
            if i in self.values or op == ACCUMULATE:
                continue
            fn = self._find(i)
            if fn is None:
                if _SAVES.get(op, True):
                    self.freed = True  # gone (or never reachable): cannot say what it saved
                continue
            try:
                self.values[i] = read_saved(fn, self._ptrs)
            except GraphFreed:
                self.freed = True
            except Exception as err:  # an exotic node type: say so on the picture
                self.errors.append(err)
        return self.values
