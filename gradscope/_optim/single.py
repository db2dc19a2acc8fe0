"""One parameter at a time: a user's ``reference=``, sparse gradients, or unusual state.

The rule is called with plain tensors (copies, so a user's rule may change them), its result
is validated with a clear error, and a user's rule has its sensitivity to rounding measured
by nudging its inputs by one ulp (the built-in rules state theirs analytically).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._errors import GradscopeError
from .._naming import describe
from .arrays import max_abs
from .batch import SCALARS, Batch, Target, as_real, rule_input, scalar_eps, scalars_of
from .references import Rule, Update
from .tolerance import compute_dtype, real_dtype

__all__ = ["single"]


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


def single(target: Target, state: dict[str, Any], rule: Rule, hyper: dict[str, Any]) -> Batch:
    """One parameter the group path cannot take: sparse, odd state, or a user's rule."""
    tensor = target.tensor
    dtype, compute = real_dtype(tensor.dtype), compute_dtype(tensor.dtype)
    where = f"parameter {target.name!r} ({describe(tensor)})"
    grad = tensor.grad
    assert grad is not None

    def call(nudge: tuple[float, float] = (0.0, 0.0)) -> Update[Tensor]:
        param = rule_input(tensor, compute, None).reshape(_shape(tensor)).clone()
        if rule.sparse and grad.is_sparse:
            g = grad.detach().coalesce().to(compute)
        else:
            g = rule_input(grad, compute, None).reshape(_shape(tensor)).clone()
        inputs: dict[str, Any] = {}
        for k, v in state.items():
            if rule.builtin and k in SCALARS:
                inputs[k] = float(v)
            elif isinstance(v, Tensor):
                inputs[k] = as_real(v.detach()).to(compute).clone() if v.dim() else v.clone()
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
    before = rule_input(tensor, compute, None).reshape(_shape(tensor))
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
                old_real = as_real(old.detach()).to(compute).reshape(value.shape)
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
    scalars = scalars_of([state])[0] if rule.builtin else {}
    batch = Batch(
        [target],
        rule,
        dtype,
        compute,
        max(scalar_eps(state, compute, update.state), torch.finfo(dtype).eps),
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
