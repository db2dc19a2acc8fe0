"""Module hooks that leave no trace in copies of the module.

``copy.deepcopy``, ``pickle`` and ``torch.save`` copy a module's hook dictionaries along with the
module. A gradscope hook copied that way would keep reporting into the original's watch from the
copy, outlive ``close()`` there, and, being a closure, make the copy impossible to pickle.
:class:`CopySafe` hooks copy and pickle as an :class:`InertHook` instead: it does nothing and
removes itself from the copy the first time the copy runs. (Parameters' tensor hooks need none
of this: ``nn.Parameter`` drops them when copied or pickled.)

>>> import copy, pickle, torch
>>> from torch import nn
>>> def note(calls, module, args):
...     calls.append(type(module).__name__)
>>> calls = []
>>> net = nn.Linear(2, 2)
>>> handle = net.register_forward_pre_hook(CopySafe(note, calls))
>>> twin = pickle.loads(pickle.dumps(copy.deepcopy(net)))
>>> _ = twin(torch.ones(1, 2)), net(torch.ones(1, 2))
>>> calls, len(twin._forward_pre_hooks)
(['Linear'], 0)
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

__all__ = ["CopySafe", "InertHook"]


class InertHook:
    """What a :class:`CopySafe` hook becomes in a copy: does nothing, and the first time the copy
    runs, its forward pre-hook removes every inert hook from the copy."""

    __slots__ = ()

    def __call__(self, module: nn.Module, *args: Any) -> None:
        if not any(hook is self for hook in module._forward_pre_hooks.values()):
            return  # a forward hook: torch may be iterating that dict itself, leave it be
        # torch iterates a copy of the pre-hooks, and the forward hooks only after forward()
        for name in ("_forward_pre_hooks", "_forward_hooks"):
            hooks = getattr(module, name)
            for key in [k for k, hook in hooks.items() if isinstance(hook, InertHook)]:
                del hooks[key]
                module._forward_hooks_always_called.pop(key, None)

    def __reduce__(self) -> tuple[type[InertHook], tuple[()]]:
        return (InertHook, ())


class CopySafe(functools.partial):  # type: ignore[type-arg]
    """``functools.partial(fn, *args)`` as a module hook (called at C speed) that copies inert."""

    def __reduce__(self) -> tuple[type[InertHook], tuple[()]]:  # type: ignore[override]
        return (InertHook, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> InertHook:
        return InertHook()
