"""Forward finiteness (``_watch/forward.py``): one sum per module, where a NaN/Inf was born,
the op that made it (found by running the pass again), never touching the user's run."""

from __future__ import annotations

import copy
import gc
import math
import weakref

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import gradscope
from gradscope._watch.forward_pass import finite_sum as _sum

# Every test runs with the sums read at once (CPU) and read later behind an event (as on CUDA).
pytestmark = pytest.mark.usefixtures("read_path")


class Block(nn.Module):
    def __init__(self, op: str = "none") -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        if self.op == "log":
            h = torch.log(h)
        elif self.op == "div":
            h = h / (h - h)
        return torch.relu(h)


class Net(nn.Module):
    def __init__(self, op: str = "none", where: str = "block") -> None:
        super().__init__()
        self.first = Block()
        self.block = Block(op if where == "block" else "none")
        self.last = nn.Linear(4, 2)
        self.where = where
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(self.first(x))
        if self.where == "between":
            h = torch.log(h - 1.0)  # in Net's own code, before it calls last
        return self.last(h)


def _monitor(w: gradscope.Watch):  # type: ignore[no-untyped-def]
    monitor = w._monitors.forward
    monitor.resolve()
    return monitor


def test_on_the_deferred_path_the_sums_wait_until_read(
    read_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a GPU: a pass's sums are read when the next forward pass ends (at most one pass in
    flight) or when the diagnosis asks, each once, and still paired with their backward pass."""
    import gradscope._watch.monitors as monitors_module

    # on a GPU whether a pass's gradients were finite is not asked when it ends
    monkeypatch.setattr(monitors_module, "_on_cpu", lambda params: False)
    net = Net(op="log")
    monitor = None
    with gradscope.watch(net, check_forward=True) as w:
        monitor = w._monitors.forward
        seen = []
        for _ in range(3):
            net(torch.randn(5, 4)).sum().backward()
            seen.append(list(monitor._pending))
        if read_path == "read-later":
            assert [len(p) for p in seen] == [1, 1, 1]  # the newest pass only
            assert not seen[-1][0].ready()
        else:
            assert seen == [[], [], []]
        d = w.diagnose()
    assert monitor._pending == []
    if read_path == "read-later":
        assert [p[0].event.waits for p in seen] == [1, 1, 1]
    assert [r.passes for r in monitor.records] == [[1], [2], [3]]
    assert d[0].kind == "nonfinite_forward" and d[0].module == "block", str(d)
    assert d[0].evidence["op"].startswith("torch.log at ")


def test_a_healthy_pass_records_every_module_once_and_nothing_bad() -> None:
    net = Net()
    with gradscope.watch(net) as w:
        net(torch.randn(3, 4)).sum().backward()
    monitor = _monitor(w)
    (record,) = monitor.records
    assert record.origin is None and record.output_finite
    assert record.called == {"", "first", "first.lin", "block", "block.lin", "last"}
    assert monitor.order == ["", "first", "first.lin", "block", "block.lin", "last"]
    assert record.passes == [1] and record.grad_enabled


@pytest.mark.parametrize(
    ("op", "where", "module", "kind", "name"),
    [
        ("log", "block", "block", "output", "torch.log"),
        ("div", "block", "block", "output", "torch.Tensor.div"),
        ("log", "between", "", "before", "torch.log"),
    ],
)
def test_the_origin_is_the_module_whose_own_code_made_it_and_the_op_is_named(
    op: str, where: str, module: str, kind: str, name: str
) -> None:
    torch.manual_seed(0)
    net = Net(op, where)
    with gradscope.watch(net) as w:
        net(torch.randn(3, 4)).sum().backward()
    monitor = _monitor(w)
    origin = monitor.records[0].origin
    assert origin is not None and (origin.module, origin.where) == (module, kind)
    if kind == "before":
        assert origin.child == "last"
    site = monitor.located
    assert site is not None and site.op == name and site.module == module
    assert site.location is not None and site.location.startswith("test_forward_checks.py:")
    assert site.value in ("NaN", "Inf", "NaN and Inf")
    # an oracle: hooks of our own on each module, checking every output with isfinite
    outputs: dict[str, bool] = {}

    def hook(path: str):  # type: ignore[no-untyped-def]
        def check(module: nn.Module, args: object, out: torch.Tensor) -> None:
            outputs.setdefault(path, bool(torch.isfinite(out).all()))

        return check

    handles = [m.register_forward_hook(hook(path)) for path, m in net.named_modules()]
    net(torch.randn(3, 4))
    for h in handles:
        h.remove()
    bad = [path for path, finite in outputs.items() if not finite]
    assert (module if kind == "output" else "last") == bad[0]  # hooks fire innermost first


def test_input_with_nan_is_the_datas_fault() -> None:
    net = Net()
    x = torch.randn(3, 4)
    x[1, 2] = math.nan
    with gradscope.watch(net) as w:
        net(x).sum().backward()
    origin = _monitor(w).records[0].origin
    assert origin is not None and origin.where == "input" and origin.module == ""
    assert w.diagnose()[0].kind == "nonfinite_input"


def test_the_replay_leaves_buffers_random_state_and_grads_as_without_the_watch() -> None:
    class Stochastic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 8)
            self.bn = nn.BatchNorm1d(8)
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(self.drop(self.bn(self.lin(x))))

    torch.manual_seed(0)
    net = Stochastic()
    twin = copy.deepcopy(net)
    x = torch.randn(16, 4)
    torch.manual_seed(1)
    with gradscope.watch(net) as w:
        net(x).sum().backward()
        after_watched = torch.rand(3)
    torch.manual_seed(1)
    twin(x).sum().backward()
    after_twin = torch.rand(3)
    assert _monitor(w).located is not None  # the replay ran
    torch.testing.assert_close(after_watched, after_twin)  # random state restored
    torch.testing.assert_close(net.bn.running_mean, twin.bn.running_mean)
    torch.testing.assert_close(net.bn.running_var, twin.bn.running_var)
    assert net.bn.num_batches_tracked == twin.bn.num_batches_tracked == 1
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True)


def test_a_model_that_refuses_the_replay_is_left_alone() -> None:
    class Strict(Net):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Strict.calls += 1
            if Strict.calls > 1:
                raise RuntimeError("called twice")
            return super().forward(x)

    net = Strict("log")
    with gradscope.watch(net) as w:
        net(torch.randn(3, 4)).sum().backward()
    monitor = _monitor(w)
    assert monitor.located is None and monitor.locate_error == "RuntimeError: called twice"
    assert not w.errors
    assert "could not be singled out" in w.diagnose()[0].message


def test_eval_under_no_grad_is_recorded_without_pairing_a_pass() -> None:
    net = Net()
    with gradscope.watch(net) as w:
        with torch.no_grad():
            net(torch.randn(3, 4))
        net(torch.randn(3, 4)).sum().backward()
    first, second = _monitor(w).records
    assert not first.grad_enabled and first.no_grad == first.called and first.passes == []
    assert second.grad_enabled and second.passes == [1]


def test_outputs_of_any_structure_and_odd_inputs_do_not_break_forward() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, k: int = 1):  # type: ignore[no-untyped-def]
            y = self.lin(x)
            return {"y": y, "pair": (y * k, [torch.arange(3)]), "none": None, "n": 3}

    net = Odd()
    with gradscope.watch(net) as w:
        out = net(torch.randn(2, 2), torch.ones(2, dtype=torch.bool), k=2)
        out["y"].sum().backward()
        net(torch.empty(0, 2))  # an empty batch
    assert not w.errors
    assert [r.origin for r in _monitor(w).records] == [None, None]


def test_closing_removes_the_hooks_and_frees_the_model() -> None:
    net = Net("log")
    w = gradscope.watch(net)
    net(torch.randn(3, 4)).sum().backward()
    w.close()
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in net.modules())
    assert w.diagnose()[0].kind == "nonfinite_forward"  # readable after close
    ref = weakref.ref(net)
    del net
    gc.collect()
    assert ref() is None


def test_a_dropped_watch_does_not_keep_the_model_alive() -> None:
    net = Net("log")
    w = gradscope.watch(net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    net(torch.randn(3, 4)).sum().backward()
    ref = weakref.ref(net)
    del net, w
    gc.collect()
    assert ref() is None


def test_check_forward_false_installs_nothing_and_says_so() -> None:
    net = Net("log")
    with gradscope.watch(net, check_forward=False, tag_modules=False) as w:
        assert all(not m._forward_hooks for m in net.modules())
        net(torch.randn(3, 4)).sum().backward()
    d = w.diagnose()
    assert "nonfinite_forward" in d.unchecked and d[0].kind == "nonfinite_backward"
    with pytest.raises(gradscope.GradscopeError, match="check_forward= takes True or False"):
        gradscope.watch(nn.Linear(1, 1), check_forward="yes")  # type: ignore[arg-type]


@given(
    st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    st.integers(1, 300),
    st.sampled_from([None, math.nan, math.inf, -math.inf]),
    st.integers(0, 10_000),
)
def test_the_sum_flags_exactly_the_tensors_with_nan_or_inf(
    dtype: torch.dtype, n: int, bad: float | None, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    values = (torch.randn(n, generator=g, dtype=torch.float64) * 1e3).to(dtype)
    if bad is not None:
        values[seed % n] = bad
    flag = float(_sum(values))
    assert math.isfinite(flag) == bool(torch.isfinite(values).all())  # oracle: isfinite


class ScaledLog(nn.Module):
    """A buffer saved by autograd (``h * scale``), then a log of negative values."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.lin(x) * self.scale)


def test_the_replay_waits_while_a_forward_pass_awaits_its_backward() -> None:
    """Two forward passes, one backward (a siamese loss): replaying the first bad pass while the
    second runs would restore the buffer in place under a live graph and break backward()."""
    torch.manual_seed(0)
    net = ScaledLog()
    x1, x2 = torch.randn(6, 4), torch.randn(6, 4)
    with gradscope.watch(net) as w:
        for _ in range(2):
            net.zero_grad()
            (net(x1).sum() + net(x2).sum()).backward()  # raised before: saved buffer modified
        assert not w.errors
        d = w.diagnose()
    assert d[0].kind == "nonfinite_forward", str(d)
    assert d[0].evidence["op"].startswith("torch.log at ")
    assert [r.passes for r in w._monitors.forward.records] == [[1], [1], [2], [2]]


def test_a_replaying_pass_follows_calls_without_checking_and_ends_cleanly() -> None:
    """Inside ``replaying_pass`` the hooks record no pass and no sum: they only follow the
    module calls and collect outputs that require grad; the flag and the call stack are reset
    when the body ends, also when it raises inside a module call."""
    net = Net(op="log")
    with gradscope.watch(net, check_forward=True) as w:
        monitor = w._monitors.forward
        assert monitor is not None
        inner: list[list[int]] = []

        def stop_in_last(*_: object) -> None:
            raise RuntimeError("stop")

        record = net.block.register_forward_pre_hook(lambda *_: inner.append(list(monitor.stack)))
        with monitor.replaying_pass():
            net(torch.randn(5, 4))
        # first.lin, first, block.lin, block, last and the root: each output once
        assert len(monitor.replay_outputs) == 6
        assert [monitor.paths[k] for k in inner[0]] == ["", "block"]  # calls in progress
        stop = net.last.register_forward_pre_hook(stop_in_last)
        monitor.stack.append(0)  # left over from a forward pass that raised
        with pytest.raises(RuntimeError, match="stop"), monitor.replaying_pass():
            assert monitor.replaying and monitor.stack == []
            monitor.stack.append(0)  # as a hook that is not always called would leave it
            net(torch.randn(5, 4))  # raises inside the root's call
        record.remove()
        stop.remove()
        assert not monitor.replaying and monitor.stack == []
        assert monitor.forwards == 0 and list(monitor.records) == []  # nothing was checked
        net(torch.randn(5, 4)).sum().backward()  # an ordinary pass afterwards is checked
        assert monitor.forwards == 1
