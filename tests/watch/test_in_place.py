"""What ``after`` and ``delta`` hold when code changes ``.grad`` or the gradient around the watch.

Each test takes clones by hand, at the moment the value is defined, and compares the record with
them: a record either returns that value or says it is gone, never a different one.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradscope
from gradscope import GradscopeError

pytestmark = pytest.mark.usefixtures("read_path")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


@pytest.mark.parametrize("tell_the_watch", [True, False])
def test_grad_scaler_unscale_after_backward_is_noticed(tell_the_watch: bool) -> None:
    """GradScaler.unscale_ rescales .grad in place without bumping its version counter."""
    net = _net()
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradscope.watch(net, scaler=scaler if tell_the_watch else None) as w:
        scaler.scale(net(torch.randn(5, 4)).pow(2).sum()).backward()
        scaled = net[0].weight.grad.clone()
        scaler.unscale_(optimizer)
    record = w.last["0.weight"]
    assert record.modified
    with pytest.raises(GradscopeError, match="changed in place"):
        record.after  # noqa: B018
    expected = float(scaled.double().norm()) / (65536.0 if tell_the_watch else 1.0)
    assert record.stats.norm == pytest.approx(expected, rel=1e-6)  # divided once, not twice
    assert record.stats.mean is None  # the values are gone; only what was recorded is left
    assert "0.weight" in str(w.summary())


def test_unscale_of_a_nonfinite_gradient_is_noticed_through_the_scaler() -> None:
    net = _net()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradscope.watch(net, scaler=scaler) as w:
        loss = net(torch.randn(5, 4)).sum() * torch.tensor(math.inf)
        scaler.scale(loss).backward()
        nan_before = int(torch.isnan(net[2].bias.grad).sum())
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
    record = w.last["2.bias"]
    assert record.modified and record.stats.nan == nan_before
    with pytest.raises(GradscopeError, match="changed in place"):
        record.after  # noqa: B018
    assert w.last.scaler_skipped is True


def test_a_change_through_data_is_noticed_though_the_version_stays() -> None:
    net = _net()
    with gradscope.watch(net) as w:
        net(torch.randn(5, 4)).sum().backward()
        version = net[0].weight.grad._version
        net[0].weight.grad.data.mul_(3.0)
        assert net[0].weight.grad._version == version
    assert w.last["0.weight"].modified
    with pytest.raises(GradscopeError, match="changed in place"):
        w.last["0.weight"].after  # noqa: B018
    assert not w.last["0.bias"].modified
    torch.testing.assert_close(w.last["0.bias"].after, net[0].bias.grad)


def test_an_untouched_gradient_is_not_called_modified_when_read_repeatedly() -> None:
    net = _net()
    with gradscope.watch(net, keep="all") as w:
        for _ in range(3):
            net(torch.randn(5, 4)).sum().backward()
        for _ in range(3):
            assert not w.last["0.weight"].modified
            torch.testing.assert_close(w.last["0.weight"].after, net[0].weight.grad)
    for old in w.records[:-1]:  # copied on write, before the next pass added into .grad
        assert not old["0.weight"].modified and old["0.weight"].after is not None


@pytest.mark.parametrize(
    "registered", ["after-watch", "before-watch", "between-forward-and-backward"]
)
def test_delta_is_what_was_accumulated_whatever_the_hook_order(registered: str) -> None:
    net = _net()
    clamp = lambda g: g.clamp(-0.05, 0.05)  # noqa: E731
    handles = []
    if registered == "before-watch":
        handles = [p.register_hook(clamp) for p in net.parameters()]
    x = torch.randn(5, 4)
    with gradscope.watch(net, keep="all") as w:
        if registered == "after-watch":
            handles = [p.register_hook(clamp) for p in net.parameters()]
        clones = []
        for _ in range(3):
            loss = net(x).pow(2).sum()
            if registered == "between-forward-and-backward" and not handles:
                handles = [p.register_hook(clamp) for p in net.parameters()]
            before = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
            loss.backward()
            clones.append((before, {n: p.grad.clone() for n, p in net.named_parameters()}))
    for handle in handles:
        handle.remove()
    for record, (before, after) in zip(w.records, clones, strict=True):
        for name in after:
            r = record[name]
            torch.testing.assert_close(r.after, after[name], rtol=0, atol=0)
            expected_delta = after[name] - before[name] if name in before else after[name]
            torch.testing.assert_close(r.delta, expected_delta)
            assert float(r.delta.abs().max()) <= 0.05 + 1e-7  # the clamped gradient
            if name in before:
                torch.testing.assert_close(r.before, before[name], rtol=0, atol=0)
                torch.testing.assert_close(r.before + r.delta, r.after)


def test_autograd_grad_delta_follows_hooks_registered_after_the_watch() -> None:
    net = _net()
    with gradscope.watch(net) as w:
        handle = net[0].bias.register_hook(lambda g: g * 0)
        (g,) = torch.autograd.grad(net(torch.randn(5, 4)).sum(), [net[0].bias])
        first = w.last["0.bias"].delta
        loss = net(torch.randn(5, 4)).sum()
        late = net[2].bias.register_hook(lambda g: g * 2)  # between forward and autograd.grad
        torch.autograd.grad(loss, [net[2].bias])  # seen from the next pass on: documented
        (g2,) = torch.autograd.grad(net(torch.randn(5, 4)).sum(), [net[2].bias])
        handle.remove()
        late.remove()
    assert torch.count_nonzero(g) == 0
    torch.testing.assert_close(first, g)
    torch.testing.assert_close(w.last["2.bias"].delta, g2)


def test_an_accumulating_pass_records_what_a_hook_registered_after_the_watch_returns() -> None:
    """Into an existing ``.grad`` the pass adds what the last hook returns: a hook registered
    after the watch's (between forward and backward) doubles it; before/after/delta are the
    clones taken by hand."""
    net = _net()
    x = torch.randn(5, 4)
    returned: list[torch.Tensor] = []

    def double(grad: torch.Tensor) -> torch.Tensor:
        returned.append(grad * 2)
        return returned[-1]

    with gradscope.watch(net) as w:
        net(x).sum().backward()
        before = {n: p.grad.clone() for n, p in net.named_parameters()}
        loss = net(x).sum()
        late = net[2].weight.register_hook(double)  # runs after the watch's hook
        loss.backward()
        late.remove()
        after = {n: p.grad.clone() for n, p in net.named_parameters()}
    assert w.errors == []
    torch.testing.assert_close(after["2.weight"], 3 * before["2.weight"])  # same input twice
    for name, grad in after.items():
        record = w.last[name]
        torch.testing.assert_close(record.before, before[name], rtol=0, atol=0)
        torch.testing.assert_close(record.after, grad, rtol=0, atol=0)
        torch.testing.assert_close(record.delta, grad - before[name])
    # what the pass added is the very tensor the hook returned: held, not copied
    assert w.last["2.weight"].delta.data_ptr() == returned[0].data_ptr()


def test_a_frozen_parameter_with_a_later_hook_is_left_alone() -> None:
    """Found by the state machine: moving our hook last must skip frozen parameters."""
    net = _net()
    with gradscope.watch(net) as w:
        handle = net[0].weight.register_hook(lambda g: g * 2)
        net[0].weight.requires_grad_(False)
        net(torch.randn(5, 4)).sum().backward()
        handle.remove()
    assert w.errors == [] and w.last.frozen == ["0.weight"]
