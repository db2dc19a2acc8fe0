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
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._errors import GradscopeError
from .._naming import ParamNames, describe
from .arrays import Many, Pool, max_abs
from .references import Rule, Update
from .shadow import Shadow
from .tolerance import compute_dtype, real_dtype

__all__ = [
    "SCALARS",
    "Batch",
    "Plan",
    "Target",
    "expect",
    "grads_after_closure",
    "window_parts",
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


def _as_real(t: Tensor) -> Tensor:
    if t.is_sparse:
        t = t.to_dense()
    return torch.view_as_real(t) if t.is_complex() else t


def _in(t: Tensor, dtype: torch.dtype, window: tuple[int, int] | None) -> Tensor:
    """A rule's input: real, in ``dtype``, the window only (a view when nothing converts)."""
    out = _window(_as_real(t.detach()), window)
    return out if out.dtype == dtype else out.to(dtype)


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


_ROUNDED_SCALARS = ("mu_product", "eta", "mu")


def _scalar_eps(state: dict[str, Any], dtype: torch.dtype, produced: Any = ()) -> float:
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


def _scalars(states: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
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
                target.before = tensor.detach().clone()
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
                    _scalar_eps(state, compute_dtype(tensor.dtype)),
                )
                buckets.setdefault(key, []).append((target, state))
            else:
                singles.append((target, state))
        for members in buckets.values():
            plan.batches.extend(_builtin_batches(members, rule, hyper, pool))  # type: ignore[arg-type]
        for target, state in singles:
            assert rule is not None
            plan.batches.append(_single(target, state, rule, hyper))
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
    scalars = _scalars([state for _, state in members])
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
    params = [_in(t.tensor, compute, t.window) for t in targets]
    grads = [_in(t.tensor.grad, compute, t.window) for t in targets]  # type: ignore[arg-type]
    keys = sorted(k for k in members[0][1] if k not in SCALARS)
    old = {k: [_in(state[k], compute, t.window) for t, state in members] for k in keys}
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
    sums = _max_abs_all(wanted)
    for name, (source, factor) in scaled.items():
        sums[name] = sums[source] * factor
    eps = max(_scalar_eps(members[0][1], compute, update.state), torch.finfo(dtype).eps)
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


def _max_abs_all(wanted: dict[str, list[Tensor]]) -> dict[str, Tensor]:
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


def _normalized(out: Any, rule: Rule, where: str, shape: torch.Size) -> Update[Tensor]:
    """A user rule's result as an Update, with a clear error for anything else."""
    state: dict[str, Tensor | float] | None = None
    if isinstance(out, Update):
        param, state = out.param, dict(out.state)
    elif isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        param, state = out[0], dict(out[1])
    else:
        param = out
    if not isinstance(param, Tensor):
        raise GradscopeError(
            f"reference={rule.text} returned {describe(param)} for {where}; it must return "
            f"a tensor (the new value of the parameter), or (new value, new state dict)"
        )
    if param.shape != shape:
        raise GradscopeError(
            f"reference={rule.text} returned a tensor of shape {tuple(param.shape)} for "
            f"{where}, whose value has shape {tuple(shape)}; return the parameter's new "
            f"value, not the update summed or reshaped"
        )
    if not (param.is_floating_point() or param.is_complex()):
        raise GradscopeError(
            f"reference={rule.text} returned a {param.dtype} tensor for {where}; "
            f"return a floating-point tensor"
        )
    result: Update[Tensor] = Update(param.detach(), {})
    if state is not None:
        result.state = {
            k: v.detach() if isinstance(v, Tensor) else float(v) for k, v in state.items()
        }
    return result


def _single(target: Target, state: dict[str, Any], rule: Rule, hyper: dict[str, Any]) -> Batch:
    """One parameter the group path cannot take: sparse, odd state, or a user's rule."""
    tensor = target.tensor
    dtype, compute = real_dtype(tensor.dtype), compute_dtype(tensor.dtype)
    where = f"parameter {target.name!r} ({describe(tensor)})"
    grad = tensor.grad
    assert grad is not None

    def call(nudge: tuple[float, float] = (0.0, 0.0)) -> Update[Tensor]:
        param = _in(tensor, compute, None).reshape(_shape(tensor)).clone()
        if rule.sparse and grad.is_sparse:
            g = grad.detach().coalesce().to(compute)
        else:
            g = _in(grad, compute, None).reshape(_shape(tensor)).clone()
        inputs: dict[str, Any] = {}
        for k, v in state.items():
            if rule.builtin and k in SCALARS:
                inputs[k] = float(v)
            elif isinstance(v, Tensor):
                inputs[k] = _as_real(v.detach()).to(compute).clone() if v.dim() else v.clone()
            else:
                inputs[k] = v
        if nudge != (0.0, 0.0):
            param = param * (1 + nudge[0])
            g = g * (1 + nudge[1])
        try:
            out = rule.function(param, g, inputs, dict(hyper))
        except Exception as err:
            raise GradscopeError(
                f"reference={rule.text} raised {type(err).__name__}: {err} for {where}; it is "
                f"called as reference(param, grad, state, group) and must return the new "
                f"value of param"
            ) from err
        return _normalized(out, rule, where, param.shape)

    update = call()
    before = _in(tensor, compute, None).reshape(_shape(tensor))
    expected = update.param.to(compute)
    change = expected - before
    sums = {"p": max_abs([before]), "u": max_abs([change])}
    state_checked = bool(update.state) or rule.builtin
    new_state: dict[str, Tensor | float] = {}
    for k, value in update.state.items():
        if isinstance(value, Tensor) and not (rule.builtin and k in SCALARS):
            value = value.to(compute)
            new_state[k] = value
            sums[f"new:{k}"] = max_abs([value])
            old = state.get(k)
            if isinstance(old, Tensor) and old.shape == tensor.shape:
                old_real = _as_real(old.detach()).to(compute).reshape(value.shape)
                sums[f"old:{k}"] = max_abs([old_real])
        else:
            new_state[k] = float(value)
    user_error = None
    if rule.builtin:
        error = update.error.get("param")
        if isinstance(error, Tensor):
            sums["err"] = max_abs([error])
        for k in new_state:
            entry_error = update.error.get(k)
            if isinstance(entry_error, Tensor):
                sums[f"err:{k}"] = max_abs([entry_error])
    else:
        user_error = [_sensitivity(call, update, compute)]
    scalars = _scalars([state])[0] if rule.builtin else {}
    batch = Batch(
        [target],
        rule,
        dtype,
        compute,
        max(_scalar_eps(state, compute, update.state), torch.finfo(dtype).eps),
        [expected.reshape(-1)],
        [change.reshape(-1)],
        [{k: v.reshape(-1) if isinstance(v, Tensor) else v for k, v in new_state.items()}],
        [scalars],
        sums,
        state_checked=state_checked,
        user_error=user_error,
        hyper=hyper,
    )
    return batch


def _shape(tensor: Tensor) -> torch.Size:
    return torch.view_as_real(tensor).shape if tensor.is_complex() else tensor.shape


def _sensitivity(call: Any, update: Update[Tensor], compute: torch.dtype) -> float:
    """How far a user's rule moves when its param or grad moves by one rounding error.

    Most updates are well conditioned and this is about ``eps * |update|``. Some are not: with
    L2 weight decay ``grad + wd * p`` can cancel to near Adam's ``eps``, where ``g / (|g| +
    eps)`` turns a one-ulp difference in how torch rounds ``g`` into a large relative change of
    the update. The built-in rules state this bound analytically; a user's rule is measured.
    """
    eps = torch.finfo(compute).eps
    worst = 0.0
    for nudge in ((eps, 0.0), (0.0, eps)):
        moved = call(nudge).param.to(compute)
        gap = torch.nan_to_num((moved - update.param.to(compute)).abs(), nan=0.0, posinf=0.0)
        worst = max(worst, float(gap.max()) if gap.numel() else 0.0)
    return worst


def grads_after_closure(
    on_grads: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """For ``step(closure)``: new step arguments whose closure calls ``on_grads()`` once.

    The closure runs backward inside the step, so the gradients the step uses exist only after
    its first call, and that is when the expected step is computed: after the step they may be
    gone or changed (torch's foreach SGD with Nesterov adds the momentum to ``p.grad`` in
    place). ``args`` holds the optimizer first, as a step pre-hook receives it. None when there
    is no closure.
    """
    if len(args) > 1 and args[1] is not None:
        closure, rest = args[1], None
    elif kwargs.get("closure") is not None:
        closure, rest = kwargs["closure"], kwargs
    else:
        return None
    done = False

    def closure_then_expect(*a: Any, **kw: Any) -> Any:
        nonlocal done
        result = closure(*a, **kw)
        if not done:
            done = True
            on_grads()
        return result

    if rest is None:
        return (args[0], closure_then_expect, *args[2:]), kwargs
    return args, {**rest, "closure": closure_then_expect}
