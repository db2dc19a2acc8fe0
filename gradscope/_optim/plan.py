"""Before a step: what it should do to every parameter and to the optimizer's state.

:func:`expect` runs just before ``optimizer.step()`` (in a step pre-hook, or right after a
closure has made the gradients), reads the live parameters, gradients and state without copying
them, and runs the reference rule: one :class:`~gradscope._optim.arrays.Many` call per param
group for the built-in rules, one call per parameter for a user's ``reference=``. It keeps the
expected new values and state, and the magnitudes the tolerance needs as device tensors, so a
step costs one host sync when it is compared (:mod:`gradscope._optim.compare`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._distributed.shards import local_shard
from .._errors import GradscopeError
from .._naming import ParamNames, describe
from .arrays import Many, Pool
from .batch import (
    MIN_WINDOW,
    SCALARS,
    Batch,
    Plan,
    Target,
    max_abs_all,
    rule_input,
    scalar_eps,
    scalars_of,
)
from .references import Rule, Update
from .shadow import Shadow
from .single import single
from .tolerance import compute_dtype, real_dtype

__all__ = ["expect", "window_parts"]


def _lr(group: dict[str, Any]) -> float | None:
    value = group.get("lr")
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value.item())
    return float(value) if isinstance(value, (int, float)) else None


def _fast(tensor: Tensor, state: dict[str, Any]) -> bool:
    """Whether a parameter can join its group's bucket (dense, real or complex, plain state)."""
    grad = tensor.grad
    if grad is None or grad.is_sparse or tensor.is_sparse or grad.shape != tensor.shape:
        return False
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return False
    for key, value in state.items():
        if key in SCALARS:
            continue
        if not isinstance(value, Tensor) or value.shape != tensor.shape or value.is_sparse:
            return False
    return True


def _windowable(tensor: Tensor, state: dict[str, Any]) -> bool:
    tensors = [tensor, tensor.grad] + [v for k, v in state.items() if k not in SCALARS]
    return all(isinstance(t, Tensor) and t.is_contiguous() for t in tensors)


def window_parts(coverage: float, step: int) -> int:
    """Into how many parts large tensors are cut at ``step`` (1: checked whole).

    The first step is always checked whole: initialisation bugs show there, everywhere.
    """
    return 1 if step == 0 else max(1, math.ceil(1 / coverage - 1e-9))


class _Window:
    """Which slice of a large tensor to check this step (all of it unless coverage < 1)."""

    def __init__(self, coverage: float, step: int) -> None:
        self.parts = window_parts(coverage, step)
        self.step = step

    def of(self, numel: int, allowed: bool) -> tuple[int, int] | None:
        if self.parts == 1 or not allowed or numel < MIN_WINDOW:
            return None
        size = math.ceil(numel / self.parts)
        start = ((self.step - 1) % self.parts) * size
        return (min(start, numel), min(start + size, numel))


def expect(
    optimizers: Sequence[torch.optim.Optimizer],
    index: int,
    names: ParamNames | None,
    rule: Rule | None,
    *,
    coverage: float = 1.0,
    step: int = 0,
    shadow: Shadow | None = None,
    pool: Pool | None = None,
) -> Plan:
    """What ``optimizers[index]``'s next step should do, from its parameters as they are now.

    ``rule`` None means structural checks only (a copy of each parameter is kept). ``names``
    names the parameters; the first optimizer's plan also lists those with a gradient in none
    of ``optimizers``. ``shadow`` notices state changed since its last check; ``pool`` lends
    the buffers for the expected values (release it once the plan has been judged).
    """
    optimizer = optimizers[index]
    name_of = {} if names is None else {id(t): n for n, t in names.params.items()}
    plan = Plan(optimizer=index)
    window = _Window(coverage, step)
    for g, group in enumerate(optimizer.param_groups):
        hyper = {k: v for k, v in group.items() if k != "params"}
        lr = _lr(hyper)
        if lr == 0:
            plan.zero_lr_groups.append(g)
        buckets: dict[tuple[Any, ...], list[tuple[Target, dict[str, Any]]]] = {}
        singles: list[tuple[Target, dict[str, Any]]] = []
        for i, tensor in enumerate(group["params"]):
            target = Target(
                name=name_of.get(id(tensor), f"group{g}.param{i}"),
                optimizer=index,
                group=g,
                tensor=tensor,
                version=tensor._version,
                has_grad=tensor.grad is not None,
                lr=lr,
                grad_version=-1 if tensor.grad is None else tensor.grad._version,
            )
            state = optimizer.state.get(tensor, {})
            target.state_versions = {
                k: (id(v), v._version) for k, v in state.items() if isinstance(v, Tensor)
            }
            if shadow is not None:
                for change in shadow.changed_between(tensor, target.state_versions):
                    plan.notes.append(
                        f"{change.replace(' was ', f' of {target.name} was ', 1)} since the "
                        f"last check (load_state_dict, or code outside step()?): the reference "
                        f"starts from its new value"
                    )
            if not target.has_grad:
                plan.skipped.append(target)
            elif rule is None:
                target.before = local_shard(tensor).detach().clone()
                grad = tensor.grad
                assert grad is not None
                values = grad.coalesce().values() if grad.is_sparse else grad
                target.grad_nonzero = bool(values.count_nonzero() > 0)
                plan.structural.append(target)
            elif rule.elementwise and _fast(tensor, state):
                numel = tensor.numel() * (2 if tensor.is_complex() else 1)  # as real numbers
                target.window = window.of(numel, _windowable(tensor, state))
                key = (
                    tensor.device,
                    tensor.dtype,
                    tuple(sorted(state)),
                    scalar_eps(state, compute_dtype(tensor.dtype)),
                )
                buckets.setdefault(key, []).append((target, state))
            else:
                singles.append((target, state))
        for members in buckets.values():
            plan.batches.extend(_builtin_batches(members, rule, hyper, pool))  # type: ignore[arg-type]
        for target, state in singles:
            assert rule is not None
            plan.batches.append(single(target, state, rule, hyper))
    if names is not None and index == 0:
        _add_outside(plan, optimizers, names, name_of)
    return plan


def _add_outside(
    plan: Plan,
    optimizers: Sequence[torch.optim.Optimizer],
    names: ParamNames,
    name_of: dict[int, str],
) -> None:
    grouped = {id(t) for opt in optimizers for group in opt.param_groups for t in group["params"]}
    for name, tensor in names.params.items():
        if id(tensor) not in grouped and tensor.grad is not None:
            target = Target(name, plan.optimizer, None, tensor, tensor._version, True)
            plan.outside.append(target)


def _builtin_batches(
    members: list[tuple[Target, dict[str, Any]]],
    rule: Rule,
    hyper: dict[str, Any],
    pool: Pool | None,
) -> list[Batch]:
    """One rule call per run of parameters that share their scalar state (normally the group)."""
    scalars = scalars_of([state for _, state in members])
    runs: dict[tuple[tuple[str, float], ...], list[int]] = {}
    for i, values in enumerate(scalars):
        runs.setdefault(tuple(sorted(values.items())), []).append(i)
    out = []
    for key, indices in runs.items():
        chosen = [members[i] for i in indices]
        out.append(_builtin_batch(chosen, dict(key), rule, hyper, pool))
    return out


def _builtin_batch(
    members: list[tuple[Target, dict[str, Any]]],
    scalars: dict[str, float],
    rule: Rule,
    hyper: dict[str, Any],
    pool: Pool | None,
) -> Batch:
    targets = [t for t, _ in members]
    first = targets[0].tensor
    dtype = real_dtype(first.dtype)
    compute = compute_dtype(first.dtype)
    params = [rule_input(t.tensor, compute, t.window) for t in targets]
    grads = [rule_input(t.tensor.grad, compute, t.window) for t in targets]  # type: ignore[arg-type]
    keys = sorted(k for k in members[0][1] if k not in SCALARS)
    old = {k: [rule_input(state[k], compute, t.window) for t, state in members] for k in keys}
    state_in: dict[str, Any] = {k: Many(v, pool) for k, v in old.items()} | scalars
    try:
        update: Update[Many] = rule.function(
            Many(params, pool), Many(grads, pool), state_in, dict(hyper)
        )
    except Exception as err:
        raise GradscopeError(
            f"the built-in {rule.text} failed on {targets[0].name!r} "
            f"({describe(first)}) with {type(err).__name__}: {err}"
        ) from err
    expected = update.param.tensors
    wanted: dict[str, list[Tensor]] = {"p": params}  # max|.| of each, in one call below
    scaled: dict[str, tuple[str, float]] = {}  # name -> (name it is a multiple of, factor)
    changes: list[Tensor] | None = None
    change: tuple[float, list[Tensor]] | None = None
    if update.change is None:
        changes = (update.param - Many(params)).tensors
        wanted["u"] = changes
    else:
        change = (update.change[0], update.change[1].tensors)
    error = update.error.get("param")
    if isinstance(error, Many):
        wanted["err"] = error.tensors
    new_state: list[dict[str, Tensor | float]] = [{} for _ in targets]
    seen = {id(t) for t in expected}
    change_entry = None
    for k, value in update.state.items():
        if isinstance(value, Many):
            original = value.tensors
            if any(id(t) in seen for t in value.tensors):  # compared in place: no aliases
                value = value.clone()
            seen.update(id(t) for t in value.tensors)
            for i, t in enumerate(value.tensors):
                new_state[i][k] = t
            wanted[f"new:{k}"] = value.tensors
            if change is not None and change[1] is original:
                scaled["u"] = (f"new:{k}", abs(change[0]))
                change_entry = k
            if k in old:
                wanted[f"old:{k}"] = old[k]
            entry_error = update.error.get(k)
            if isinstance(entry_error, Many):
                wanted[f"err:{k}"] = entry_error.tensors
        else:
            for i in range(len(targets)):
                new_state[i][k] = float(value)
    if change is not None and "u" not in scaled:
        wanted["change"] = change[1]
        scaled["u"] = ("change", abs(change[0]))
    sums = max_abs_all(wanted)
    for name, (source, factor) in scaled.items():
        sums[name] = sums[source] * factor
    eps = max(scalar_eps(members[0][1], compute, update.state), torch.finfo(dtype).eps)
    return Batch(
        targets,
        rule,
        dtype,
        compute,
        eps,
        expected,
        changes,
        new_state,
        [dict(scalars) for _ in targets],
        sums,
        hyper=hyper,
        change=change,
        change_entry=change_entry,
        fused=bool(hyper.get("fused")),
    )
