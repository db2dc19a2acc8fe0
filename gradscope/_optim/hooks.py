"""Plumbing shared by check_step and verify_optimizer: arguments, and nested step() calls.

An optimizer subclass whose ``step()`` calls ``super().step()`` runs torch's step hooks twice
when the parent class's ``step`` is wrapped too (torch wraps a class's ``step`` the first time
an instance of it is made, so it depends on what else was created before). Only the outermost
call of a step is a step: :func:`outermost` tells them apart by the step wrappers on the stack.
"""

from __future__ import annotations

import sys
from types import CodeType
from typing import Any

import torch
from torch import nn

from .._errors import GradscopeError
from .._naming import ParamNames, ParamsLike, describe, named_parameters, reject_meta
from .references import Rule, builtin_names, builtin_reference, user_rule

__all__ = ["Inputs", "grads_after_closure", "outermost", "resolve_inputs"]


def _step_wrapper_code() -> CodeType | None:
    """The code object of torch's step wrapper (the one that runs the step hooks)."""
    wrap = getattr(torch.optim.Optimizer, "profile_hook_step", None)
    if wrap is None:
        return None
    probe = wrap(lambda *args, **kwargs: None)
    return getattr(probe, "__code__", None)


_STEP_WRAPPER = _step_wrapper_code()


def outermost(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the step hook being run belongs to the outermost ``step()`` of ``optimizer``."""
    if _STEP_WRAPPER is None:
        return True
    running = 0
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _STEP_WRAPPER and frame.f_locals.get("self") is optimizer:
            running += 1
            if running > 1:
                return False
        frame = frame.f_back  # type: ignore[assignment]
    return True


class Inputs:
    """The validated arguments of check_step and verify_optimizer."""

    def __init__(
        self,
        optimizers: list[torch.optim.Optimizer],
        names: ParamNames | None,
        rules: list[Rule | None],
    ) -> None:
        self.optimizers = optimizers
        self.names = names
        self.rules = rules

    @property
    def label(self) -> str:
        return " + ".join(type(o).__name__ for o in self.optimizers)


def _one(optimizer: object, caller: str) -> torch.optim.Optimizer:
    if not isinstance(optimizer, torch.optim.Optimizer):
        hint = (
            "; that is the model: pass the optimizer first and the model as params="
            if isinstance(optimizer, nn.Module)
            else ""
        )
        raise GradscopeError(
            f"{caller}() takes a torch.optim.Optimizer (or a list of them), not "
            f"{describe(optimizer)}{hint} (e.g. {caller}(optimizer, params=net))"
        )
    if not any(len(group["params"]) for group in optimizer.param_groups):
        raise GradscopeError(
            f"{caller}(): {type(optimizer).__name__} has no parameters in any param group, so "
            f"there is no step to check; build it with the model's parameters, "
            f"e.g. torch.optim.SGD(net.parameters(), lr=0.01)"
        )
    return optimizer


def resolve_inputs(
    optimizer: object,
    params: ParamsLike | None,
    reference: Any,
    *,
    values: bool,
    caller: str,
) -> Inputs:
    """Validate the arguments shared by check_step and verify_optimizer.

    Without a reference rule (built in or ``reference=``) the values cannot be checked, and
    that is an error unless the caller asked for structural checks only (``values=False``).
    """
    if isinstance(optimizer, (list, tuple)):
        if not optimizer:
            raise GradscopeError(f"{caller}() got an empty list of optimizers; pass at least one")
        optimizers = [_one(o, caller) for o in optimizer]
        if len({id(o) for o in optimizers}) != len(optimizers):
            raise GradscopeError(f"{caller}() got the same optimizer twice in its list")
    else:
        optimizers = [_one(optimizer, caller)]
    if not isinstance(values, bool):
        raise GradscopeError(
            f"{caller}(values={values!r}): pass True (check every value against the "
            f"reference rule) or False (structural checks only)"
        )
    if reference is not None and not callable(reference):
        raise GradscopeError(
            f"{caller}(reference=...) takes a function (param, grad, state, group) -> new "
            f"param, not {describe(reference)}"
        )
    names = None if params is None else named_parameters(params)
    for opt in optimizers:
        tensors = {
            f"group{g}.param{i}": t
            for g, group in enumerate(opt.param_groups)
            for i, t in enumerate(group["params"])
        }
        reject_meta(tensors, f"{caller}()")
    rules: list[Rule | None] = []
    for opt in optimizers:
        if not values:
            rules.append(None)
        elif reference is not None:
            rules.append(user_rule(reference))
        else:
            rule = builtin_reference(opt)
            if rule is None:
                raise GradscopeError(_no_reference(type(opt).__name__, caller))
            rules.append(rule)
    return Inputs(optimizers, names, rules)


def _no_reference(name: str, caller: str) -> str:
    return (
        f"{caller}(): there is no built-in reference rule for {name}, so its steps cannot be "
        f"checked (built in: {builtin_names()} and their subclasses). Pass "
        f"reference=rule, a function rule(param, grad, state, group) that returns the new "
        f"value of param, or (new value, new state) to check the state too (the README's "
        f"'Checking any optimizer' has Lion as an example); or pass values=False for "
        f"structural checks only"
    )


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
