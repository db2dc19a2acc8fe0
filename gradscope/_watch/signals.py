"""Per-pass signals for the diagnosis, kept on the device and read when diagnosed.

- **Dead units.** A unit (an output feature or channel) whose bias, or whose normalisation
  layer's weight and bias, gets exactly zero gradient pass after pass never activates: a dead
  ReLU. For every 1-D parameter the watch keeps, per element, how many consecutive passes its
  gradient was exactly zero: one concatenation and two element-wise ops per pass over the small
  1-D gradients, no host transfer.
- **Was ``.grad`` cleared?** When ``.grad`` already held something as a pass started, the watch
  snapshots it (the record's *before*); a sampled norm of that snapshot (see
  :mod:`.sampling`) says whether it was zero, so the diagnosis can tell gradient accumulation
  (``.grad`` kept on purpose between steps) from a forgotten ``zero_grad()``. Passes whose
  ``.grad`` was None at the start (``zero_grad()``'s default) cost nothing here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter, is_, is_not

import torch

from .records import BackwardRecord
from .sampling import sample

__all__ = ["Carried", "PassSignals"]

_STRIDED = frozenset({torch.strided})
_shape_of, _grad_of, _layout_of = attrgetter("shape"), attrgetter("grad"), attrgetter("layout")
_device_of, _dtype_of = attrgetter("device"), attrgetter("dtype")
_is_none = partial(is_, None)


@dataclass
class Carried:
    """One pass's parameters whose ``.grad`` held a value as the pass started."""

    index: int
    names: tuple[str, ...]
    _norms: torch.Tensor | None = None
    _values: list[float] | None = field(default=None, repr=False)

    @property
    def norms(self) -> list[float]:
        """Sampled norm of each ``.grad`` as the pass started (0.0: it had been zeroed)."""
        if self._values is None:
            self._values = self._norms.tolist() if self._norms is not None else []
            self._norms = None
        return self._values


class PassSignals:
    """Updated by the watch at the end of every recorded backward pass."""

    def __init__(self, history: int | None = 1000) -> None:
        self.carried: deque[Carried] = deque(maxlen=history)
        self.layout: tuple[tuple[str, int], ...] = ()
        self.streak_passes = 0  # passes the zero-gradient streaks have been counted over
        self._streak: torch.Tensor | None = None
        self._key: tuple[object, ...] = ()
        self._ones: list[str] = []  # the 1-D parameters among a pass's gradients
        self._ones_layout: tuple[tuple[str, int], ...] = ()  # and their sizes

    def on_pass(self, record: BackwardRecord, params: Mapping[str, torch.Tensor]) -> None:
        self._carried(record)
        self._units(record, params)

    def _carried(self, record: BackwardRecord) -> None:
        held = record.held_befores()
        if not held:
            return  # no .grad held a value as the pass started (zero_grad()'s default)
        names = tuple(held)
        befores = [sample(before.detach()) for before in held.values()]
        if all(b.dtype == befores[0].dtype and b.device == befores[0].device for b in befores):
            norms = torch.stack(torch._foreach_norm(befores, 2))
        else:
            norms = torch.stack([torch.linalg.vector_norm(b.double()).cpu() for b in befores])
        self.carried.append(Carried(record.index, names, norms))

    def _units(self, record: BackwardRecord, params: Mapping[str, torch.Tensor]) -> None:
        names = tuple(record.grads)
        found = tuple(map(params.get, names))
        present: list[torch.Tensor] = list(filter(partial(is_not, None), found))  # type: ignore[arg-type]
        # Which of them are 1-D (and their sizes) changes only with the parameters or their
        # shapes: decided again then, from a key built in C (map), not one by one every pass.
        ones_key = (names, tuple(map(id, found)), tuple(map(_shape_of, present)))
        if ones_key != self._key:
            self._key = ones_key
            self._ones = [
                n for n, p in zip(names, found, strict=True) if p is not None and p.dim() == 1
            ]
            self._ones_layout = tuple((n, params[n].numel()) for n in self._ones)
        live = list(map(_grad_of, map(params.__getitem__, self._ones)))
        if not any(map(_is_none, live)) and set(map(_layout_of, live)) <= _STRIDED:
            grads = list(map(torch.Tensor.detach, live))  # the usual case, all in C
            key = self._ones_layout
        else:
            grads, layout = [], []
            for name in self._ones:
                p = params[name]
                if p.grad is None or p.grad.layout != torch.strided:
                    continue
                grads.append(p.grad.detach())
                layout.append((name, p.numel()))
            key = tuple(layout)
        if not grads:
            return
        if len(set(zip(map(_device_of, grads), map(_dtype_of, grads), strict=True))) > 1:
            grads = [g.float().cpu() for g in grads]
        zero = torch.cat(grads) == 0
        if key != self.layout or self._streak is None or self._streak.device != zero.device:
            self.layout = key
            self._streak = torch.zeros(zero.shape, dtype=torch.int32, device=zero.device)
            self.streak_passes = 0
        self._streak = (self._streak + 1) * zero
        self.streak_passes += 1

    def streaks(self) -> dict[str, list[int]]:
        """Per 1-D parameter, each element's count of consecutive zero-gradient passes."""
        if self._streak is None:
            return {}
        values: list[int] = self._streak.tolist()
        out: dict[str, list[int]] = {}
        start = 0
        for name, size in self.layout:
            out[name] = values[start : start + size]
            start += size
        return out
