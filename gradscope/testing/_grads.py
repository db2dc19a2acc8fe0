"""Assertions about the ``.grad`` a module holds now: finite, present, absent, of sensible size."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .._errors import GradscopeError
from .._naming import ParamNames, describe
from .._naming import ParamsLike as Params
from .._watch.stats import count_nonfinite, exact_norm
from ._common import (
    Failure,
    as_names,
    fail,
    fmt_num,
    index_of,
    plural,
    select,
    shape_of,
    worst_abs,
)

__all__ = [
    "assert_all_params_have_grad",
    "assert_grad_norms",
    "assert_grads_finite",
    "assert_no_grad",
    "grad_of",
]

_NO_BACKWARD_HINT = (
    "none of the parameters has a gradient yet; call loss.backward() before asserting "
    "(or check that the loss depends on the model at all)"
)


def grad_of(param: torch.Tensor) -> torch.Tensor | None:
    """``param.grad`` as a dense tensor (sparse embedding gradients included), or None."""
    grad = param.grad
    if grad is not None and grad.layout != torch.strided:
        grad = grad.to_dense()
    return grad


def _checked(
    module: object, ignore: str | Iterable[str] | None, function: str
) -> tuple[ParamNames, dict[str, torch.Tensor]]:
    names = as_names(module, function=function)
    skipped = select(names, ignore, argument="ignore", function=function)
    return names, {n: p for n, p in names.params.items() if n not in skipped}


def _nothing_to_check(function: str, count: int, msg: str | None) -> AssertionError:
    return fail(
        function,
        f"none of the {plural(count, 'parameter')} checked has a gradient",
        [],
        _NO_BACKWARD_HINT,
        msg,
    )


def assert_grads_finite(
    module: Params,
    *,
    ignore: str | Iterable[str] | None = (),
    msg: str | None = None,
) -> None:
    """Every gradient the module holds is free of NaN and Inf.

    Parameters without a gradient are skipped, but at least one must have one.

    >>> import gradscope.testing as gt
    >>> net = torch.nn.Linear(3, 1)
    >>> net(torch.ones(2, 3)).sum().backward()
    >>> gt.assert_grads_finite(net)
    """
    __tracebackhide__ = True
    function = "assert_grads_finite"
    _, params = _checked(module, ignore, function)
    failures: list[Failure] = []
    checked = 0
    for name, param in params.items():
        grad = grad_of(param)
        if grad is None:
            continue
        checked += 1
        bad = ~torch.isfinite(grad.detach())
        if not bool(bad.any()):
            continue
        flat = grad.detach().reshape(-1)
        first = int(bad.reshape(-1).nonzero()[0, 0])
        if flat.is_complex():
            nan, inf = count_nonfinite(flat)
            counts = f"{nan} NaN, {inf} Inf"
            value: complex | float = complex(flat[first])
        else:
            nan = int(torch.isnan(flat).sum())
            pos = int((flat == math.inf).sum())
            neg = int((flat == -math.inf).sum())
            counts = f"{nan} NaN, {pos} +Inf, {neg} -Inf"
            value = float(flat[first])
        problem = (
            f"{counts} of {plural(flat.numel(), 'element')}; first at index "
            f"{index_of(grad.shape, first)} = {value}"
        )
        weights_bad = int((~torch.isfinite(param.detach())).sum())
        if weights_bad:
            problem += f" (the parameter itself holds {weights_bad} non-finite values)"
        failures.append(Failure(name, shape_of(grad), problem))
    if checked == 0:
        raise _nothing_to_check(function, len(params), msg)
    if failures:
        raise fail(
            function,
            f"{len(failures)} of {plural(checked, 'gradient')} "
            f"{'is' if len(failures) == 1 else 'are'} not finite",
            failures,
            "NaN/Inf gradients usually start in the forward pass (log or sqrt of 0, division by "
            "0, exp overflow) or after a too-large step; gradscope.graph(loss, params=net, "
            "grads=True).first_nonfinite names the op that produced the first one",
            msg,
        )


def assert_all_params_have_grad(
    module: Params,
    *,
    ignore: str | Iterable[str] | None = (),
    allow_zero: bool = False,
    msg: str | None = None,
) -> None:
    """Every trainable parameter (``requires_grad=True``) got a gradient, by default non-zero.

    Names the parameters not connected to the loss; ``ignore=`` takes names or globs of the
    ones unused on purpose, ``allow_zero=True`` accepts an all-zero gradient.

    >>> import gradscope.testing as gt
    >>> net = torch.nn.Linear(3, 1)
    >>> net(torch.ones(2, 3)).sum().backward()
    >>> gt.assert_all_params_have_grad(net)
    """
    __tracebackhide__ = True
    function = "assert_all_params_have_grad"
    _, params = _checked(module, ignore, function)
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    failures: list[Failure] = []
    missing = zero = 0
    for name, param in trainable.items():
        grad = grad_of(param)
        if grad is None:
            missing += 1
            failures.append(Failure(name, shape_of(param), "no gradient (.grad is None)"))
        elif not allow_zero and not bool(grad.detach().ne(0).any()):
            zero += 1
            failures.append(
                Failure(
                    name,
                    shape_of(param),
                    f"gradient is all zeros ({plural(grad.numel(), 'element')})",
                )
            )
    if not failures:
        return
    hints = []
    if missing == len(trainable):
        hints.append(_NO_BACKWARD_HINT)
    elif missing:
        hints.append(
            "a parameter without a gradient is not connected to the loss: forward() does not "
            "use it, its output is .detach()ed or computed under torch.no_grad(), or it only "
            "feeds an output the loss ignores; pass ignore=[...] for ones unused on purpose"
        )
    if zero:
        hints.append(
            "an all-zero gradient usually means dead ReLUs, a multiplication by zero, or a "
            "parameter reset by zero_grad(set_to_none=False) and never reached; pass "
            "allow_zero=True if that is expected"
        )
    raise fail(
        function,
        f"{len(failures)} of {plural(len(trainable), 'trainable parameter')} "
        f"{'has' if len(failures) == 1 else 'have'} no usable gradient "
        f"({missing} without .grad, {zero} all zeros)",
        failures,
        "; ".join(hints),
        msg,
    )


def _bound(value: object, argument: str, function: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GradscopeError(f"{function}: {argument}= takes a number, not {describe(value)}")
    if math.isnan(value) or value < 0:
        raise GradscopeError(
            f"{function}: {argument}={value} is not a valid gradient norm; norms are >= 0"
        )
    return float(value)


def _norm(grad: torch.Tensor) -> float:
    # accumulated in float64 so that a norm over millions of float16/bfloat16 elements neither
    # overflows nor loses the small ones; complex gradients keep their imaginary part; one host
    # sync per parameter is fine in a test.
    return exact_norm(grad.detach())


def assert_grad_norms(
    module: Params,
    *,
    min: float | None = None,
    max: float | None = None,
    per_param: bool = True,
    ignore: str | Iterable[str] | None = (),
    msg: str | None = None,
) -> None:
    """Gradient L2 norms lie in ``[min, max]``: neither vanishing nor exploding.

    With ``per_param=True`` each parameter's norm is checked, otherwise the total norm over all
    of them (what ``torch.nn.utils.clip_grad_norm_`` computes). NaN norms always fail.

    >>> import gradscope.testing as gt
    >>> net = torch.nn.Linear(3, 1)
    >>> net(torch.ones(2, 3)).sum().backward()
    >>> gt.assert_grad_norms(net, min=1e-6, max=1e3)
    """
    __tracebackhide__ = True
    function = "assert_grad_norms"
    low = _bound(min, "min", function)
    high = _bound(max, "max", function)
    if low is None and high is None:
        raise GradscopeError(
            f"{function}: pass min= (vanishing), max= (exploding) or both, e.g. "
            f"{function}(net, min=1e-8, max=1e3)"
        )
    if low is not None and high is not None and low > high:
        raise GradscopeError(f"{function}: min={low} is larger than max={high}; swap them")
    _, params = _checked(module, ignore, function)
    grads = {n: g for n, p in params.items() if (g := grad_of(p)) is not None}
    if not grads:
        raise _nothing_to_check(function, len(params), msg)
    norms = {n: _norm(g) for n, g in grads.items()}
    low_hit = high_hit = False  # pragma: no mutate (None is as false: only truth is asked)

    def verdict(norm: float) -> str | None:
        nonlocal low_hit, high_hit
        if math.isnan(norm):
            high_hit = True
            lo, hi = low if low is not None else 0.0, high if high is not None else math.inf
            return f"gradient norm is nan (allowed: [{lo:g}, {hi:g}])"
        if low is not None and norm < low:
            low_hit = True
            return f"gradient norm {fmt_num(norm)} < min={min}"
        if high is not None and norm > high:
            high_hit = True
            return f"gradient norm {fmt_num(norm)} > max={max}"
        return None

    failures: list[Failure] = []
    if per_param:
        for name, grad in grads.items():
            problem = verdict(norms[name])
            if problem is not None:
                value, index = worst_abs(grad)
                failures.append(
                    Failure(
                        name,
                        shape_of(grad),
                        f"{problem}; largest |element| {fmt_num(abs(value))} at index {index} "
                        f"of {plural(grad.numel(), 'element')}",
                    )
                )
        header = f"{len(failures)} of {plural(len(grads), 'gradient norm')} outside the bounds"
    else:
        total = math.sqrt(sum(n * n for n in norms.values()))
        problem = verdict(total)
        if problem is not None:
            top = sorted(norms.items(), key=lambda kv: (not math.isnan(kv[1]), -kv[1]))
            shown = ", ".join(f"{n} {fmt_num(v)}" for n, v in top[:3])
            numel = sum(g.numel() for g in grads.values())
            failures.append(
                Failure(
                    f"total over {plural(len(grads), 'parameter')}",
                    (numel,),
                    f"{problem}; largest norms: {shown}",
                )
            )
        header = "the total gradient norm is outside the bounds"
    if not failures:
        return
    hints = []
    if low_hit:
        hints.append(
            "vanishing gradients: check the initialisation, saturating activations "
            "(sigmoid/tanh), deep stacks without residuals or normalisation, or a loss already "
            "near 0; lower min= if this size is expected"
        )
    if high_hit:
        hints.append(
            "exploding gradients: lower the learning rate, clip with "
            "torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm), or check the loss scale "
            "(sum instead of mean?); raise max= if this size is expected"
        )
    raise fail(function, header, failures, "; ".join(hints), msg)


def assert_no_grad(
    module: Params,
    names: str | Iterable[str] | None = None,
    *,
    allow_zero: bool = False,
    ignore: str | Iterable[str] | None = (),
    msg: str | None = None,
) -> None:
    """The named parameters (names or globs; all when None) have no gradient.

    For parameters that must stay out of the graph (frozen backbones, targets, EMA copies).
    ``allow_zero=True`` accepts an all-zero ``.grad``, as ``zero_grad(set_to_none=False)`` leaves.

    >>> import gradscope.testing as gt
    >>> net = torch.nn.Linear(3, 1)
    >>> net.bias.requires_grad_(False)
    Parameter containing:...
    >>> net(torch.ones(2, 3)).sum().backward()
    >>> gt.assert_no_grad(net, "bias")
    """
    __tracebackhide__ = True
    function = "assert_no_grad"
    all_names, params = _checked(module, ignore, function)
    if names is not None:
        wanted = select(all_names, names, argument="names", function=function)
        params = {n: p for n, p in params.items() if n in wanted}
    failures: list[Failure] = []
    for name, param in params.items():
        grad = grad_of(param)
        if grad is None:
            continue
        nonzero = int(grad.detach().ne(0).sum())
        if allow_zero and nonzero == 0:
            continue
        value, index = worst_abs(grad)
        failures.append(
            Failure(
                name,
                shape_of(grad),
                f"has a gradient: norm {fmt_num(_norm(grad))}, largest |element| "
                f"{fmt_num(abs(value))} at index {index}, {nonzero} of "
                f"{plural(grad.numel(), 'element')} non-zero",
            )
        )
    if failures:
        raise fail(
            function,
            f"{len(failures)} of {plural(len(params), 'parameter')} that must stay out of the "
            f"graph {'has' if len(failures) == 1 else 'have'} a gradient",
            failures,
            "keep a parameter out of the graph with param.requires_grad_(False), by using it "
            "under torch.no_grad() or by .detach()ing its output; a zero tensor left by "
            "zero_grad(set_to_none=False) passes with allow_zero=True",
            msg,
        )
