"""The data a checked step carries from before it (plan) to after it (compare).

A :class:`Target` is one parameter in one step; a :class:`Batch` holds targets whose expected
values were computed together, with the magnitudes the tolerance needs; a :class:`Plan` is
everything known about one optimizer's step before it runs. Also the helpers both sides use to
read a tensor as a rule sees it (real, in the compute dtype, the checked window only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._distributed.shards import local_shard
from .arrays import max_abs
from .references import Rule

__all__ = [
    "MIN_WINDOW",
    "SCALARS",
    "Batch",
    "Plan",
    "Target",
    "as_real",
    "grad_of",
    "max_abs_all",
    "rule_input",
    "scalar_eps",
    "scalars_of",
    "shaped",
]

# State entries the built-in rules read and write as plain numbers, whatever the tensor's shape.
SCALARS = frozenset({"step", "mu_product", "eta", "mu"})

# Below this many elements a tensor is always checked whole: windows would save nothing.
MIN_WINDOW = 1 << 16


@dataclass
class Target:
    """One parameter in one checked step."""

    name: str
    optimizer: int
    group: int | None  # None: it has a gradient but sits in no checked optimizer's group
    tensor: Tensor
    version: int
    has_grad: bool
    lr: float | None = None
    window: tuple[int, int] | None = None  # the flat element range checked; None: all of it
    before: Tensor | None = None  # a copy of the value, for the structural checks
    grad_nonzero: bool = False
    grad_version: int = -1
    state_versions: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class Batch:
    """Targets whose expected values were computed together (a group's bucket, or one param)."""

    targets: list[Target]
    rule: Rule
    dtype: torch.dtype  # the parameters' (real) dtype
    compute: torch.dtype  # the dtype the rule ran in
    eps: float  # the unit roundoff the update is known to (a float32 scalar state limits it)
    expected: list[Tensor]  # after compare(): expected - actual, in place
    update: list[Tensor] | None  # expected - before; None when ``change`` gives it
    state: list[dict[str, Tensor | float]]  # expected state after the step, per target
    old_scalars: list[dict[str, float]]
    sums: dict[str, Tensor]  # per-target magnitudes on the device, one 1-D tensor each
    state_checked: bool = True
    user_error: list[float] | None = None  # a user rule's measured sensitivity (absolute)
    hyper: dict[str, Any] = field(default_factory=dict)
    change: tuple[float, list[Tensor]] | None = None  # update == factor * tensors
    change_entry: str | None = None  # the state entry ``change`` shares its tensors with
    fused: bool = False  # the optimizer's kernel does not bump version counters
    actual_state: list[dict[str, Tensor | None]] = field(default_factory=list)
    odd_state: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # non-finite, kept

    def state_of(self, i: int) -> dict[str, Tensor | float]:
        """The expected state of target ``i``, recovered after the in-place comparison."""
        out: dict[str, Tensor | float] = {}
        for key, value in self.state[i].items():
            actual = self.actual_state[i].get(key) if self.actual_state else None
            out[key] = value + actual if isinstance(value, Tensor) and actual is not None else value
        return out

    def update_of(self, i: int) -> Tensor:
        """The expected update (new value - value before) of target ``i``.

        Called after the comparison, which turned the expected state into (expected - actual)
        in place; a ``change`` that shares the tensors of a state entry is recovered from it.
        """
        if self.update is not None:
            return self.update[i]
        assert self.change is not None
        factor, tensors = self.change
        if self.change_entry is not None and self.actual_state:
            actual = self.actual_state[i].get(self.change_entry)
            if actual is not None:
                return (tensors[i] + actual) * factor
        return tensors[i] * factor


@dataclass
class Plan:
    """Everything :func:`expect` found before one step of one optimizer."""

    optimizer: int
    batches: list[Batch] = field(default_factory=list)
    structural: list[Target] = field(default_factory=list)  # values not checked
    skipped: list[Target] = field(default_factory=list)  # in a group, no gradient
    outside: list[Target] = field(default_factory=list)  # a gradient, in no group
    zero_lr_groups: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _window(tensor: Tensor, window: tuple[int, int] | None) -> Tensor:
    if window is None:
        return tensor
    return tensor.reshape(-1)[window[0] : window[1]]


def as_real(t: Tensor) -> Tensor:
    """A plain real tensor: FSDP2 (DTensor) values become this rank's shard, sparse dense."""
    t = local_shard(t)  # references run on local shards: no collective inside a check
    if t.is_sparse:
        t = t.to_dense()
    return torch.view_as_real(t) if t.is_complex() else t


def rule_input(t: Tensor, dtype: torch.dtype, window: tuple[int, int] | None) -> Tensor:
    """A rule's input: real, in ``dtype``, the window only (a view when nothing converts)."""
    out = _window(as_real(t.detach()), window)
    return out if out.dtype == dtype else out.to(dtype)


_ROUNDED_SCALARS = ("mu_product", "eta", "mu")


def scalar_eps(state: dict[str, Any], dtype: torch.dtype, produced: Any = ()) -> float:
    """The coarser of ``dtype``'s eps and that of the scalar state the update reads.

    torch keeps NAdam's ``mu_product`` and ASGD's ``eta`` and ``mu`` in float32 even for
    float64 parameters (unless float64 is the default dtype), so their update is only known to
    float32 precision. ``produced`` names the entries the rule keeps, for the first step.
    """
    eps = torch.finfo(dtype).eps
    default = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    for key in _ROUNDED_SCALARS:
        value = state.get(key)
        if isinstance(value, Tensor) and value.is_floating_point():
            eps = max(eps, torch.finfo(value.dtype).eps)
        elif key in produced:
            eps = max(eps, torch.finfo(default).eps)
    return eps


def scalars_of(states: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """The scalar entries of each state as floats, with one host sync for all of them."""
    keys = [sorted(k for k in state if k in SCALARS) for state in states]
    tensors = [
        state[k].detach().reshape(()).double().cpu()
        for state, ks in zip(states, keys, strict=True)
        for k in ks
        if isinstance(state[k], Tensor)
    ]
    values = iter(torch.stack(tensors).tolist() if tensors else [])
    out = []
    for state, ks in zip(states, keys, strict=True):
        out.append(
            {k: next(values) if isinstance(state[k], Tensor) else float(state[k]) for k in ks}
        )
    return out


def max_abs_all(wanted: dict[str, list[Tensor]]) -> dict[str, Tensor]:
    """``max_abs`` of several lists of tensors with one call (the Python per call adds up)."""
    names = list(wanted)
    every = [t for name in names for t in wanted[name]]
    found = max_abs(every)
    out, start = {}, 0
    for name in names:
        count = len(wanted[name])
        out[name] = found[start : start + count]
        start += count
    return out


def shaped(t: Tensor, like: Tensor) -> Tensor:
    return t if t.shape == like.shape else t.reshape(like.shape)


def grad_of(batch: Batch, i: int) -> Tensor | None:
    """The gradient the step used, if the step left it as it was (window, compute dtype)."""
    target = batch.targets[i]
    grad = target.tensor.grad
    if grad is None or grad._version != target.grad_version or grad.is_sparse:
        return None
    return shaped(rule_input(grad, batch.compute, target.window), batch.expected[i])
