"""``assert_gradcheck``: autograd's Jacobian against central finite differences, in float64.

Like ``torch.autograd.gradcheck`` (same ``eps``/``atol``/``rtol`` and the same closeness test,
``|analytical - numerical| <= atol + rtol * |numerical|``), but it casts to float64 itself, checks
a module's parameters by name, and reports which input and which element disagree.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._errors import GradscopeError
from .._naming import describe
from ._common import Failure, fail, fmt_num, index_of, plural, shape_of

__all__ = ["assert_gradcheck"]


@dataclass
class _Leaf:
    label: str
    tensor: torch.Tensor  # float64, contiguous, requires_grad


def _outputs(value: object, function: str) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        values: Sequence[object] = [value]
    elif isinstance(value, (tuple, list)):
        values = value
    else:
        raise GradscopeError(
            f"{function}: fn returned {describe(value)}; it must return a tensor or a tuple "
            "of tensors"
        )
    outs = [v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not outs:
        raise GradscopeError(f"{function}: fn returned no floating-point tensor to differentiate")
    return outs


def _prepare(
    fn: Callable[..., object], inputs: tuple[object, ...], check_params: bool, function: str
) -> tuple[Callable[..., object], list[object], list[_Leaf]]:
    wants_grad = any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs)
    args: list[object] = []
    leaves: list[_Leaf] = []
    for i, x in enumerate(inputs):
        if isinstance(x, torch.Tensor) and x.is_complex():
            raise GradscopeError(
                f"{function}: input {i} is complex ({x.dtype}); use torch.autograd.gradcheck "
                "for complex functions"
            )
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            x64 = x.detach().to(torch.float64).clone().contiguous()
            if x.requires_grad or not wants_grad:
                x64.requires_grad_(True)
                leaves.append(_Leaf(f"input {i}", x64))
            args.append(x64)
        else:
            args.append(x)
    if isinstance(fn, nn.Module):
        try:
            fn = copy.deepcopy(fn).to(torch.float64)
        except Exception as err:  # a module that cannot be copied: say so, with the cause
            raise GradscopeError(
                f"{function}: could not make a float64 copy of {type(fn).__name__} ({err}); "
                "wrap it in a function that builds it in float64"
            ) from err
        if check_params:
            for name, p in fn.named_parameters():
                if p.requires_grad:
                    leaves.append(_Leaf(f"parameter {name}", p))
    if not leaves:
        raise GradscopeError(
            f"{function}: nothing to check; pass at least one floating-point tensor input "
            "(or a module with trainable parameters)"
        )
    return fn, args, leaves


def assert_gradcheck(
    fn: Callable[..., object],
    *inputs: object,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    check_params: bool = True,
    msg: str | None = None,
) -> None:
    """Autograd's gradients of ``fn(*inputs)`` agree with finite differences.

    Floating-point inputs are cast to float64 (the ones with ``requires_grad=True`` are
    checked, or all of them when none has it); a module ``fn`` is copied to float64 and, with
    ``check_params=True``, its trainable parameters are checked too. Costs two calls of ``fn``
    per checked element: keep the inputs and the module small.

    >>> import gradscope.testing as gt
    >>> gt.assert_gradcheck(torch.nn.Linear(3, 2), torch.randn(4, 3))
    """
    __tracebackhide__ = True
    function = "assert_gradcheck"
    if not callable(fn):
        raise GradscopeError(f"{function}: fn must be callable, not {describe(fn)}")
    for label, value in (("eps", eps), ("atol", atol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise GradscopeError(f"{function}: {label}= takes a number >= 0, not {value!r}")
    if eps == 0:
        raise GradscopeError(f"{function}: eps= must be > 0")
    fn, args, leaves = _prepare(fn, inputs, check_params, function)

    def run() -> list[torch.Tensor]:
        return _outputs(fn(*args), function)

    outs = run()
    sizes = [o.numel() for o in outs]
    shapes = [shape_of(o) for o in outs]
    total = sum(sizes)
    analytical = [torch.zeros(leaf.tensor.numel(), total, dtype=torch.float64) for leaf in leaves]
    tensors = [leaf.tensor for leaf in leaves]
    column = 0
    for out in outs:
        flat = out.reshape(-1)
        for j in range(flat.numel()):
            if flat.requires_grad:
                grads = torch.autograd.grad(flat[j], tensors, retain_graph=True, allow_unused=True)
                for k, g in enumerate(grads):
                    if g is not None:
                        analytical[k][:, column] = g.detach().reshape(-1).to(torch.float64)
            column += 1
    del outs

    failures: list[Failure] = []
    with torch.no_grad():
        for leaf, jac in zip(leaves, analytical, strict=True):
            flat = leaf.tensor.view(-1)
            numerical = torch.zeros_like(jac)
            for i in range(flat.numel()):
                orig = float(flat[i])
                flat[i] = orig + eps
                plus = torch.cat([o.detach().reshape(-1).to(torch.float64) for o in run()])
                flat[i] = orig - eps
                minus = torch.cat([o.detach().reshape(-1).to(torch.float64) for o in run()])
                flat[i] = orig
                numerical[i] = (plus - minus) / (2 * eps)
            diff = (jac - numerical).abs()
            bad = ~(diff <= atol + rtol * numerical.abs())
            count = int(bad.sum())
            if count == 0:
                continue
            excess = torch.where(bad, diff - rtol * numerical.abs(), torch.zeros_like(diff))
            worst = int(torch.nan_to_num(excess, nan=float("inf")).reshape(-1).argmax())
            i, col = divmod(worst, total)
            out_k, within = 0, col
            while within >= sizes[out_k]:
                within -= sizes[out_k]
                out_k += 1
            failures.append(
                Failure(
                    leaf.label,
                    shape_of(leaf.tensor),
                    f"{count} of {jac.numel()} Jacobian entries disagree; worst at element "
                    f"{index_of(leaf.tensor.shape, i)} -> output {out_k} index "
                    f"{index_of(shapes[out_k], within)}: autograd {fmt_num(float(jac[i, col]))}, "
                    f"finite difference {fmt_num(float(numerical[i, col]))} "
                    f"(|diff| {fmt_num(float(diff[i, col]))})",
                )
            )
    if failures:
        raise fail(
            function,
            f"autograd and finite differences disagree for {len(failures)} of "
            f"{plural(len(leaves), 'checked tensor')} (eps={eps:g}, atol={atol:g}, "
            f"rtol={rtol:g})",
            failures,
            "a custom autograd.Function's backward (or a hand-written gradient) is wrong, or "
            "fn is not differentiable at these inputs (relu/abs at 0, max ties, in-place "
            "clamping): move the inputs away from kinks before blaming the backward",
            msg,
        )
