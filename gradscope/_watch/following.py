"""Which parameters a recorder watches, and their hooks, following the module as it changes.

A model's parameters can be replaced by a new ``nn.Parameter`` (which drops its hooks), frozen,
unfrozen, added or removed between passes, and so can whole submodules. :meth:`Followed.changed`
notices any of that with an identity check of every parameter and submodule slot and the size
of every slot dict (run in C through ``map()``, cheap enough for every forward pass; walking the
module tree each time cost ~10% of a LeNet step), and :meth:`Followed.sync` then re-reads the
module and hooks what is new.

The recorder's hooks are registered through the ``register`` callable it passes in, so this
module knows nothing about what the hooks do.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from operator import attrgetter, is_
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._naming import ParamNames, named_parameters
from .passes import accumulate_node

__all__ = ["Followed"]

_requires_grad = attrgetter("requires_grad")
_hooks_of = attrgetter("_backward_hooks")

Register = Callable[[str, torch.Tensor], RemovableHandle]


class Followed:
    """The watched parameters of ``root``: names, aliases, shapes, hooks, accumulator nodes.

    ``handles`` and ``nodes`` are mutated in place, never rebound, so the recorder's finalizer
    and its hooks can hold them directly.
    """

    def __init__(
        self,
        root: nn.Module,
        include: Sequence[str],
        exclude: Sequence[str],
        register: Register,
        forget: Callable[[str], None],
        *,
        nodes: bool = True,
    ) -> None:
        self.root: nn.Module | None = root
        self._include = list(include)
        self._exclude = list(exclude)
        self._register = register
        self._forget = forget  # the recorder drops what it keeps of a parameter unhooked
        self._with_nodes = nodes  # False for FSDP2's DTensor parameters (no AccumulateGrad used)
        self.names = ParamNames()
        self.handles: dict[str, RemovableHandle] = {}
        self.nodes: dict[str, Any] = {}  # the AccumulateGrad node of each hooked parameter
        self.aliases: dict[str, tuple[str, ...]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.frozen: list[str] = []  # watched parameters with requires_grad=False
        self.replaced: list[str] = []  # names whose nn.Parameter was swapped since last taken
        # Every parameter and submodule slot of the module tree as parallel lists (dict, key,
        # value), the sizes of those dicts, and each parameter's requires_grad: checked with
        # map(), in C, so a replaced, added or removed parameter or submodule shows.
        self._dicts: list[dict[str, Any]] = []
        self._keys: list[str] = []
        self._values: list[Any] = []
        self._containers: list[dict[str, Any]] = []
        self._sizes: list[int] = []
        self._params: list[torch.Tensor] = []
        self._flags: list[bool] = []
        self._hooked: list[torch.Tensor] = []  # the hooked parameters, as of the last sync

    def selected(self, aliases: Sequence[str]) -> bool:
        """Whether a parameter known by these names (tied weights have several) is watched."""

        def matches(patterns: list[str]) -> bool:
            return any(fnmatch.fnmatchcase(a, p) for a in aliases for p in patterns)

        if self._include and not matches(self._include):
            return False
        return not matches(self._exclude)

    def changed(self) -> bool:
        """Whether a parameter or submodule was replaced, added or removed, or a parameter
        (un)frozen, since the last sync."""
        return (
            list(map(len, self._containers)) != self._sizes
            or not all(map(is_, map(dict.get, self._dicts, self._keys), self._values))
            or list(map(_requires_grad, self._params)) != self._flags
        )

    def sync(self, *, force: bool = False) -> None:
        """Follow the module's current parameters: new, replaced, (un)frozen ones."""
        root = self.root
        if root is None or not (force or self.changed()):
            return
        names = named_parameters(root)
        aliases: dict[str, list[str]] = {}
        for alias, canonical in names.canonical.items():
            aliases.setdefault(canonical, []).append(alias)
        chosen = {n for n in names.params if self.selected(aliases[n])}
        selected = ParamNames(
            params={n: p for n, p in names.params.items() if n in chosen},
            canonical={a: c for a, c in names.canonical.items() if c in chosen},
        )
        for name, param in selected.params.items():
            old = self.names.params.get(name)
            if old is not None and old is not param:
                self.replaced.append(name)
                self.unhook(name)
            if name not in self.handles and param.requires_grad:
                self.hook(name, param)
        for name in set(self.handles) - set(selected.params):
            self.unhook(name)
        self.names = selected
        self.shapes = {n: tuple(p.shape) for n, p in selected.params.items()}
        self.aliases = {n: tuple(a for a in aliases[n] if a != n) for n in selected.params}
        self.frozen = [n for n, p in selected.params.items() if not p.requires_grad]
        modules = list(root.modules())
        self._containers = [m._parameters for m in modules] + [m._modules for m in modules]
        self._sizes = list(map(len, self._containers))
        slots = [(d, k, v) for d in self._containers for k, v in d.items()]
        self._dicts = [d for d, _, _ in slots]
        self._keys = [k for _, k, _ in slots]
        self._values = [v for _, _, v in slots]
        self._params = [p for m in modules for p in m._parameters.values() if p is not None]
        self._flags = list(map(_requires_grad, self._params))
        self._hooked = [self.names.params[n] for n in self.handles]

    def hook(self, name: str, param: torch.Tensor) -> None:
        self.handles[name] = self._register(name, param)
        if self._with_nodes:
            self.nodes[name] = accumulate_node(param)

    def unhook(self, name: str) -> None:
        handle = self.handles.pop(name, None)
        if handle is not None:
            handle.remove()
        self.nodes.pop(name, None)
        self._forget(name)

    def rehook_last(self, name: str, param: torch.Tensor) -> None:
        """Put our hook after every other hook on ``param`` from the next pass on.

        Torch calls a copy of the hook list, so this is safe while it runs.
        """
        self.handles.pop(name).remove()
        self.handles[name] = self._register(name, param)

    def move_ours_last(self) -> None:
        """Re-register our hook on every parameter where another hook was added after it."""
        if (
            len(self._hooked) != len(self.handles)
            or max(map(len, filter(None, map(_hooks_of, self._hooked))), default=0) > 1
        ):
            self._move_ours_last()

    def _move_ours_last(self) -> None:
        params = self.names.params
        moved = [
            name
            for name, handle in self.handles.items()
            if len(hooks := params[name]._backward_hooks or ()) > 1
            and next(reversed(hooks)) != handle.id
            and params[name].requires_grad  # torch refuses hooks on frozen tensors
        ]
        for name in moved:
            self.rehook_last(name, params[name])

    def close(self) -> None:
        """Forget the module (the handles are removed by the recorder's finalizer)."""
        self.root = None
        self.names = ParamNames()
        self.nodes.clear()
        self._dicts, self._keys, self._values, self._params, self._flags = [], [], [], [], []
        self._containers, self._sizes, self._hooked = [], [], []
