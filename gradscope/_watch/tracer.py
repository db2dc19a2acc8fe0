"""One forward pass looked at op by op, armed only after a problem was seen.

Two questions need more than the cheap per-module sums of :mod:`.forward`:

- **Which op made the NaN/Inf?** Once a forward pass showed where a non-finite value was born
  (a module's own code), the next forward pass checks every op that code runs: the first whose
  inputs are finite and whose output is not is named, with the line of user code that called
  it and what its inputs held (``torch.log`` of values down to -1.6, a division by 0).
- **Where was the path to the loss cut?** Once parameters got no gradient, the next forward pass
  follows every tensor computed from them: the first op that returns a tensor autograd no longer
  tracks (``detach()``, ``.data``, an op under ``torch.no_grad()``, an integer result such as
  ``argmax`` or ``.long()``) is the cut; a parameter whose tensors reach the model's output was
  cut after the model returned (in the loss); one that no op read, or whose tensors were simply
  dropped, sits on an unused branch.

Both run through a ``TorchFunctionMode`` entered for that one forward pass, so a healthy run
never pays for it; every check costs a host sync, which is why it is not always on.
"""

from __future__ import annotations

import linecache
import os
import sys
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode, resolve_name

if TYPE_CHECKING:
    from .forward import ForwardMonitor

__all__ = ["ArmedMode", "CutSite", "CutTrace", "OpSite"]

# Frames of torch and of gradscope's recording machinery are not the user's code (the demo's
# model in gradscope/_cli is, for this purpose).
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIP = (
    os.path.dirname(torch.__file__) + os.sep,
    os.path.join(_PACKAGE, "_watch") + os.sep,
    os.path.join(_PACKAGE, "_graph") + os.sep,
)
_NUMBERS = {"item", "tolist", "numpy", "__float__", "__int__"}
_LIMIT = 64  # tensors looked at per op


@dataclass(frozen=True)
class OpSite:
    """The op that turned finite inputs into a NaN/Inf output."""

    op: str
    module: str
    value: str  # "NaN", "Inf" or "NaN and Inf"
    inputs: tuple[str, ...]  # what each floating input held
    location: str | None  # "file.py:42" of the user code that called it
    code: str | None  # that line
    forward: int

    def describe(self) -> str:
        where = f" at {self.location}" if self.location else ""
        code = f" ({self.code})" if self.code else ""
        return f"{self.op}{where}{code} returned {self.value}"


@dataclass(frozen=True)
class CutSite:
    """The op after which a parameter's values were no longer tracked by autograd."""

    op: str
    module: str
    reason: str  # "detach" | "data" | "no_grad" | "integer" | "number" | "other"
    location: str | None
    code: str | None

    def describe(self) -> str:
        why = {
            "detach": "detach() cut it from autograd",
            "data": ".data cut it from autograd",
            "no_grad": "it ran under torch.no_grad(), so its result is not tracked",
            "integer": "its result is an integer or boolean tensor, which carries no gradient",
            "number": "it turned the tensor into a Python number",
            "other": "its result does not require grad",
        }[self.reason]
        where = f" at {self.location}" if self.location else ""
        code = f": {self.code}" if self.code else ""
        inside = f" in '{self.module}'" if self.module else " in the model's own forward()"
        return f"{self.op}{inside}{where}{code} ({why})"


@dataclass(frozen=True)
class CutTrace:
    """What one forward pass did with a parameter that got no gradient."""

    param: str
    forward: int
    used: bool  # some op read it
    reached_output: bool  # a tensor computed from it is among the model's outputs
    cut: CutSite | None


def _user_code() -> tuple[str | None, str | None]:
    """``file:line`` and the source of the innermost frame outside torch and gradscope."""
    frame: Any = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_SKIP) and not filename.startswith("<"):
            line = frame.f_lineno
            code = linecache.getline(filename, line).split("  # ")[0].strip() or None
            return f"{os.path.basename(filename)}:{line}", code
        frame = frame.f_back
    return None, None


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    todo = [value]
    seen = 0
    while todo and seen < _LIMIT:
        item = todo.pop()
        if isinstance(item, torch.Tensor):
            seen += 1
            yield item
        elif isinstance(item, (tuple, list)):
            todo.extend(reversed(item))
        elif isinstance(item, Mapping):
            todo.extend(reversed(list(item.values())))


def _floating(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.layout == torch.strided and t.device.type != "meta"


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.detach()).all())


def _held(t: torch.Tensor) -> str:
    """What a tensor held, in a few words: its range and how many values are <= 0."""
    values = t.detach().reshape(-1).double()
    if values.numel() == 0:
        return "empty"
    low, high = float(values.min()), float(values.max())
    zero = int((values == 0).sum())
    negative = int((values < 0).sum())
    parts = [f"min {low:.4g}, max {high:.4g}"]
    if negative:
        parts.append(f"{negative} of {values.numel()} negative")
    if zero:
        parts.append(f"{zero} of {values.numel()} exactly 0")
    return ", ".join(parts)


def _bad_value(tensors: list[torch.Tensor]) -> str | None:
    nan = any(bool(torch.isnan(t).any()) for t in tensors)
    inf = any(bool(torch.isinf(t).any()) for t in tensors)
    if nan and inf:
        return "NaN and Inf"
    return "NaN" if nan else ("Inf" if inf else None)


def _name(func: Any) -> str:
    try:
        return str(resolve_name(func) or getattr(func, "__name__", repr(func)))
    except Exception:  # resolve_name walks torch's tables, which some callables are not in
        return str(getattr(func, "__name__", repr(func)))


class _Mode(TorchFunctionMode):
    def __init__(self, armed: ArmedMode) -> None:
        super().__init__()
        self.armed = armed

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        armed = self.armed
        if armed.busy:
            return func(*args, **kwargs)
        token = armed.guard(armed.before_op, func, args, kwargs)
        result = func(*args, **kwargs)
        armed.guard(armed.after_op, func, args, kwargs, result, token)
        return result


class ArmedMode:
    """What the next forward pass should look at op by op (see the module docstring)."""

    def __init__(self, monitor: ForwardMonitor) -> None:
        self._monitor = weakref.ref(monitor)
        self.busy = False  # gradscope's own ops (the monitor's sums) pass straight through
        self._locate: int | None = None  # module index whose own ops are checked
        self._sources: dict[int, str] = {}  # id(param) -> name, to trace
        self._params: dict[str, torch.Tensor] = {}
        self._tracked: dict[int, tuple[weakref.ref[torch.Tensor], frozenset[str]]] = {}
        self._used: set[str] = set()
        self._reached: set[str] = set()
        self._cuts: dict[str, CutSite] = {}
        self._integer_cuts: dict[str, CutSite] = {}
        self._mode: _Mode | None = None
        self._forward = 0
        self._replay = False

    def arm_locate(self, module: int) -> None:
        self._locate = module

    def arm_trace(self, params: Mapping[str, torch.Tensor]) -> None:
        for name, param in params.items():
            self._params[name] = param

    def armed(self) -> bool:
        return self._locate is not None or bool(self._params)

    def guard(self, fn: Any, *args: Any) -> Any:
        monitor = self._monitor()
        self.busy = True
        try:
            return fn(*args)
        except Exception as error:  # never break the user's forward pass
            if monitor is not None:
                monitor.errors.append(error)
            return None
        finally:
            self.busy = False

    # ----------------------------------------------------------------------------- pass
    def start(self, replay: int | None = None) -> None:
        """Enter the mode for one forward pass (``replay``: the index of the pass run again to
        locate a NaN/Inf; parameters to trace wait for a real pass, which tracks gradients)."""
        monitor = self._monitor()
        self._replay = replay is not None
        if replay is not None:
            self._forward = replay
            self._sources = {}
        else:
            self._forward = monitor.forwards if monitor is not None else 0
            self._sources = {id(p): name for name, p in self._params.items()}
        self._tracked = {}
        self._used, self._reached = set(), set()
        self._cuts, self._integer_cuts = {}, {}
        self._mode = _Mode(self)
        self._mode.__enter__()  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        mode, self._mode = self._mode, None
        if mode is None:
            return
        mode.__exit__(None, None, None)  # type: ignore[no-untyped-call]
        monitor = self._monitor()
        if monitor is not None and self._locate is not None:
            monitor.locate_tried = True
        self._locate = None
        if monitor is not None and not self._replay:
            for name in self._sources.values():
                cut = self._cuts.get(name) or self._integer_cuts.get(name)
                monitor.traces[name] = CutTrace(
                    name, self._forward, name in self._used, name in self._reached, cut
                )
            self._params.clear()
        self._sources, self._tracked = {}, {}

    def entered(self, module: int) -> None:
        """A module call started (the monitor's pre-hook)."""

    def left(self, module: int, output: Any, outermost: bool) -> None:
        """A module call returned; at the outermost call, see which traced tensors left."""
        if not outermost or not self._tracked:
            return
        for t in _tensors(output):
            names = self._names_of(t)
            if names:
                self._reached.update(names)

    # ----------------------------------------------------------------------------- ops
    def _names_of(self, t: torch.Tensor) -> frozenset[str] | None:
        key = id(t)
        source = self._sources.get(key)
        if source is not None:
            return frozenset((source,))
        tracked = self._tracked.get(key)
        if tracked is not None and tracked[0]() is t:
            return tracked[1]
        return None

    def _locating(self) -> bool:
        monitor = self._monitor()
        return (
            self._locate is not None
            and monitor is not None
            and monitor.located is None
            and bool(monitor.stack)
            and monitor.stack[-1] == self._locate
        )

    def before_op(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, ...] | None:
        """While locating: what the op's floating inputs hold, if they are all finite."""
        if not self._locating():
            return None
        inputs = [t for t in _tensors((args, kwargs)) if _floating(t)]
        if not inputs or not all(_finite(t) for t in inputs):
            return None
        return tuple(f"input {k}: {_held(t)}" for k, t in enumerate(inputs))

    def after_op(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        held: tuple[str, ...] | None,
    ) -> None:
        if held is not None:
            self._check_located(func, result, held)
        if self._sources:
            self._follow(func, args, kwargs, result)

    def _check_located(self, func: Any, result: Any, held: tuple[str, ...]) -> None:
        monitor = self._monitor()
        if monitor is None:
            return
        outputs = [t for t in _tensors(result) if _floating(t)]
        value = _bad_value([t.detach() for t in outputs])
        if value is None:
            return
        location, code = _user_code()
        module = monitor.paths[self._locate] if self._locate is not None else ""
        monitor.located = OpSite(_name(func), module, value, held, location, code, self._forward)

    def _follow(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any
    ) -> None:
        names: set[str] = set()
        for t in _tensors((args, kwargs)):
            found = self._names_of(t)
            if found:
                names.update(found)
        if not names:
            return
        self._used.update(names)
        outputs = list(_tensors(result))
        if not outputs:
            if getattr(func, "__name__", "") in _NUMBERS:
                self._cut(func, names, "number")
            return
        carried = frozenset(names)
        kept = False
        for t in outputs:
            if t.requires_grad:
                kept = True
                key = id(t)
                old = self._tracked.get(key)
                union = carried if old is None or old[0]() is not t else old[1] | carried
                self._tracked[key] = (weakref.ref(t), union)
        if kept:
            return
        name = getattr(func, "__name__", "")
        if not torch.is_grad_enabled():
            reason = "no_grad"
        elif name in ("detach", "detach_"):
            reason = "detach"
        elif name == "__get__" and "data" in _name(func):
            reason = "data"
        elif not any(t.is_floating_point() or t.is_complex() for t in outputs):
            reason = "integer"
        else:
            reason = "other"
        self._cut(func, names, reason)

    def _cut(self, func: Any, names: set[str], reason: str) -> None:
        monitor = self._monitor()
        stack = monitor.stack if monitor is not None else []
        module = monitor.paths[stack[-1]] if monitor is not None and stack else ""
        location, code = _user_code()
        site = CutSite(_name(func), module, reason, location, code)
        table = self._integer_cuts if reason == "integer" else self._cuts
        for name in names:
            table.setdefault(name, site)
