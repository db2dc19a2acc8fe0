"""share_hooks: other per-module hooks (the watch's forward checks) run inside the module-tagging
hooks, one pair of hooks per module, and either user can leave first without stopping the other.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

import gradscope
from gradscope._graph.module_tags import install_module_tagging, module_path_of, share_hooks
from gradscope._hooks import CopySafe


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _pairs(net: nn.Module) -> list[tuple[int, int]]:
    """(pre-hooks, forward hooks) on each module."""
    return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in net.modules()]


def _seen(calls: list[tuple[str, str]], name: str) -> tuple[Any, Any]:
    def pre(module: nn.Module, args: Any, kwargs: Any) -> None:
        calls.append(("pre", name))

    def post(module: nn.Module, args: Any, output: Any) -> None:
        calls.append(("post", name))

    return CopySafe(pre), CopySafe(post)


def _addmm_module(out: torch.Tensor) -> str | None:
    """The module path of the last layer's AddmmBackward0 node, by module_path_of."""
    return module_path_of(out.grad_fn)


def test_inner_hooks_run_inside_the_tagging_pair_and_tagging_still_works() -> None:
    net = _net()
    tags = install_module_tagging(net)
    calls: list[tuple[str, str]] = []
    inner = [share_hooks(m, *_seen(calls, path)) for path, m in net.named_modules()]
    assert _pairs(net) == [(1, 1)] * 4  # one pair per module, not two
    out = net(torch.randn(2, 3))
    assert _addmm_module(out) == "2"
    # torch calls each module's hooks in order: pre of the model, pre/post of each layer...
    assert calls == [
        ("pre", ""),
        ("pre", "0"),
        ("post", "0"),
        ("pre", "1"),
        ("post", "1"),
        ("pre", "2"),
        ("post", "2"),
        ("post", ""),
    ]
    for handle in (*tags, *inner):
        handle.remove()
    assert _pairs(net) == [(0, 0)] * 4


def test_tagging_can_leave_first_and_the_inner_hooks_keep_running() -> None:
    net = _net()
    tags = install_module_tagging(net)
    calls: list[tuple[str, str]] = []
    inner = [share_hooks(m, *_seen(calls, path)) for path, m in net.named_modules()]
    for handle in tags:
        handle.remove()
    assert _pairs(net) == [(1, 1)] * 4
    out = net(torch.randn(2, 3))
    assert _addmm_module(out) is None  # no longer tagged
    assert len(calls) == 8
    for handle in inner:
        handle.remove()
        handle.remove()  # idempotent
    assert _pairs(net) == [(0, 0)] * 4


def test_the_inner_hooks_can_leave_first_and_tagging_keeps_running() -> None:
    net = _net()
    tags = install_module_tagging(net)
    calls: list[tuple[str, str]] = []
    inner = [share_hooks(m, *_seen(calls, path)) for path, m in net.named_modules()]
    for handle in inner:
        handle.remove()
    out = net(torch.randn(2, 3))
    assert calls == [] and _addmm_module(out) == "2"
    assert _pairs(net) == [(1, 1)] * 4
    # the pair is free again: the next user runs inside it
    again = share_hooks(net, *_seen(calls, "again"))
    assert _pairs(net)[0] == (1, 1)
    net(torch.randn(2, 3))
    assert calls == [("pre", "again"), ("post", "again")]
    for handle in (*tags, again):
        handle.remove()
    assert _pairs(net) == [(0, 0)] * 4


def test_without_tagging_the_inner_hooks_are_registered_as_they_are() -> None:
    net = nn.Linear(3, 2)
    calls: list[tuple[str, str]] = []
    pre, post = _seen(calls, "")
    handle = share_hooks(net, pre, post)
    assert list(net._forward_pre_hooks.values()) == [pre]
    assert list(net._forward_hooks.values()) == [post]
    net(torch.randn(1, 3))
    assert calls == [("pre", ""), ("post", "")]
    handle.remove()
    assert _pairs(net) == [(0, 0)]


def test_the_hooks_keep_their_place_among_the_users_own() -> None:
    """A user's forward hook registered after the watch still sees what the checks saw first."""
    net = nn.Linear(3, 2)
    order: list[str] = []
    tags = install_module_tagging(net)
    user = net.register_forward_hook(lambda m, a, out: order.append("user"))
    inner = share_hooks(
        net, CopySafe(lambda m, a, kw: None), CopySafe(lambda m, a, out: order.append("inner"))
    )
    net(torch.randn(1, 3))
    assert order == ["inner", "user"]
    for handle in tags:
        handle.remove()
    net(torch.randn(1, 3))
    assert order == ["inner", "user"] * 2
    for handle in (inner, user):
        handle.remove()
    assert _pairs(net) == [(0, 0)]


class _Between(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.last = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(torch.log(self.first(x) - 10.0))  # NaN born in the model's own code


def test_a_watch_has_one_pair_per_module_and_two_watches_each_find_the_origin() -> None:
    net = _Between()
    x = torch.randn(3, 4)
    first = gradscope.watch(net)
    assert _pairs(net)[1:] == [(1, 1), (1, 1)]  # the model itself also has the recorder's
    second = gradscope.watch(net, tag_modules=False)
    assert _pairs(net)[1:] == [(2, 2), (2, 2)]
    net(x).sum().backward()
    first.close()  # the other watch's checks keep running
    net(x).sum().backward()
    for w in (first, second):
        d = w.diagnose()
        assert d[0].kind == "nonfinite_forward", str(d)
        assert d[0].module == "" and d[0].evidence["op"].startswith("torch.log at ")
    # (the first watch's replay of its bad pass is a forward pass the second one sees too)
    origins = [r.origin for r in second._monitors.forward.records]  # type: ignore[union-attr]
    assert len(origins) >= 2
    assert {(o.where, o.child) if o is not None else None for o in origins} == {("before", "last")}
    second.close()
    assert _pairs(net) == [(0, 0)] * 3
    assert math.isnan(float(net(x).sum().detach()))
