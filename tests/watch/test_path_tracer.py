"""Where the path from a parameter to the loss was cut (``_watch/tracer.py``), and where a
NaN/Inf gradient was born in backward (``_watch/replay.py``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gradscope


class Two(nn.Module):
    """a -> (the cut) -> b; ``cut`` says how the path from ``a`` is lost."""

    def __init__(self, cut: str) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 1)
        self.unused = nn.Linear(4, 4)
        self.cut = cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.cut == "detach":
            h = h.detach()
        elif self.cut == "data":
            h = h.data
        elif self.cut == "no_grad":
            with torch.no_grad():
                h = h * 2
        elif self.cut == "integer":
            h = h.argmax(1, keepdim=True).float().expand(-1, 4)
        elif self.cut == "branch":
            self.unused(h)  # computed, dropped
            h = x
        elif self.cut == "never":
            h = x
        return self.b(h)


def _train(net: nn.Module, passes: int = 2) -> gradscope.Watch:
    with gradscope.watch(net) as w:
        for _ in range(passes):
            net(torch.randn(3, 4)).sum().backward()
    return w


@pytest.mark.parametrize(
    ("cut", "op", "reason"),
    [
        ("detach", "torch.Tensor.detach", "detach"),
        ("data", "torch.Tensor.data.__get__", "data"),
        ("no_grad", "torch.Tensor.mul", "no_grad"),
        ("integer", "torch.Tensor.argmax", "integer"),
    ],
)
def test_the_op_that_cut_the_path_is_named_with_its_line(cut: str, op: str, reason: str) -> None:
    w = _train(Two(cut))
    trace = w._monitors.forward.traces["a.weight"]
    assert trace.used and not trace.reached_output
    assert trace.cut is not None
    assert (trace.cut.op, trace.cut.reason, trace.cut.module) == (op, reason, "")
    assert trace.cut.location is not None and trace.cut.location.startswith("test_path_tracer.py")
    finding = w.diagnose()[0]
    assert finding.kind == "no_gradient" and finding.params == ("a.weight", "a.bias")
    assert op in finding.message and finding.evidence["cut at"].startswith(op)


def test_a_module_that_never_ran_and_a_branch_that_is_dropped() -> None:
    d = _train(Two("branch")).diagnose()
    by_params = {f.params: f for f in d}
    assert "an unused branch" in by_params[("unused.weight", "unused.bias")].message
    d = _train(Two("never")).diagnose()
    by_params = {f.params: f for f in d}
    never = by_params[("unused.weight", "unused.bias")]
    assert "'unused' never ran in the forward pass" in never.message
    assert "an unused branch" in by_params[("a.weight", "a.bias")].message  # it ran, unused


def test_values_that_reach_the_output_were_cut_in_the_loss() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    with gradscope.watch(net) as w:
        for _ in range(2):
            out = net(torch.randn(3, 4))
            (out.detach() * net[0].weight.sum() + net[0].bias.sum()).sum().backward()  # detached
    finding = w.diagnose()[0]
    assert finding.params == ("1.weight", "1.bias")
    assert "reach the model's output, but the loss does not use" in finding.message


def test_after_one_pass_the_finding_says_where_the_cut_will_be_found() -> None:
    d = _train(Two("detach"), passes=1).diagnose()
    assert "shows after one more forward pass" in d[0].message


def test_the_trace_runs_once_and_healthy_passes_stay_untraced() -> None:
    net = Two("detach")
    w = _train(net, passes=4)
    monitor = w._monitors.forward
    assert set(monitor.traces) == {"a.weight", "a.bias", "unused.weight", "unused.bias"}
    assert {t.forward for t in monitor.traces.values()} == {2}
    assert not monitor.mode.armed()


class Distance(nn.Module):
    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(((u - v) ** 2).sum(-1))


class Siamese(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 3)
        self.dist = Distance()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.dist(self.enc(a), self.enc(b))


def test_a_nan_born_in_backward_is_found_by_replay_without_touching_grads_or_records() -> None:
    torch.manual_seed(0)
    net = Siamese()
    twin = copy.deepcopy(net)
    a = torch.randn(4, 4)
    b = torch.cat([a[:2], torch.randn(2, 4)])  # two identical pairs: sqrt'(0) = inf
    with gradscope.watch(net) as w:
        net(a, b).sum().backward()
    twin(a, b).sum().backward()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True)  # the replay added nothing
    assert len(w.records) == 1
    found = w._monitors.forward.backward
    assert found is not None and not found.from_loss
    assert found.origin.node.op == "SqrtBackward0" and found.origin.node.module == "dist"
    # an oracle: gradscope.graph(grads=True) on the same computation, done by hand
    out = twin(a, b)
    g = gradscope.graph(out, params=twin, grads=True)
    out.sum().backward()
    assert g.first_nonfinite.node.op == found.origin.node.op
    finding = w.diagnose()[0]
    assert (finding.kind, finding.module) == ("nonfinite_backward", "dist")
    assert "SqrtBackward0" in finding.message


def test_a_nan_from_the_loss_is_the_losss() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    with gradscope.watch(net) as w:
        out = net(torch.randn(3, 4))
        torch.sqrt(out - 10.0).sum().backward()  # the loss is NaN, its gradient too
    assert w._monitors.forward.backward.from_loss
    finding = w.diagnose()[0]
    assert finding.kind == "nonfinite_loss" and finding.module is None
