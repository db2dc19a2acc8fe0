"""After a step: compare the parameters and the optimizer's state with what the plan expected.

One ``torch._foreach_sub`` and one max-abs pass per batch and per state entry, then a single
host sync per batch for every number the verdicts need. Verdicts, in order: a parameter
FAILs when its value is off by more than the tolerance (with a guess at the mistake, see
:mod:`gradscope._optim.diagnose`), or when a state entry is missing, not updated or off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._distributed.shards import local_shard
from .arrays import max_abs_of_differences
from .batch import Batch, Plan, Target, grad_of, rule_input, shaped
from .compare_state import mismatch, spread, state_checks, state_sums
from .diagnose import explain_update, guess
from .rules.base import flag
from .shadow import Shadow
from .step_report import FAIL, OK, SKIPPED, UNCHECKED, UNRESOLVED, ParamCheck, StateCheck
from .tolerance import bound

__all__ = ["Outcome", "judge"]


@dataclass
class Outcome:
    """The verdicts of one optimizer's step, before they go into a :class:`StepReport`."""

    params: list[ParamCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    state_checked: bool = False


def _same(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` still is ``b``: same shape, dtype and values (NaN where NaN was)."""
    a, b = local_shard(a), local_shard(b)
    if a.shape != b.shape or a.dtype != b.dtype:  # e.g. ``p.data = ...`` in the step
        return False
    if a.is_complex():  # and so is b: NaN per real and imaginary part
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def judge(
    plan: Plan,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    shadow: Shadow | None,
    check_state: bool,
    others: str,
) -> Outcome:
    """Verdicts for every parameter of ``plan`` now that the step has run.

    ``others`` names the other optimizers checked alongside (for parameters in none of them),
    "" when it was checked alone.
    """
    out = Outcome()
    checks: dict[int, ParamCheck] = {}
    for batch in plan.batches:
        verdicts = _batch(batch, optimizer, step, shadow, check_state)
        for target, check in zip(batch.targets, verdicts, strict=True):  # pragma: no mutate
            # (one verdict per target: strict= only asserts it)
            checks[id(target)] = check
        out.state_checked |= check_state and batch.state_checked
    for target in plan.structural:
        checks[id(target)] = _structural(target)
    for target in plan.skipped:
        checks[id(target)] = _skipped(target)
    order = [t for b in plan.batches for t in b.targets] + plan.structural + plan.skipped
    order.sort(key=lambda t: (t.group or 0, _position(optimizer, t)))
    out.params = [checks[id(t)] for t in order]
    out.params += [_outside(t, others) for t in plan.outside]
    grouped = [t for t in order]
    if grouped and all(not t.has_grad for t in grouped):
        out.problems.append(
            "every parameter in the optimizer had .grad None, so the step did nothing: was "
            "optimizer.step() called before loss.backward(), or right after zero_grad()?"
        )
    elif plan.skipped:
        names = [t.name for t in plan.skipped]
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        out.notes.append(
            f"{len(names)} parameter(s) in param groups had no gradient and were skipped "
            f"(frozen, or unused in the forward pass?): {shown}"
        )
    unresolved = [p for p in out.params if p.unresolved]
    if unresolved:
        out.notes.append(_unresolved_note(unresolved))
    for g in plan.zero_lr_groups:
        what = (
            "the reference expects its parameters not to move"
            if plan.batches
            else "its parameters must not move"
        )
        out.notes.append(
            f"lr is 0 in param group {g} (step 0 of a warmup, or a schedule that reached 0): {what}"
        )
    if shadow is not None:
        for target in order:
            shadow.record(target.tensor, optimizer.state.get(target.tensor, {}))
    return out


def _unresolved_note(checks: list[ParamCheck]) -> str:
    names = [p.name for p in checks]
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    first = checks[0]
    return (
        f"{len(names)} parameter(s) matched but are unresolved: the reference moves them by no "
        f"more than the tolerance (e.g. {first.name}: largest update {first.max_update:.2e}, "
        f"tolerance {first.tolerance:.2e}), so a step off by its whole size would match too "
        f"(a tiny lr or gradient; check a later step, or in float64): {shown}"
    )


def _position(optimizer: torch.optim.Optimizer, target: Target) -> int:
    assert target.group is not None  # only targets in a param group are put in order
    for i, tensor in enumerate(optimizer.param_groups[target.group]["params"]):
        if tensor is target.tensor:
            return i
    return 0  # pragma: no mutate (only a tensor the step took out of its group gets here)


def _batch(
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    step: int,
    shadow: Shadow | None,
    check_state: bool,
) -> list[ParamCheck]:
    targets = batch.targets
    after = [
        shaped(rule_input(t.tensor, batch.compute, t.window), e)  # pragma: no mutate
        # (compute only widens (b)float16 to float32, exactly; torch promotes alike where used)
        for t, e in zip(targets, batch.expected, strict=True)  # pragma: no mutate (equal length)
    ]
    # expected - actual, in place: no new memory. Where an expected value is not finite (seen
    # in its magnitudes), keep a copy: a NaN or Inf the rule also predicts is a match.
    magnitudes = {k: v.tolist() for k, v in batch.sums.items()}
    rows = zip(*magnitudes.values(), strict=True)  # pragma: no mutate (one value per target)
    odd = [not all(map(math.isfinite, row)) for row in rows]
    nan_expected = {i: batch.expected[i].clone() for i, bad in enumerate(odd) if bad}
    batch.odd_state = {
        i: {k: v.clone() for k, v in batch.state[i].items() if isinstance(v, Tensor)}
        for i, bad in enumerate(odd)
        if bad
    }
    torch._foreach_sub_(batch.expected, after)
    diff = batch.expected
    sums = dict(batch.sums)
    pending: dict[str, tuple[list[Tensor], list[bool] | None]] = {"diff": (diff, None)}
    entries, scalar_tensors = state_sums(batch, optimizer, pending, check_state)
    every = [t for tensors, _ in pending.values() for t in tensors]
    found, start = max_abs_of_differences(every), 0  # one call for every difference
    for name, (tensors, present) in pending.items():
        part = found[start : start + len(tensors)]
        start += len(tensors)
        sums[name] = part if present is None else spread(part, present)
    batch.actual_state = entries
    keys = sorted(sums)
    table = torch.stack([sums[k].double().cpu() for k in keys]).tolist()
    scalars = iter(torch.stack(scalar_tensors).tolist() if scalar_tensors else [])
    numbers = {k: row for k, row in zip(keys, table, strict=True)}  # pragma: no mutate
    # (the table has one row per key: strict= only asserts it)
    checks = []
    for i, target in enumerate(targets):
        value = _value(batch, i, numbers, after, nan_expected.get(i))
        states: list[StateCheck] = []
        if check_state and batch.state_checked:
            assert shadow is not None  # the state is checked against a shadow only
            states = state_checks(batch, i, numbers, entries[i], scalars, shadow, step, optimizer)
        reasons = list(value[3])
        reasons += [f"{s.entry} of {target.name} {s.reason}" for s in states if s.failed]
        # it matched: it moved if the reference moves it; it failed: measured from the values
        changed = bool(value[5]) if value[3] else value[4] > 0
        verdict = FAIL if reasons else OK
        within = value[4] <= value[2]  # pragma: no mutate (<= or <: never exactly equal)
        if verdict == OK and value[4] > 0 and within:  # a whole wrong step would match
            verdict = UNRESOLVED
        checks.append(
            ParamCheck(
                target.name,
                target.group,
                changed,
                verdict,
                value[0],
                value[1],
                value[2],
                tuple(reasons),
                tuple(states),
                target.optimizer,
                value[4],
            )
        )
    return checks


def _value(
    batch: Batch,
    i: int,
    numbers: dict[str, list[float]],
    after: list[Tensor],
    nan_expected: Tensor | None,
) -> tuple[float, float, float, list[str], float, bool]:
    """(max abs diff, rel diff, tolerance, reasons, max|update|, moved) for target ``i``."""
    target = batch.targets[i]
    size_p, size_u = numbers["p"][i], numbers["u"][i]
    tol = bound(batch.dtype, batch.eps, size_p + size_u)
    if "err" in numbers:
        tol += bound(batch.dtype, batch.eps, numbers["err"][i])
    if batch.user_error is not None:
        tol += bound(batch.dtype, 1.0, batch.user_error[i])
    max_abs_diff = numbers["diff"][i]
    diff = batch.expected[i]  # expected - actual, after the in-place subtraction
    if math.isnan(max_abs_diff):
        gap = diff.abs() if nan_expected is None else mismatch(nan_expected, after[i])
        max_abs_diff = float(gap.max())  # not empty: an empty tensor's max|diff| is 0, not NaN
    rel = max_abs_diff / size_u if size_u > 0 else (0.0 if max_abs_diff == 0 else math.inf)
    reasons: list[str] = []
    moved = True  # pragma: no mutate (read only after a failure, which sets it)
    if not max_abs_diff <= tol:  # NaN fails too
        update = batch.update_of(i)
        actual = update - diff  # after - before, up to rounding
        written = batch.fused or target.tensor._version != target.version
        moved = written and float(actual.abs().max()) > tol  # not empty: an empty one never fails
        before = after[i] + diff - update  # expected - update
        named = explain_update(
            batch.rule.function,
            batch.hyper,
            batch.old_scalars[i].get("step", 0.0),
            actual,
            before,
            grad_of(batch, i),
            batch.state_of(i),
            tol,
        )
        maximize = flag(batch.hyper, "maximize")
        reasons.append(named or guess(actual, update, target.lr, target.group or 0, maximize))
    return max_abs_diff, rel, tol, reasons, size_u, moved


def _structural(target: Target) -> ParamCheck:
    assert target.before is not None
    changed = not _same(target.tensor.detach(), target.before)
    reasons = []
    if target.lr == 0 and changed:
        reasons.append(
            f"it moved although lr is 0 in param group {target.group}: something other than "
            f"the lr-scaled step moved it"
        )
    if target.grad_nonzero and target.lr is not None and target.lr > 0 and not changed:
        reasons.append(
            f"it did not change although its gradient is non-zero and lr={target.lr:g}: "
            f"did the step skip it?"
        )
    verdict = FAIL if reasons else UNCHECKED
    return ParamCheck(
        target.name,
        target.group,
        changed,
        verdict,
        reasons=tuple(reasons),
        optimizer=target.optimizer,
    )


def _skipped(target: Target) -> ParamCheck:
    if target.tensor._version != target.version:
        reason = (
            "it changed although its .grad was None: something other than its gradient "
            "moved it (a custom step that decays every parameter? a second optimizer?)"
        )
        return ParamCheck(
            target.name, target.group, True, FAIL, reasons=(reason,), optimizer=target.optimizer
        )
    return ParamCheck(target.name, target.group, False, SKIPPED, optimizer=target.optimizer)


def _outside(target: Target, others: str) -> ParamCheck:
    if others:
        reason = (
            f"it has a gradient but is in none of the optimizers checked ({others}): it will "
            f"never be updated; add it to one of them"
        )
    else:
        reason = (
            "it has a gradient but is in no param group: it will never be updated; pass all "
            "the model's parameters to the optimizer (e.g. torch.optim.SGD(net.parameters(), "
            "...)) or add it with optimizer.add_param_group({'params': [...]}); if another "
            "optimizer updates it (SparseAdam for embeddings), check both: "
            "check_step([sparse_opt, dense_opt], ...)"
        )
    changed = target.tensor._version != target.version
    return ParamCheck(target.name, None, changed, FAIL, reasons=(reason,))
