"""``best = copy.deepcopy(model)``, pickle and ``torch.save`` of a watched model all work, and a
copy carries no working gradscope hook: it reports nothing into the original's watch."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import gradscope
from gradscope._hooks import InertHook

pytestmark = pytest.mark.usefixtures("read_path")


def live_hooks(net: nn.Module) -> list[object]:
    """Every module and parameter hook on ``net`` that is not an inert copy."""
    found: list[object] = []
    for module in net.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            found += [h for h in hooks.values() if not isinstance(h, InertHook)]
    for param in net.parameters():
        found += list((param._backward_hooks or {}).values())
    return found


def roundtrip(net: nn.Module, how: str) -> nn.Module:
    if how == "deepcopy":
        return copy.deepcopy(net)
    if how == "pickle":
        return pickle.loads(pickle.dumps(net))  # type: ignore[no-any-return]
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)  # type: ignore[no-any-return]


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_a_copy_of_a_watched_model_works_and_reports_nothing(how: str) -> None:
    net = gradscope.LeNet()
    x = torch.randn(1, 1, 32, 32)
    w = gradscope.watch(net)
    net(x).sum().backward()
    best = roundtrip(net, how)  # while the watch is open
    assert live_hooks(best) == []
    best(x).sum().backward()
    assert len(w.records) == 1  # the copy's backward is not the watched model's
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in best.modules())
    w.close()
    assert live_hooks(net) == []
    again = roundtrip(best, how)  # and the copy, or a copy made after close, copies again
    again(x).sum().backward()
    torch.testing.assert_close(again.fc3.bias.grad, best.fc3.bias.grad)


def test_a_copy_can_be_watched_on_its_own() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    x = torch.randn(2, 3)
    with gradscope.watch(net) as w:
        best = copy.deepcopy(net)
        with gradscope.watch(best) as w_best:
            best(x).sum().backward()
        net(x).mul(2).sum().backward()
    assert [r.index for r in w.records] == [1] and [r.index for r in w_best.records] == [1]
    torch.testing.assert_close(w_best.last["2.bias"].after, torch.tensor([2.0]))
    torch.testing.assert_close(w.last["2.bias"].after, torch.tensor([4.0]))
    assert live_hooks(best) == [] and live_hooks(net) == []


def test_saving_a_watched_model_keeps_its_watch_working() -> None:
    net = nn.Linear(3, 1)
    with gradscope.watch(net) as w:
        torch.save(net, io.BytesIO())
        pickle.dumps(net)
        net(torch.ones(1, 3)).sum().backward()
    torch.testing.assert_close(w.last["bias"].after, torch.tensor([1.0]))
