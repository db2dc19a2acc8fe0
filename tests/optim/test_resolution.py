"""A step too small for the check to see: "unresolved", never a plain "ok".

The tolerance is a few ulps of the parameter; when the reference's whole update is within it,
a step off by all of its size (skipped, doubled) would match too. The expectations are worked
out by hand from SGD's rule ``p - lr * grad`` on a layer whose gradients are known exactly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradscope


def _layer(dtype: torch.dtype, x: float) -> nn.Linear:
    """Linear(3, 1) with weight 0.5 and bias 0.25, after backward of its output's sum at
    input ``x``: weight.grad is ``x`` everywhere, bias.grad is 1."""
    layer = nn.Linear(3, 1).to(dtype)
    with torch.no_grad():
        layer.weight.fill_(0.5)
        layer.bias.fill_(0.25)
    layer(torch.full((1, 3), x, dtype=dtype)).sum().backward()
    return layer


class _SkipsBias(torch.optim.SGD):
    """SGD with a bug: it leaves the last parameter of each group alone."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        for group in self.param_groups:
            for p in group["params"][:-1]:
                p.add_(p.grad, alpha=-group["lr"])


def test_a_step_within_the_tolerance_is_unresolved_not_ok() -> None:
    layer = _layer(torch.float32, 2.0)
    opt = torch.optim.SGD(layer.parameters(), lr=1e-9)
    with gradscope.check_step(opt, params=layer) as report:
        opt.step()
    assert report.ok  # nothing was seen to be wrong...
    assert [p.verdict for p in report.params] == ["unresolved", "unresolved"]
    assert all(p.unresolved and not p.failed for p in report.params)
    # ...and the report says why it could not see: lr * |grad| against the tolerance
    assert report["weight"].max_update == pytest.approx(2e-9, rel=1e-3)
    assert report["bias"].max_update == pytest.approx(1e-9, rel=1e-3)
    for p in report.params:
        assert p.tolerance is not None and p.max_update is not None
        assert p.max_update <= p.tolerance
    assert report.headline().endswith("ok (2 of 2 unresolved: step within tolerance)")
    (note,) = [n for n in report.notes if "unresolved" in n]
    assert note.startswith("2 parameter(s) matched but are unresolved")
    assert "e.g. weight: largest update 2.00e-09, tolerance " in note
    assert note.endswith(": weight, bias")
    assert "unresolved" in str(report).splitlines()[3]  # the table's weight row


def test_a_skipped_parameter_hides_below_the_resolution_and_fails_above_it() -> None:
    layer = _layer(torch.float32, 2.0)
    opt = _SkipsBias(layer.parameters(), lr=1e-9)
    with gradscope.check_step(opt, params=layer) as small:
        opt.step()
    assert small["bias"].verdict == "unresolved"  # the bug is invisible: said so, not "ok"

    layer = _layer(torch.float32, 2.0)
    opt = _SkipsBias(layer.parameters(), lr=0.1)
    with gradscope.check_step(opt, params=layer) as large:
        opt.step()
    assert [p.name for p in large.failures] == ["bias"]
    assert large["weight"].verdict == "ok"
    assert large["bias"].max_abs_diff == pytest.approx(0.1, rel=1e-6)  # lr * 1, not taken


def test_float64_resolves_the_same_step() -> None:
    layer = _layer(torch.float64, 2.0)
    opt = torch.optim.SGD(layer.parameters(), lr=1e-9)
    with gradscope.check_step(opt, params=layer) as report:
        opt.step()
    assert [p.verdict for p in report.params] == ["ok", "ok"]
    assert report["weight"].max_update == pytest.approx(2e-9, rel=1e-12)
    assert not any("unresolved" in n for n in report.notes)
    assert "unresolved" not in report.headline()


def test_a_zero_step_is_ok_not_unresolved() -> None:
    layer = _layer(torch.float32, 0.0)  # weight.grad is 0: its reference step is exactly 0
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    with gradscope.check_step(opt, params=layer) as report:
        opt.step()
    assert report["weight"].max_update == 0.0
    assert report["weight"].verdict == "ok"
    assert report["bias"].verdict == "ok" and report["bias"].max_update == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("biases", "tail"),
    [
        ((True, True, True), "1.weight, 1.bias, 2.weight, 2.bias"),  # six: all named
        ((True, True, True, False), "1.weight, 1.bias, 2.weight, 2.bias and 1 more"),  # seven
        ((True, True, True, True), "1.weight, 1.bias, 2.weight, 2.bias and 2 more"),  # eight
    ],
)
def test_the_note_names_six_and_counts_the_rest(biases: tuple[bool, ...], tail: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(*(nn.Linear(2, 2, bias=b) for b in biases))
    net(torch.ones(1, 2)).sum().backward()
    opt = torch.optim.SGD(net.parameters(), lr=1e-12)
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
    count = len(report.params)
    assert count == len(biases) + sum(biases) and all(p.unresolved for p in report.params)
    (note,) = [n for n in report.notes if "unresolved" in n]
    assert note.startswith(f"{count} parameter(s) matched but are unresolved")
    assert note.endswith(f": 0.weight, 0.bias, {tail}")
