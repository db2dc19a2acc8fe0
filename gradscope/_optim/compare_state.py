"""After a step: compare the optimizer's state entries with the ones the rule expected.

The expected tensors become (expected - actual) in place, their maxima join the step's one
host sync, and each entry gets a verdict: missing, not updated (the same tensor, its version
counter unchanged), still all zeros, off by a named mistake, or a plain mismatch; scalar
entries (``step``, ``mu_product``) are compared as numbers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._distributed.shards import local_shard
from .batch import Batch, Target, grad_of, rule_input, shaped
from .diagnose import explain_state, state_hint
from .shadow import Shadow
from .step_report import FAIL, OK, StateCheck
from .tolerance import bound, real_dtype

__all__ = ["mismatch", "spread", "state_checks", "state_sums"]

_MISSING = (
    "is missing after the step (the rule keeps it): was it computed but never stored in "
    "optimizer.state[p]?"
)


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
    if not (check_state and batch.state_checked):  # pragma: no mutate
        # (with `or`, differences nobody reads: update_of recovers the update either way)
        return entries, scalar_tensors
    keys = sorted({k for s in batch.state for k, v in s.items() if isinstance(v, Tensor)})
    for key in keys:
        expected, actual = [], []
        for i, target in enumerate(batch.targets):
            value = optimizer.state.get(target.tensor, {}).get(key)
            want = batch.state[i].get(key)
            if isinstance(want, Tensor) and _matches(value, target, want):
                assert isinstance(value, Tensor)
                window = target.window
                got = shaped(rule_input(value, batch.compute, window), want)  # pragma: no mutate
                # (compute only widens (b)float16 to float32, exactly; torch promotes alike)
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
                missing = torch.tensor(math.nan, dtype=torch.float64)  # pragma: no mutate
                scalar_tensors.append(missing)  # (a NaN in any dtype: stack promotes to float64)
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
    out = torch.full((len(present),), math.nan, dtype=values.dtype, device=values.device)
    index = [i for i, p in enumerate(present) if p]
    if index:
        out[index] = values
    return out


def mismatch(expected: Tensor, actual: Tensor) -> Tensor:
    """|expected - actual|, 0 where both are the same Inf or both NaN (the rule predicted it)."""
    same = (expected == actual) | (expected.isnan() & actual.isnan())
    return torch.where(same, 0.0, (expected - actual).abs())


def _not_updated(batch: Batch, target: Target, key: str, value: Tensor) -> bool:
    """Whether the step left a state tensor untouched: the same tensor, its version unchanged.

    torch's fused kernels do not bump version counters, so for them this says nothing.
    """
    if batch.fused or key not in target.state_versions:
        return False
    return target.state_versions[key] == (id(value), value._version)


def state_checks(
    batch: Batch,
    i: int,
    numbers: dict[str, list[float]],
    entries: dict[str, Tensor | None],
    scalars: object,
    shadow: Shadow,
    step: int,
    optimizer: torch.optim.Optimizer,
) -> list[StateCheck]:
    """The verdict on each state entry of target ``i``, in key order (``scalars``: the scalar
    entries' values as read after the step, in the order :func:`state_sums` read them)."""
    out = []
    for key, want in sorted(batch.state[i].items()):
        if not isinstance(want, Tensor):
            actual = next(scalars)  # type: ignore[call-overload]
            out.append(_scalar_check(batch, i, key, float(want), actual))
            continue
        got = entries.get(key)
        if got is None:
            out.append(StateCheck(key, FAIL, reason=_MISSING))
            continue
        gap = numbers[f"diff:{key}"][i]
        kept = batch.odd_state.get(i, {}).get(key)
        if kept is not None:  # the rule predicts a NaN or Inf somewhere: where it does, a match
            gap = float(mismatch(kept, got).max())
        new, old = numbers[f"new:{key}"][i], numbers.get(f"old:{key}")
        scale = new + (old[i] if old is not None else 0.0)
        eps = max(batch.eps, torch.finfo(real_dtype(batch.dtype)).eps)
        tol = bound(batch.dtype, eps, scale)
        if f"err:{key}" in numbers:
            tol += bound(batch.dtype, eps, numbers[f"err:{key}"][i])
        if batch.user_error is not None:
            tol += bound(batch.dtype, 1.0, batch.user_error[i])
        if gap <= tol:
            out.append(StateCheck(key, OK, gap, tol))
        else:
            reason = _failure(batch, i, key, got, new, shadow, step, optimizer)
            out.append(StateCheck(key, FAIL, gap, tol, reason))
    return out


def _failure(
    batch: Batch,
    i: int,
    key: str,
    got: Tensor,
    reaches: float,
    shadow: Shadow,
    step: int,
    optimizer: torch.optim.Optimizer,
) -> str:
    """Why a state entry is off: left alone, still all zeros, or named by its mistake."""
    target = batch.targets[i]
    if _not_updated(batch, target, key, optimizer.state[target.tensor][key]):
        date = shadow.unchanged_since(target.tensor, key, step)
        if date >= 0:
            since = f"from step {date}"
        else:
            since = "from before this step" if step == 0 else "from before step 0"
        return f"was not updated: it still equals the value {since}"
    all_zero = not bool(got.count_nonzero() > 0)
    if all_zero and reaches > 0:  # pragma: no mutate
        # (>= 0: a rule's all-zero entry matches an all-zero one, gap 0, and never gets here)
        return (
            f"is still all zeros after the step (the rule's value reaches {reaches:.3g}): was it "
            f"computed but never written back to optimizer.state[p]?"
        )
    diff = batch.state[i][key]
    assert isinstance(diff, Tensor)  # expected - actual, after the in-place subtraction
    # expected param = actual + (expected - actual); before = expected - update
    before = after_value(batch, i) + batch.expected[i] - batch.update_of(i)
    named = explain_state(batch.rule.function, key, batch.hyper, -diff, grad_of(batch, i), before)
    hint = named or state_hint(key)
    return f"does not match the rule: {hint}" if hint else "does not match the rule"


def after_value(batch: Batch, i: int) -> Tensor:
    """The parameter's value now (window, compute dtype): expected minus the difference."""
    target = batch.targets[i]
    window = target.window
    now = rule_input(target.tensor, batch.compute, window)  # pragma: no mutate
    # (compute only widens (b)float16 to float32, exactly; torch promotes alike where used)
    return shaped(now, batch.expected[i])


def _scalar_check(batch: Batch, i: int, key: str, want: float, actual: float) -> StateCheck:
    old = batch.old_scalars[i].get(key)
    if math.isnan(actual):
        return StateCheck(key, FAIL, reason=_MISSING)
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
