"""The recorder's parts, one behaviour each, against clones of ``.grad`` taken by hand.

Written against the mutants of ``gradscope/_watch/recorder.py`` that the broader watch tests let
live (see ``tools/mutate.py``): errors kept on the pass they happened in, passes that raise after
some gradients arrived, tensors autograd hands back, copies under ``create_graph=True``,
parameters removed before they ever had a gradient, and what ``keep="none"`` never copies.
"""

from __future__ import annotations

import copy
import gc
import weakref

import numpy as np
import pytest
import torch
from read_paths import FakeEvent
from torch import nn

import gradscope
import gradscope._watch.ending as ending_module
import gradscope._watch.keeping as keeping_module
import gradscope._watch.monitors as monitors_module
import gradscope._watch.recorder as recorder_module
from gradscope import GradscopeError, GradscopeWarning

pytestmark = pytest.mark.usefixtures("read_path")


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def _clones(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def test_an_error_inside_a_hook_is_kept_on_the_record_of_its_pass(monkeypatch) -> None:
    net, x = _net(), torch.randn(5, 4)
    twin = copy.deepcopy(net)
    failure = ValueError("hook failed on 0.bias")
    real = recorder_module.Recorder._held_entry

    def failing(self, name, grad, old, accumulates):  # type: ignore[no-untyped-def]
        if name == "0.bias":
            raise failure
        return real(self, name, grad, old, accumulates)

    with gradscope.watch(net, keep="all") as w:
        net(x).pow(2).sum().backward()  # .grad was None: no held entry, no failure
        monkeypatch.setattr(recorder_module.Recorder, "_held_entry", failing)
        net(x).pow(2).sum().backward()  # .grad exists: 0.bias's hook fails
    twin(x).pow(2).sum().backward()
    twin(x).pow(2).sum().backward()
    for (name, param), twin_param in zip(net.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(param.grad, twin_param.grad, msg=name)  # backward unharmed
    with pytest.warns(GradscopeWarning, match="hook failed on 0.bias"):
        first, second = w.records
    assert first.errors == []
    assert len(second.errors) == 1 and second.errors[0] is failure
    assert w.errors == [failure]
    assert "0.bias" not in second.grads and set(second.grads) == {"0.weight", "2.weight", "2.bias"}


def test_a_pass_that_raises_before_one_gradient_is_added_records_only_those_added() -> None:
    """A hook registered after the watch's raises: its parameter's ``.grad`` keeps its old value
    (same tensor, same version), so the failed pass must not record it as arrived."""
    net, x = _net(), torch.randn(5, 4)
    with gradscope.watch(net, keep="all") as w:
        for _ in range(2):  # the second adds into .grad in place: versions are not 0
            net(x).pow(2).sum().backward()
        before = _clones(net)
        loss = net(x).pow(2).sum()

        def refuse(grad: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("refused by a user hook")

        handle = net[0].weight.register_hook(refuse)  # after the watch's: runs after it
        with pytest.raises(RuntimeError, match="refused"):
            loss.backward()
        handle.remove()
        after = _clones(net)
        with pytest.warns(GradscopeWarning, match="pass 3 raised") as warned:
            record = w.last
    changed = {n for n in after if not torch.equal(after[n], before[n])}
    assert "0.weight" not in changed  # the oracle: torch never added into it
    assert record.failed and record.index == 3
    assert f"recorded with the {len(changed)} gradient(s) that arrived" in str(warned[0].message)
    assert set(record.grads) == changed
    assert "0.weight" in record.missing
    for name in changed:
        torch.testing.assert_close(record[name].before, before[name], rtol=0, atol=0)
        torch.testing.assert_close(record[name].after, after[name], rtol=0, atol=0)
        torch.testing.assert_close(record[name].delta, after[name] - before[name])


def test_the_tensor_autograd_grad_returns_is_recorded_as_itself() -> None:
    """Under torch.autograd.grad ``delta`` is the very tensor handed back: a later in-place
    change of it shows as ``modified`` instead of a stale copy being returned."""
    net, x = _net(), torch.randn(5, 4)
    with gradscope.watch(net) as w:
        (g,) = torch.autograd.grad(net(x).pow(2).sum(), [net[2].weight])
    record = w.last["2.weight"]
    expected = g.clone()
    assert not record.modified
    torch.testing.assert_close(record.delta, expected, rtol=0, atol=0)
    assert record.stats.norm == pytest.approx(float(expected.double().norm()), rel=1e-6)
    g.mul_(2.0)
    assert record.modified
    with pytest.raises(GradscopeError, match="changed in place"):
        record.delta  # noqa: B018
    assert record.stats.norm == pytest.approx(float(expected.double().norm()), rel=1e-6)


@pytest.mark.filterwarnings("ignore:Using backward.. with create_graph=True:UserWarning")
def test_create_graph_into_an_existing_grad_records_plain_tensors() -> None:
    """``backward(create_graph=True)`` hands the hook a gradient with a graph: the record holds a
    detached copy of what the pass added (``after - before``, from clones taken by hand)."""
    net, x = _net(), torch.randn(5, 4)
    with gradscope.watch(net, keep="all") as w:
        net(x).pow(2).sum().backward()
        before = _clones(net)
        net(x).pow(2).sum().backward(create_graph=True)
        after = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
    record = w.last
    for name in after:
        delta = record[name].delta
        assert delta is not None and not delta.requires_grad and delta.grad_fn is None
        torch.testing.assert_close(delta, after[name] - before[name])
        torch.testing.assert_close(record[name].before, before[name], rtol=0, atol=0)
    for param in net.parameters():
        param.grad = None  # create_graph=True: .grad holds a graph through the parameters


def test_removing_a_parameter_that_never_had_a_gradient_is_not_an_error() -> None:
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(2, 2)
            self.spare: nn.Parameter | None = nn.Parameter(torch.ones(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x).sum()

    net, x = WithSpare(), torch.randn(3, 2)
    with gradscope.watch(net) as w:
        net(x).backward()
        assert w.last.missing == ["spare"]
        net.spare = None
        net(x).backward()
    assert w.errors == []
    assert set(w.last) == {"used.weight", "used.bias"} and w.last.missing == []


def test_keep_none_never_copies_a_gradient(monkeypatch) -> None:
    copies: list[str] = []
    real = keeping_module.Keeper.copy

    def counting(self, name, tensor):  # type: ignore[no-untyped-def]
        copies.append(name)
        return real(self, name, tensor)

    monkeypatch.setattr(keeping_module.Keeper, "copy", counting)
    net, x = _net(), torch.randn(5, 4)
    norms = []
    with gradscope.watch(net, keep="none") as w:
        for _ in range(3):  # accumulating: .grad exists from the second pass on
            net(x).pow(2).sum().backward()
            norms.append(float(net[0].weight.grad.double().norm()))
    assert copies == []
    assert [r["0.weight"].stats.norm for r in w.records] == pytest.approx(norms, rel=1e-6)
    assert w.last["0.weight"].before is None and w.last["0.weight"].after is None


def test_the_host_copy_of_a_device_is_made_once(monkeypatch) -> None:
    made: list[torch.device] = []
    real = ending_module.host_copy_for

    def counting(device: torch.device):  # type: ignore[no-untyped-def]
        made.append(device)
        return real(device)

    monkeypatch.setattr(ending_module, "host_copy_for", counting)
    net, x = _net(), torch.randn(5, 4)
    with gradscope.watch(net) as w:
        for _ in range(3):
            net(x).pow(2).sum().backward()
    assert len(w.records) == 3 and w.last["0.weight"].stats.norm > 0
    assert made == [torch.device("cpu")]


def test_a_failed_pass_ends_at_the_next_forward_before_the_loop_zeroes_grad() -> None:
    """The failed pass is recorded with what had arrived when the next forward starts, not
    with what ``.grad`` holds after a ``zero_grad()`` the loop runs between forward and backward.
    """
    net, x = _net(), torch.randn(5, 4)
    with gradscope.watch(net) as w:
        loss = net(x).pow(2).sum()
        handle = net[0].weight.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("no")))
        with pytest.raises(RuntimeError, match="no"):
            loss.backward()
        handle.remove()
        arrived = _clones(net)
        loss = net(x).pow(2).sum()  # the next forward ends the failed pass
        net.zero_grad()
        loss.backward()
        with pytest.warns(GradscopeWarning, match="pass 1 raised"):
            failed, fine = w.records
    assert arrived and "0.weight" not in arrived
    assert failed.failed and not fine.failed
    assert set(failed.grads) == set(arrived) and "0.weight" in failed.missing
    for name, grad in arrived.items():
        assert failed[name].stats.norm == pytest.approx(float(grad.double().norm()), rel=1e-6)
    assert set(fine.grads) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_a_removed_parameter_leaves_no_reference_to_its_gradient() -> None:
    """Once its record leaves the history, nothing of the watch holds a removed parameter's
    last ``.grad`` (the copy-on-write list forgets it with the parameter)."""

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.ones(3))
            self.b: nn.Parameter | None = nn.Parameter(torch.ones(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * self.a * (self.b if self.b is not None else 1.0)).sum()

    net, x = Two(), torch.arange(3.0)
    with gradscope.watch(net, keep="all", history=1) as w:
        net(x).backward()
        assert net.b is not None and net.b.grad is not None
        gone = weakref.ref(net.b.grad)
        net.b = None
        for _ in range(2):
            net.zero_grad()
            net(x).backward()
        gc.collect()
        assert [r.index for r in w.records] == [3] and set(w.last) == {"a"}
        assert gone() is None


def test_before_is_copied_into_the_buffers_of_the_pass_let_go() -> None:
    """With copies (``copy=True``) under ``keep="last"`` each pass's ``before`` is written into
    a buffer of the previous pass (alive until then, so a fresh copy could not share its
    address), and holds exactly ``.grad`` as it was (clones taken by hand)."""
    net, x = _net(), torch.randn(5, 4)
    with gradscope.watch(net, keep="last", copy=True) as w:
        previous: set[int] = set()
        for step in range(4):
            before = _clones(net)
            net(x).pow(2).sum().backward()
            record = w.last["0.weight"]
            if step:
                assert record._before.data_ptr() in previous, step
                torch.testing.assert_close(record._before, before["0.weight"], rtol=0, atol=0)
            previous = {t.data_ptr() for t in (record._before, record._after) if t is not None}


class _Boom(torch.autograd.Function):
    """Identity forward; its backward raises."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom in backward")


def test_a_failed_pass_is_ended_by_the_next_backward_of_a_graph_built_before_it() -> None:
    """Both losses are built first, so no forward runs between the failed backward and the
    next one: that backward's first hook ends the failed pass, as failed, with what arrived."""
    net, x = _net(), torch.randn(5, 4)
    with gradscope.watch(net) as w:
        bad = net[2](_Boom.apply(net[1](net[0](x)))).sum()
        fine = net(x).pow(2).sum()
        with pytest.raises(RuntimeError, match="boom"):
            bad.backward()
        arrived = _clones(net)
        fine.backward()
        with pytest.warns(GradscopeWarning, match="pass 1 raised"):
            failed, whole = w.records
    assert set(arrived) == {"2.weight", "2.bias"}
    assert failed.failed and failed.index == 1 and set(failed.grads) == set(arrived)
    assert failed.missing == ["0.weight", "0.bias"]
    for name, grad in arrived.items():
        assert failed[name].stats.norm == pytest.approx(float(grad.double().norm()), rel=1e-6)
    assert not whole.failed and whole.index == 2 and len(whole.grads) == 4


class _SharedInsideAndOutside(nn.Module):
    """``shared`` runs inside a reentrant checkpoint (a nested backward) and outside it."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        inner = checkpoint(lambda h: torch.tanh(self.shared(h)), x, use_reentrant=True)
        return self.head(self.shared(inner)).sum()


def test_a_leaf_that_gets_two_gradients_in_one_pass_records_their_sum() -> None:
    torch.manual_seed(0)
    net = _SharedInsideAndOutside()
    twin = copy.deepcopy(net)
    x = torch.randn(4, 3, requires_grad=True)
    with gradscope.watch(net, keep="all") as w:
        net(x).backward()
        first = _clones(net)
        net(x * 2).backward()  # .grad exists: the pass's own gradient is held and summed
        second = _clones(net)
    assert [r.index for r in w.records] == [1, 2] and w.errors == []
    twin(x).backward()
    twin(x * 2).backward()
    for name, param in twin.named_parameters():
        torch.testing.assert_close(second[name], param.grad)
        record = w.last[name]
        torch.testing.assert_close(record.before, first[name], rtol=0, atol=0)
        torch.testing.assert_close(record.delta, second[name] - first[name])
        torch.testing.assert_close(record.before + record.delta, record.after)


def test_the_incoming_gradient_is_stored_in_grad_without_a_copy() -> None:
    """Where ``.grad`` is None torch moves the incoming gradient into ``.grad`` unless someone
    else holds it: the watch does not hold it (that would cost a copy per parameter)."""
    net, x = _net(), torch.randn(5, 4)
    seen: dict[str, int] = {}
    handles = [
        p.register_hook(lambda g, n=n: seen.__setitem__(n, g.data_ptr()))
        for n, p in net.named_parameters()
    ]
    with gradscope.watch(net) as w:
        net(x).pow(2).sum().backward()
    for handle in handles:
        handle.remove()
    for name, param in net.named_parameters():
        assert param.grad.data_ptr() == seen[name], name
        torch.testing.assert_close(w.last[name].after, param.grad, rtol=0, atol=0)


def test_a_sparse_gradient_is_recorded_as_it_is() -> None:
    torch.manual_seed(0)
    net = nn.Embedding(10, 3, sparse=True)
    tokens = torch.tensor([1, 4, 4, 7])
    with gradscope.watch(net, keep="all") as w:
        net(tokens).pow(2).sum().backward()
        first = net.weight.grad.to_dense().clone()
        net(tokens[:2]).pow(2).sum().backward()
        second = net.weight.grad.to_dense().clone()
    assert w.errors == []
    old, new = w.records[0]["weight"], w.records[1]["weight"]
    assert new.after.is_sparse and new.local is None
    torch.testing.assert_close(old.delta.to_dense(), first)
    torch.testing.assert_close(new.after.to_dense(), second)
    torch.testing.assert_close(new.before.to_dense(), first)
    torch.testing.assert_close(new.delta.to_dense(), second - first)
    assert new.stats.norm == pytest.approx(float(second.double().norm()), rel=1e-6)


class _OneBuffer:
    """A deferred HostCopy that, as ``CopyAsync`` does with its pinned memory, copies every
    pass's results into one reused host buffer: a pass must be read before the next copy."""

    deferred = True

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def __call__(self, values: torch.Tensor) -> tuple[torch.Tensor, FakeEvent]:
        if self.buffer is None or self.buffer.shape != values.shape:
            self.buffer = torch.empty_like(values)
        self.buffer.copy_(values)
        return self.buffer, FakeEvent()


def test_a_deferred_pass_is_read_before_the_next_pass_reuses_the_host_buffer(monkeypatch) -> None:
    one = _OneBuffer()
    monkeypatch.setattr(ending_module, "host_copy_for", lambda device: one)
    # as for a model on a CUDA device: the diagnosis does not read each pass as it ends
    monkeypatch.setattr(monitors_module, "_on_cpu", lambda params: False)
    net = _net()
    norms = []
    with gradscope.watch(net, keep="none") as w:
        for scale in (1.0, 10.0, 100.0):
            net.zero_grad()
            net(torch.randn(5, 4) * scale).pow(2).sum().backward()
            norms.append({n: float(p.grad.double().norm()) for n, p in net.named_parameters()})
    assert one.buffer is not None
    for record, expected in zip(w.records, norms, strict=True):
        for name, norm in expected.items():
            assert record[name].stats.norm == pytest.approx(norm, rel=1e-6), (record.index, name)


@pytest.mark.parametrize("options", [{}, {"keep": "none"}, {"copy": True}])
def test_large_cpu_gradients_have_their_norm_taken_in_the_hook(
    monkeypatch, read_path, options
) -> None:
    """From 65536 elements on, the hook measures a real CPU gradient while it is in cache (once
    per parameter and pass); smaller ones are measured together when the pass ends."""
    measured: list[tuple[int, torch.dtype]] = []
    real = recorder_module._vector_norm

    def counting(tensor: torch.Tensor, **kwargs: object) -> torch.Tensor:
        measured.append((tensor.numel(), kwargs["dtype"]))  # type: ignore[arg-type]
        return real(tensor, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(recorder_module, "_vector_norm", counting)
    at_the_end: list[int] = []
    fused = torch._foreach_norm

    def counting_fused(tensors, *args, **kwargs):  # type: ignore[no-untyped-def]
        at_the_end.extend(t.numel() for t in tensors)
        return fused(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_norm", counting_fused)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 255))  # 65536 and 65280 elements
    with gradscope.watch(net, check_forward=False, **options) as w:
        net(torch.randn(2, 256)).pow(2).sum().backward()
    assert measured == [(65536, torch.float32)]
    if read_path == "read-now":  # (a deferred read measures everything on the device)
        assert sorted(at_the_end) == [255, 256, 65280]  # not measured twice
    for name, param in net.named_parameters():
        expected = float(param.grad.double().norm())
        assert w.last[name].recorded.norm == pytest.approx(expected, rel=1e-6), name


@pytest.mark.parametrize(("dtype", "rel"), [(torch.bfloat16, 1e-5), (torch.float64, 1e-13)])
def test_a_large_gradient_is_measured_in_its_reduction_dtype(dtype: torch.dtype, rel: float):
    """float32 for narrower types (a bfloat16 sum would be off by about 1e-3), float64 for
    float64: the norm taken in the hook agrees with numpy-style float64 arithmetic."""
    torch.manual_seed(0)
    net = nn.Linear(256, 256).to(dtype)
    with gradscope.watch(net) as w:
        net(torch.randn(3, 256, dtype=dtype)).pow(2).sum().backward()
    expected = float(net.weight.grad.double().norm())
    assert w.errors == [] and not w.last["weight"].modified
    assert w.last["weight"].recorded.norm == pytest.approx(expected, rel=rel)


def test_a_removed_parameter_leaves_no_buffer_behind() -> None:
    """With copies, a parameter's dropped copies are kept as buffers for its next pass; once
    the parameter is removed from the model those buffers are let go too."""

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.ones(3))
            self.b: nn.Parameter | None = nn.Parameter(torch.ones(3))

        def forward(self, x: torch.Tensor, use_b: bool = True) -> torch.Tensor:
            return (x * self.a * (self.b if self.b is not None and use_b else 1.0)).sum()

    net, x = Two(), torch.arange(3.0)
    with gradscope.watch(net, keep="last", copy=True) as w:
        net(x).backward()
        copies = [w.last["b"]._after]
        refs = [weakref.ref(t) for t in copies if t is not None]
        del copies
        net.zero_grad()
        net(x, use_b=False).backward()  # b's copies wait as buffers for its next gradient
        net.b = None  # that never comes
        for _ in range(2):
            net(x).backward()
        gc.collect()
        assert set(w.last) == {"a"} and refs
        assert all(ref() is None for ref in refs)


def test_the_last_copies_of_a_removed_parameter_are_not_kept_as_buffers() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.ones(3))
            self.b: nn.Parameter | None = nn.Parameter(torch.ones(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * self.a * (self.b if self.b is not None else 1.0)).sum()

    net, x = Two(), torch.arange(3.0)
    with gradscope.watch(net, keep="last", copy=True) as w:
        for _ in range(2):
            net(x).backward()
        ref = weakref.ref(w.last["b"]._after)
        net.b = None
        for _ in range(2):  # the first of these lets go of the last pass's copies
            net(x).backward()
        gc.collect()
        assert set(w.last) == {"a"} and w.records[1].dropped == "keep"
        assert ref() is None


def test_a_failed_pass_ended_after_a_parameter_was_removed_keeps_the_others() -> None:
    """The failed pass ends at the next forward, after the loop removed a parameter that had
    received its gradient: that one is gone from the record, every other arrival stays."""
    net, x = _net(), torch.randn(5, 4)
    with gradscope.watch(net) as w:
        net(x).pow(2).sum().backward()
        before = _clones(net)
        loss = net(x).pow(2).sum()
        handle = net[0].weight.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("no")))
        with pytest.raises(RuntimeError, match="no"):
            loss.backward()
        handle.remove()
        after = _clones(net)
        net[2].bias = None  # removed before the pass was ended
        net(x)  # ends the failed pass
        with pytest.warns(GradscopeWarning, match="pass 2 raised"):
            failed = w.last
    changed = {n for n in after if not torch.equal(after[n], before[n])}
    assert changed == {"2.weight", "2.bias", "0.bias"}
    assert failed.failed and set(failed.grads) == changed - {"2.bias"}
    for name in failed.grads:
        torch.testing.assert_close(failed[name].delta, after[name] - before[name])


def test_closing_again_after_a_pass_is_harmless() -> None:
    """close() is idempotent: the second one finds nothing in flight (on the read-later path the
    first one read the last pass back), and the record keeps numpy's norm of the gradient."""
    net, x = _net(), torch.randn(5, 4)
    w = gradscope.watch(net)
    net(x).pow(2).sum().backward()
    expected = float(np.linalg.norm(net[0].weight.grad.double().numpy()))  # type: ignore[union-attr]
    w.close()
    w.close()
    assert w.last["0.weight"].stats.norm == pytest.approx(expected, rel=1e-6)
    assert w.errors == []
