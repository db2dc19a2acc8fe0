"""``Shadow``: what the reference remembers about an optimizer's state between checked steps.

At every checked step the reference starts from the optimizer's own state (its seed), advances
it with the documented rule and compares the optimizer's state after the step with its own.
Between steps it remembers only what it needs to explain a failure and to notice a change made
outside ``step()``: which state tensors it saw after the last step (their identity and version
counter), since which step an entry has not been updated, and since when a group's lr is 0.
It holds the parameters weakly, so it keeps no model alive.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from .arrays import Pool

__all__ = ["Shadow"]


class Shadow:
    """The reference's memory of an optimizer's state across consecutive checks.

    Pass one to :func:`gradscope.check_step` to check a run step by step with messages that
    name the step an entry dates from; :func:`gradscope.verify_optimizer` keeps its own
    (``verifier.shadow``). ``steps`` counts the steps checked with it.

    >>> import torch, gradscope
    >>> net = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    >>> shadow = gradscope.Shadow()
    >>> for _ in range(3):
    ...     opt.zero_grad()
    ...     net(torch.ones(1, 3)).sum().backward()
    ...     with gradscope.check_step(opt, params=net, shadow=shadow) as report:
    ...         opt.step()
    >>> shadow.steps, report.step, report.ok
    (3, 2, True)
    """

    def __init__(self) -> None:
        self.steps = 0
        self._after: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._stale: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._zero_lr: dict[tuple[int, int], int] = {}
        self._pools: weakref.WeakKeyDictionary[object, Pool] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<gradscope.Shadow: {self.steps} steps checked>"

    def pool(self, optimizer: object) -> Pool:
        """The buffers reused across this optimizer's checked steps (see ``arrays.Pool``)."""
        pool = self._pools.get(optimizer)
        if pool is None:
            pool = self._pools[optimizer] = Pool()
        return pool

    def changed_between(self, param: Tensor, before: dict[str, tuple[int, int]]) -> list[str]:
        """State entries of ``param`` replaced or modified since the end of the last check.

        ``before`` maps entry -> (id, version counter) of the state tensors just before this
        step. An entry replaced by another tensor (``load_state_dict``) or changed in place
        outside ``step()`` is named; the reference then starts from the new value.
        """
        seen: dict[str, tuple[int, int]] | None = self._after.get(param)  # type: ignore[no-untyped-call]
        if not seen:
            return []
        out = []
        for key, (ident, version) in before.items():
            old = seen.get(key)
            if old is None:
                continue
            if old[0] != ident:
                out.append(f"{key} was replaced by another tensor")
            elif old[1] != version:
                out.append(f"{key} was changed in place")
        return out

    def record(self, param: Tensor, state: dict[str, Any]) -> None:
        """Remember the state tensors of ``param`` as the step left them."""
        self._after[param] = {
            k: (id(v), v._version) for k, v in state.items() if isinstance(v, torch.Tensor)
        }

    def unchanged_since(self, param: Tensor, entry: str, step: int) -> int:
        """The step an entry found not updated at ``step`` dates from (-1: before any check).

        Found not updated at consecutive checks, it dates from the step before the first of
        them.
        """
        streaks: dict[str, tuple[int, int]] = self._stale.setdefault(param, {})  # type: ignore[no-untyped-call]
        date, last = streaks.get(entry, (step - 1, step - 2))
        if last != step - 1:
            date = step - 1
        streaks[entry] = (date, step)
        return date

    def zero_lr_since(self, key: tuple[int, int], step: int, zero: bool) -> int | None:
        """The first step of the current run of lr == 0 for a group, or None if lr is not 0."""
        if not zero:
            self._zero_lr.pop(key, None)
            return None
        return self._zero_lr.setdefault(key, step)
