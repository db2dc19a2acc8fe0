"""``assert_grads_close``: a module's gradients against expected ones, torch.testing tolerances."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import cast

import torch
from torch import nn

from .._errors import GradscopeError
from .._naming import ParamsLike, describe, named_parameters
from ._common import Failure, as_names, fail, fmt_num, index_of, plural, select, shape_of
from ._grads import grad_of

__all__ = ["assert_grads_close", "default_tolerances"]

# torch.testing.assert_close's defaults (rtol, atol) per dtype; a pair of dtypes takes the larger.
_DEFAULTS: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
    torch.complex32: (1e-3, 1e-5),  # complex: the tolerances of its real and imaginary parts
    torch.complex64: (1.3e-6, 1e-5),
    torch.complex128: (1e-7, 1e-7),
}


def default_tolerances(*dtypes: torch.dtype) -> tuple[float, float]:
    """The (rtol, atol) torch.testing.assert_close uses for tensors of these dtypes."""
    pairs = [_DEFAULTS.get(d, (0.0, 0.0)) for d in dtypes]
    return max(p[0] for p in pairs), max(p[1] for p in pairs)


def _expected_grads(
    expected: object, names: dict[str, str], function: str
) -> dict[str, torch.Tensor | None]:
    """Expected gradients keyed by the canonical names of the module under test."""
    if isinstance(expected, nn.Module):
        ref = named_parameters(expected)
        items: Iterable[tuple[str, torch.Tensor | None]] = (
            (n, grad_of(p)) for n, p in ref.params.items()
        )
        what = "the expected module"
    elif isinstance(expected, Mapping):
        items = expected.items()
        what = "expected"
    elif isinstance(expected, Iterable) and not isinstance(expected, (torch.Tensor, str)):
        # parameters of the reference, as the module under test was given (a list, pairs...)
        given = cast(ParamsLike, expected)  # pragma: no mutate (cast does nothing at run time)
        ref = named_parameters(given, argument="expected")
        items = ((n, grad_of(p)) for n, p in ref.params.items())
        what = "the expected parameters"
    else:
        raise GradscopeError(
            f"{function}: expected= takes a module (e.g. a float64 copy after its own backward), "
            f"its parameters in the form the module under test was given, or a mapping of "
            f"parameter name -> expected gradient, not {describe(expected)}"
        )
    out: dict[str, torch.Tensor | None] = {}
    unknown = []
    for key, value in items:
        if not isinstance(key, str):
            raise GradscopeError(f"{function}: {what} has a key {key!r} that is not a name")
        if value is not None and not isinstance(value, torch.Tensor):
            raise GradscopeError(
                f"{function}: {what}[{key!r}] is {describe(value)}; give a tensor (or None)"
            )
        if key not in names:
            unknown.append(key)
            continue
        out[names[key]] = value
    if unknown:
        raise GradscopeError(
            f"{function}: these names in {what} are not the module's: {sorted(unknown)}; "
            f"the module's are {sorted(set(names.values()))}"
        )
    return out


def _compare(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> str | None:
    a = actual.detach()
    e = expected.detach().to(a.device)  # pragma: no mutate (only a GPU tells: tests/test_cuda.py)
    common = torch.promote_types(a.dtype, e.dtype)
    close = torch.isclose(a.to(common), e.to(common), rtol=rtol, atol=atol)
    if bool(close.all()):
        return None
    bad = int((~close).sum())
    total = close.numel()
    wide = torch.complex128 if common.is_complex else torch.float64
    a64, e64 = a.to(wide), e.to(wide)  # pragma: no mutate (one side wide promotes the other)
    # As torch.testing does, only mismatched elements count (inf vs inf matches, and 0 vs 0
    # has no relative difference); a NaN difference counts as the worst (torch prints nan).
    diff = (a64 - e64).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    zero = torch.zeros_like(diff)
    diff = torch.where(close, zero, diff)
    rel = torch.where(close, zero, (diff / e64.abs()).nan_to_num(nan=math.inf, posinf=math.inf))
    i_abs = int(diff.reshape(-1).argmax())
    i_rel = int(rel.reshape(-1).argmax())
    i_first = int((~close).reshape(-1).nonzero()[0, 0])
    flat_a, flat_e = a64.reshape(-1), e64.reshape(-1)
    return (
        f"mismatched elements: {bad} / {total} ({100.0 * bad / total:.1f}%); "
        f"greatest absolute difference {fmt_num(float(diff.reshape(-1)[i_abs]))} at index "
        f"{index_of(a.shape, i_abs)} (up to {atol:g} allowed); greatest relative difference "
        f"{fmt_num(float(rel.reshape(-1)[i_rel]))} at index {index_of(a.shape, i_rel)} "
        f"(up to {rtol:g} allowed); first at index {index_of(a.shape, i_first)}: got "
        f"{fmt_num(flat_a[i_first].item())}, expected {fmt_num(flat_e[i_first].item())}"
    )


def assert_grads_close(
    module: ParamsLike,
    expected: nn.Module | Mapping[str, torch.Tensor | None] | ParamsLike,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    ignore: str | Iterable[str] | None = (),
    msg: str | None = None,
) -> None:
    """The module's gradients match ``expected`` within torch.testing.assert_close tolerances.

    ``expected`` is a second module that ran its own backward (a float64 copy, a reference
    implementation), its parameters in the same form as ``module`` (a list, pairs...), or a
    mapping name -> gradient. Without ``rtol``/``atol`` the defaults of
    torch.testing for the two dtypes apply; give both or neither.

    >>> import copy, gradscope.testing as gt
    >>> net = torch.nn.Linear(3, 1)
    >>> ref = copy.deepcopy(net).double()
    >>> x = torch.randn(4, 3)
    >>> net(x).sum().backward(); ref(x.double()).sum().backward()
    >>> gt.assert_grads_close(net, ref)
    """
    __tracebackhide__ = True
    function = "assert_grads_close"
    if (rtol is None) != (atol is None):
        raise GradscopeError(
            f"{function}: give both rtol= and atol= or neither (as torch.testing.assert_close "
            f"does); got rtol={rtol}, atol={atol}"
        )
    for label, tol in (("rtol", rtol), ("atol", atol)):
        if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float))):
            raise GradscopeError(f"{function}: {label}= takes a number, not {describe(tol)}")
        if tol is not None and not tol >= 0:
            raise GradscopeError(f"{function}: {label}={tol} must be >= 0")
    names = as_names(module, function=function)
    skipped = select(names, ignore, argument="ignore", function=function)
    reference = _expected_grads(expected, names.canonical, function)
    wanted = [n for n in names.params if n not in skipped]
    absent = [n for n in wanted if n not in reference]
    if absent:
        raise GradscopeError(
            f"{function}: expected has no entry for {absent}; give one per parameter, or pass "
            f"ignore={absent!r}"
        )
    failures: list[Failure] = []
    used: set[tuple[float, float]] = set()
    for name in wanted:
        got = grad_of(names.params[name])
        want = reference[name]
        if got is None or want is None:
            if got is None and want is not None:
                failures.append(Failure(name, shape_of(want), "no gradient, but expected has one"))
            elif got is not None:
                failures.append(
                    Failure(name, shape_of(got), "has a gradient, but expected has none (None)")
                )
            continue
        if got.shape != want.shape:
            failures.append(
                Failure(name, shape_of(got), f"shape differs from expected {shape_of(want)}")
            )
            continue
        if rtol is None or atol is None:  # pragma: no mutate (both or neither: checked above)
            r, a = default_tolerances(got.dtype, want.dtype)
        else:
            r, a = float(rtol), float(atol)
        used.add((r, a))
        problem = _compare(got, want, r, a)
        if problem is not None:
            failures.append(Failure(name, shape_of(got), problem))
    if failures:
        tols = "; ".join(f"rtol={r:g}, atol={a:g}" for r, a in sorted(used)) or "no tolerance"
        raise fail(
            function,
            f"{len(failures)} of {plural(len(wanted), 'gradient')} "
            f"{'differs' if len(failures) == 1 else 'differ'} from expected ({tols})",
            failures,
            "a few mismatched elements against a float64 copy usually need a looser rtol=/atol= "
            "(float32 rounding grows with layer size); every element off by one factor suggests "
            "a mean vs sum or a missing scale; scattered large errors, a wrong backward",
            msg,
        )
