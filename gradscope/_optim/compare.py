"""Snapshot an optimizer before a step and compare the parameters after it with a reference.

The snapshot copies, for every parameter in every param group, its value, its gradient and the
optimizer's state for it (momentum buffers, moments, step count), plus each group's
hyperparameters. It holds the live parameters only until :func:`compare` has run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._errors import GradscopeError
from .._naming import ParamNames, describe
from .references import Reference
from .step_report import FAIL, OK, SKIPPED, UNCHECKED, ParamCheck, StepReport
from .tolerance import FACTOR, compute_dtype, tolerance

__all__ = ["Snapshot", "compare", "grads_after_closure", "take_snapshot"]


@dataclass
class _Entry:
    name: str
    group: int | None  # None: a parameter with a gradient that is in no param group
    tensor: Tensor
    before: Tensor
    grad: Tensor | None
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class Snapshot:
    entries: list[_Entry]
    groups: list[dict[str, Any]]
    grads_from_closure: bool = False


def _copy(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    return copy.deepcopy(value)


def _grad(tensor: Tensor) -> Tensor | None:
    return None if tensor.grad is None else tensor.grad.detach().clone()


def take_snapshot(
    optimizer: torch.optim.Optimizer, names: ParamNames | None, *, with_state: bool
) -> Snapshot:
    """Copy every parameter, gradient and (if ``with_state``) optimizer state before a step."""
    name_of = {} if names is None else {id(t): n for n, t in names.params.items()}
    entries: list[_Entry] = []
    groups: list[dict[str, Any]] = []
    in_groups: set[int] = set()
    for g, group in enumerate(optimizer.param_groups):
        groups.append({k: _copy(v) for k, v in group.items() if k != "params"})
        for i, tensor in enumerate(group["params"]):
            in_groups.add(id(tensor))
            state = optimizer.state.get(tensor, {}) if with_state else {}
            entries.append(
                _Entry(
                    name=name_of.get(id(tensor), f"group{g}.param{i}"),
                    group=g,
                    tensor=tensor,
                    before=tensor.detach().clone(),
                    grad=_grad(tensor),
                    state={k: _copy(v) for k, v in state.items()},
                )
            )
    if names is not None:
        for name, tensor in names.params.items():
            if id(tensor) not in in_groups and tensor.grad is not None:
                before = tensor.detach().clone()
                entries.append(_Entry(name, None, tensor, before, _grad(tensor)))
    return Snapshot(entries, groups)


def grads_after_closure(
    snapshot: Snapshot, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """For ``step(closure)``: new step arguments whose closure re-reads the gradients it made.

    The closure runs backward inside the step, so the gradients the step uses exist only after
    its first call. They are read right then: after the step they may be gone or changed
    (torch's foreach SGD with Nesterov adds the momentum to ``p.grad`` in place). ``args``
    holds the optimizer first, as a step pre-hook receives it. None when there is no closure.
    """
    if len(args) > 1 and args[1] is not None:
        closure, rest = args[1], None
    elif kwargs.get("closure") is not None:
        closure, rest = kwargs["closure"], kwargs
    else:
        return None

    def read_grads_after(*a: Any, **kw: Any) -> Any:
        result = closure(*a, **kw)
        if not snapshot.grads_from_closure:
            snapshot.grads_from_closure = True
            for entry in snapshot.entries:
                entry.grad = _grad(entry.tensor)
        return result

    if rest is None:
        return (args[0], read_grads_after, *args[2:]), kwargs
    return args, {**rest, "closure": read_grads_after}


def _num(value: Any) -> float | None:
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value.item())
    return float(value) if isinstance(value, (int, float)) else None


def _real(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in the reference's dtype; complex tensors as real views, as torch.optim treats them."""
    if t.is_sparse:
        t = t.to_dense()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.to(dtype) if t.is_floating_point() else t


def _same(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if a.is_complex() or b.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def _expected(
    rule: Reference,
    rule_name: str,
    entry: _Entry,
    group: dict[str, Any],
    nudge: tuple[float, float] = (0.0, 0.0),
) -> Tensor:
    assert entry.grad is not None
    dtype = compute_dtype(entry.before.dtype)
    param = _real(entry.before, dtype)
    grad = _real(entry.grad, dtype)
    if nudge != (0.0, 0.0):
        param = param * (1 + nudge[0])
        grad = grad * (1 + nudge[1])
    state = {k: _real(v, dtype) if isinstance(v, Tensor) else v for k, v in entry.state.items()}
    where = f"parameter {entry.name!r} ({describe(entry.before)})"
    try:
        out = rule(param, grad, state, dict(group))
    except Exception as err:
        raise GradscopeError(
            f"reference={rule_name} raised {type(err).__name__}: {err} for {where}; it is called "
            f"as reference(param, grad, state, group) and must return the new value of param"
        ) from err
    if not isinstance(out, Tensor):
        raise GradscopeError(
            f"reference={rule_name} returned {describe(out)} for {where}; it must return a "
            f"tensor: the new value of the parameter"
        )
    if out.shape != param.shape:
        raise GradscopeError(
            f"reference={rule_name} returned a tensor of shape {tuple(out.shape)} for {where}, "
            f"whose value has shape {tuple(param.shape)}; return the parameter's new value, "
            f"not the update summed or reshaped"
        )
    if not (out.is_floating_point() or out.is_complex()):
        raise GradscopeError(
            f"reference={rule_name} returned a {out.dtype} tensor for {where}; "
            f"return a floating-point tensor"
        )
    return out.detach().to(dtype)


def _sensitivity(
    rule: Reference, rule_name: str, entry: _Entry, group: dict[str, Any], expected: Tensor
) -> float:
    """How far the reference moves when its param or grad moves by one rounding error.

    Most updates are well conditioned and this is about ``eps * |update|``. Some are not: with
    L2 weight decay ``grad + wd * p`` can cancel to near Adam's ``eps``, where ``g / (|g| + eps)``
    turns a one-ulp difference in how torch rounds ``g`` into a 1e-4 relative change of the
    update (seen on LeNet, Adam(weight_decay=0.01), first step). The tolerance must allow it.
    """
    eps = torch.finfo(expected.dtype).eps
    worst = 0.0
    for nudge in ((eps, 0.0), (0.0, eps)):
        moved = _expected(rule, rule_name, entry, group, nudge)
        gap = torch.nan_to_num((moved - expected).abs(), nan=0.0, posinf=0.0)
        worst = max(worst, float(gap.max()) if gap.numel() else 0.0)
    return worst


def _guess(actual: Tensor, expected: Tensor, lr: float | None, group: int) -> str:
    """What the user probably got wrong, from how the actual update relates to the expected."""
    a, e = actual.flatten().double(), expected.flatten().double()
    if not bool(a.isfinite().all()):
        return "it became NaN/Inf in this step (a non-finite gradient? lr far too large?)"
    ee = float(e.dot(e))
    if ee == 0:
        return f"it moved by up to {float(a.abs().max()):.3g} where the reference does not move it"
    ratio = float(a.dot(e)) / ee
    off_line = float((a - ratio * e).norm()) / ee**0.5
    if off_line > 0.05:
        return (
            "its update is not a multiple of the reference update: check the update rule "
            "(momentum, weight decay, the state it starts from)"
        )
    if abs(ratio) < 0.05:
        return "it did not move although the reference moves it: did the step skip it?"
    if abs(ratio + 1) < 0.05:
        return (
            "it moved the opposite way to the reference: a sign flip (`p += lr * grad` "
            "instead of `p -= lr * grad`, or maximize=True by mistake?)"
        )
    if abs(ratio - 2) < 0.05:
        return "it moved twice as far as the reference: was the step applied twice?"
    like = f" (as if lr were {ratio * lr:.3g} instead of {lr:g})" if lr else ""
    return (
        f"it moved {ratio:.3g} times as far as the reference{like}: does the step use the lr "
        f"of param group {group}?"
    )


def _outside(entry: _Entry) -> ParamCheck:
    reason = (
        "it has a gradient but is in no param group: it will never be updated; pass all the "
        "model's parameters to the optimizer (e.g. torch.optim.SGD(net.parameters(), ...)) "
        "or add it with optimizer.add_param_group({'params': [...]})"
    )
    changed = not _same(entry.tensor.detach(), entry.before)
    return ParamCheck(entry.name, None, changed, FAIL, reasons=(reason,))


def _check(entry: _Entry, group: dict[str, Any], ref: tuple[str, Reference] | None) -> ParamCheck:
    assert entry.group is not None
    after = entry.tensor.detach()
    changed = not _same(after, entry.before)
    lr = _num(group.get("lr"))
    if entry.grad is None:
        if changed:
            reason = (
                "it changed although its .grad was None: something other than its gradient "
                "moved it (a custom step that decays every parameter? a second optimizer?)"
            )
            return ParamCheck(entry.name, entry.group, changed, FAIL, reasons=(reason,))
        return ParamCheck(entry.name, entry.group, changed, SKIPPED)
    grad = entry.grad.coalesce().values() if entry.grad.is_sparse else entry.grad
    nonzero = bool(grad.count_nonzero() > 0)
    reasons: list[str] = []
    if lr == 0 and nonzero:
        reasons.append(
            f"lr is 0 in param group {entry.group}, so it cannot move (did a scheduler such "
            f"as LambdaLR drive lr to 0? check scheduler.get_last_lr())"
        )
    if ref is None:
        if nonzero and lr is not None and lr > 0 and not changed:
            reasons.append(
                f"it did not change although its gradient is non-zero and lr={lr:g}: "
                f"did the step skip it?"
            )
        return ParamCheck(
            entry.name, entry.group, changed, FAIL if reasons else UNCHECKED, reasons=tuple(reasons)
        )
    rule_name, rule = ref
    expected = _expected(rule, rule_name, entry, group)
    before = _real(entry.before, expected.dtype)
    moved = _real(after, expected.dtype)
    both_nan = moved.isnan() & expected.isnan()
    diff = torch.where(both_nan, 0.0, (moved - expected).abs())
    max_abs = float(diff.max()) if diff.numel() else 0.0
    update = float((expected - before).abs().max()) if diff.numel() else 0.0
    tol = tolerance(before, expected, entry.before.dtype)
    tol += FACTOR * _sensitivity(rule, rule_name, entry, group, expected)
    rel = max_abs / update if update > 0 else (0.0 if max_abs == 0 else float("inf"))
    if not max_abs <= tol and not reasons:  # NaN fails too
        reasons.append(_guess(moved - before, expected - before, lr, entry.group))
    verdict = FAIL if reasons else OK
    return ParamCheck(entry.name, entry.group, changed, verdict, max_abs, rel, tol, tuple(reasons))


def compare(
    snapshot: Snapshot, ref: tuple[str, Reference] | None, *, optimizer: str, step: int
) -> StepReport:
    """Check every parameter in ``snapshot`` against its current value; fill a report."""
    report = StepReport(optimizer=optimizer, step=step, reference=None if ref is None else ref[0])
    for entry in snapshot.entries:
        if entry.group is None:
            report.params.append(_outside(entry))
        else:
            report.params.append(_check(entry, snapshot.groups[entry.group], ref))
    grouped = [e for e in snapshot.entries if e.group is not None]
    skipped = [p.name for p in report.params if p.verdict == SKIPPED]
    if grouped and all(e.grad is None for e in grouped):
        report.problems.append(
            "every parameter in the optimizer had .grad None, so the step did nothing: was "
            "optimizer.step() called before loss.backward(), or right after zero_grad()?"
        )
    elif skipped:
        shown = ", ".join(skipped[:6]) + (
            f" and {len(skipped) - 6} more" if len(skipped) > 6 else ""
        )
        report.notes.append(
            f"{len(skipped)} parameter(s) in param groups had no gradient and were skipped "
            f"(frozen, or unused in the forward pass?): {shown}"
        )
    report._ready = True
    return report
