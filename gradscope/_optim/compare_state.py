"""After a step: compare the optimizer's state entries with the ones the rule expected.

The expected tensors become (expected - actual) in place, their maxima join the step's one
host sync, and each entry gets a verdict: missing, not updated (the same tensor, its version
counter unchanged), still all zeros, off by a named mistake, or a plain mismatch; scalar
entries (``step``, ``mu_product``) are compared as numbers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._distributed.shards import local_shard
from .batch import Batch, Target, grad_of, rule_input, shaped
from .diagnose import explain_state, state_hint
from .shadow import Shadow
from .step_report import FAIL, OK, StateCheck
from .tolerance import bound, real_dtype

__all__ = ["spread", "state_checks", "state_sums"]


def state_sums(
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    pending: dict[str, tuple[list[Tensor], list[bool] | None]],
    check_state: bool,
) -> tuple[list[dict[str, Tensor | None]], list[Tensor]]:
    """Read the optimizer's state after the step; its differences go into ``pending``.

    The expected state tensors become (expected - actual) in place; ``entries`` keeps the
    optimizer's tensors (window, compute dtype) to explain a failure.
    """
    entries: list[dict[str, Tensor | None]] = [{} for _ in batch.targets]
    scalar_tensors: list[Tensor] = []
    if not (check_state and batch.state_checked):
        return entries, scalar_tensors
    keys = sorted({k for s in batch.state for k, v in s.items() if isinstance(v, Tensor)})
    for key in keys:
        expected, actual = [], []
        for i, target in enumerate(batch.targets):
            value = optimizer.state.get(target.tensor, {}).get(key)
            want = batch.state[i].get(key)
            if isinstance(want, Tensor) and _matches(value, target, want):
                assert isinstance(value, Tensor)
                got = shaped(rule_input(value, batch.compute, target.window), want)
                entries[i][key] = got
                expected.append(want)
                actual.append(got)
            else:
                entries[i][key] = None
        if actual:
            torch._foreach_sub_(expected, actual)
            pending[f"diff:{key}"] = (expected, [e[key] is not None for e in entries])
    for i, target in enumerate(batch.targets):
        state = optimizer.state.get(target.tensor, {})
        for key, want in sorted(batch.state[i].items()):
            if isinstance(want, Tensor):
                continue
            value = state.get(key)
            if isinstance(value, Tensor) and value.numel() == 1:
                scalar_tensors.append(value.detach().reshape(()).double().cpu())
            elif isinstance(value, (int, float)):
                scalar_tensors.append(torch.tensor(float(value), dtype=torch.float64))
            else:
                scalar_tensors.append(torch.tensor(float("nan"), dtype=torch.float64))
    return entries, scalar_tensors


def _matches(value: object, target: Target, want: Tensor) -> bool:
    """Whether the optimizer's entry can be compared with the expected one."""
    if not isinstance(value, Tensor) or value.is_sparse:
        return False
    if target.window is not None:
        return value.shape == target.tensor.shape
    local = local_shard(value)  # FSDP2: the reference ran on this rank's shard
    return local.numel() * (2 if local.is_complex() else 1) == want.numel()


def spread(values: Tensor, present: list[bool]) -> Tensor:
    """``values`` (one per present entry) laid out per target, NaN where the entry is missing."""
    out = torch.full((len(present),), float("nan"), dtype=values.dtype, device=values.device)
    index = [i for i, p in enumerate(present) if p]
    if index:
        out[torch.tensor(index, device=values.device)] = values
    return out


def _not_updated(batch: Batch, target: Target, key: str, optimizer_state: dict[str, Any]) -> bool:
    """Whether the step left a state tensor untouched: the same tensor, its version unchanged.

    torch's fused kernels do not bump version counters, so for them this says nothing.
    """
    if batch.fused or key not in target.state_versions:
        return False
    value = optimizer_state.get(key)
    if not isinstance(value, Tensor):
        return False
    return target.state_versions[key] == (id(value), value._version)


def state_checks(
    batch: Batch,
    i: int,
    numbers: dict[str, list[float]],
    entries: dict[str, Tensor | None],
    scalars: object,
    shadow: Shadow | None,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[StateCheck]:
    target = batch.targets[i]
    out = []
    for key, want in sorted(batch.state[i].items()):
        if not isinstance(want, Tensor):
            actual = next(scalars)  # type: ignore[call-overload]
            out.append(_scalar_check(batch, i, key, float(want), actual))
            continue
        got = entries.get(key)
        if got is None:
            reason = (
                "is missing after the step (the rule keeps it): was it computed but never "
                "stored in optimizer.state[p]?"
            )
            out.append(StateCheck(key, FAIL, reason=reason))
            continue
        gap = numbers[f"diff:{key}"][i]
        kept = batch.odd_state.get(i, {}).get(key)
        if math.isnan(gap) and kept is not None:  # a NaN or Inf the rule predicts is a match
            same = (kept == got) | (kept.isnan() & got.isnan())
            gap = float(torch.where(same, 0.0, (kept - got).abs()).max())
        scale = numbers[f"new:{key}"][i] + numbers.get(f"old:{key}", [0.0] * (i + 1))[i]
        eps = max(batch.eps, torch.finfo(real_dtype(batch.dtype)).eps)
        tol = bound(batch.dtype, eps, scale)
        if f"err:{key}" in numbers:
            tol += bound(batch.dtype, eps, numbers[f"err:{key}"][i])
        if batch.user_error is not None:
            tol += bound(batch.dtype, 1.0, batch.user_error[i])
        if gap <= tol:
            out.append(StateCheck(key, OK, gap, tol))
            continue
        state = {} if optimizer is None else optimizer.state.get(target.tensor, {})
        if _not_updated(batch, target, key, state):
            date = -1 if shadow is None else shadow.unchanged_since(target.tensor, key, step)
            since = f"from step {date}" if date >= 0 else "from before this step"
            reason = f"was not updated: it still equals the value {since}"
        elif not bool(got.count_nonzero() > 0) and numbers[f"new:{key}"][i] > 0:
            reason = (
                f"is still all zeros after the step (the rule's value reaches "
                f"{numbers[f'new:{key}'][i]:.3g}): was it computed but never written back to "
                f"optimizer.state[p]?"
            )
        else:
            reason = "does not match the rule"
            diff = batch.state[i][key]
            assert isinstance(diff, Tensor)  # expected - actual, after the in-place subtraction
            # expected param = actual + (expected - actual); before = expected - update
            before = after_value(batch, i) + batch.expected[i] - batch.update_of(i)
            named = explain_state(
                batch.rule.function, key, batch.hyper, -diff, grad_of(batch, i), before
            )
            hint = named or state_hint(key)
            if hint:
                reason += f": {hint}"
        out.append(StateCheck(key, FAIL, gap, tol, reason))
    return out


def after_value(batch: Batch, i: int) -> Tensor:
    """The parameter's value now (window, compute dtype): expected minus the difference."""
    target = batch.targets[i]
    return shaped(rule_input(target.tensor, batch.compute, target.window), batch.expected[i])


def _scalar_check(batch: Batch, i: int, key: str, want: float, actual: float) -> StateCheck:
    old = batch.old_scalars[i].get(key)
    if math.isnan(actual):
        reason = (
            "is missing after the step (the rule keeps it): was it computed but never stored "
            "in optimizer.state[p]?"
        )
        return StateCheck(key, FAIL, reason=reason)
    gap = abs(actual - want)
    # torch keeps scalars in float32 (down to subnormals: NAdam's mu_product reaches 1e-40)
    eps = max(batch.eps, torch.finfo(torch.float32).eps)
    tol = bound(torch.float32, eps, abs(want) + abs(old or 0))
    if key == "step":
        tol = 0.5
    if gap <= tol:
        return StateCheck(key, OK, gap, tol)
    if key == "step" and actual == want - 1:
        reason = f"was not incremented: it is still {actual:g} (the rule expects {want:g})"
    else:
        reason = f"is {actual:.7g}, the rule expects {want:.7g}"
    return StateCheck(key, FAIL, gap, tol, reason)
