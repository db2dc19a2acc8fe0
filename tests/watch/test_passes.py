"""One ``backward()`` call is one record: failed passes end, checkpointed passes stay whole.

The oracle is an unwatched twin of each model (same weights, same inputs), run alongside.
"""

from __future__ import annotations

import copy
import gc

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradscope
from gradscope import GradscopeWarning, UnknownParameterError

pytestmark = pytest.mark.usefixtures("read_path")


class Boom(torch.autograd.Function):
    """Identity forward; its backward raises (an error in a custom backward, OOM, Ctrl-C)."""

    error: type[BaseException] = RuntimeError

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        raise Boom.error("boom in backward")


class TwoStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, boom: bool = False) -> torch.Tensor:
        h = self.first(x)
        return self.second(Boom.apply(h) if boom else h)


def grads(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_backward_that_raises_is_recorded_as_failed_and_the_next_one_records(
    error: type[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Boom, "error", error)
    net = TwoStage()
    twin = copy.deepcopy(net)
    x = torch.randn(3, 4)
    w = gradscope.watch(net)
    with pytest.raises(error, match="boom"):
        net(x, boom=True).sum().backward()
    arrived = grads(net)
    with pytest.warns(GradscopeWarning, match="raised before it finished"):
        failed = w.last
    assert failed.failed and failed.index == 1 and not w.errors
    assert set(failed) == set(arrived) == {"second.weight", "second.bias"}
    assert failed.missing == ["first.weight", "first.bias"]
    with pytest.raises(UnknownParameterError, match="raised before it reached"):
        failed["first.weight"]
    for name, grad in arrived.items():
        torch.testing.assert_close(failed[name].after, grad, rtol=0, atol=0)
    assert "raised before it finished" in str(w.summary())

    net.zero_grad()
    net(x).sum().backward()  # the next backward records normally
    twin(x).sum().backward()
    assert [r.index for r in w.records] == [1, 2]
    assert not w.last.failed and not w.last.missing
    for name, param in twin.named_parameters():
        torch.testing.assert_close(w.last[name].after, param.grad)
    w.close()


def test_a_failed_pass_is_ended_by_the_next_backward_without_a_forward() -> None:
    net = TwoStage()
    x = torch.randn(3, 4)
    with gradscope.watch(net, every=2) as w:
        fine = net(x).sum()
        bad = net(x, boom=True).sum()
        with pytest.raises(RuntimeError):
            bad.backward()  # pass 1, recorded, fails
        with pytest.raises(RuntimeError):
            net(x, boom=True).sum().backward()  # pass 2, skipped by every=2, fails
        fine.backward()  # pass 3: recorded, whole
        with pytest.warns(GradscopeWarning, match="raised"):
            records = w.records
    assert [(r.index, r.failed) for r in records] == [(1, True), (3, False)]
    assert set(records[1]) == {"first.weight", "first.bias", "second.weight", "second.bias"}


class Block(nn.Module):
    """A transformer-style block: attention, MLP, layer norms, residuals."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.norm1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        return h + self.mlp(self.norm2(h))


class TinyLM(nn.Module):
    """Checkpoints its blocks as Hugging Face models do after gradient_checkpointing_enable()."""

    def __init__(self, use_reentrant: bool | None) -> None:
        super().__init__()
        self.wte = nn.Embedding(50, 16)
        self.blocks = nn.ModuleList(Block(16) for _ in range(3))
        self.lm_head = nn.Linear(16, 50, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.use_reentrant = use_reentrant

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.wte(tokens)
        for block in self.blocks:
            if self.use_reentrant is None:
                h = block(h)
            else:
                h = checkpoint(block, h, use_reentrant=self.use_reentrant)
        out: torch.Tensor = self.lm_head(h)
        return out


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpointed_blocks_give_one_record_per_backward(use_reentrant: bool) -> None:
    torch.manual_seed(0)
    net = TinyLM(use_reentrant)
    twin = TinyLM(None)
    twin.load_state_dict(net.state_dict())
    tokens = torch.randint(0, 50, (2, 7))
    with gradscope.watch(net, keep="all") as w:
        for _ in range(2):  # accumulate: before and delta across checkpointed passes
            net(tokens).logsumexp(-1).sum().backward()
    for _ in range(2):
        twin(tokens).logsumexp(-1).sum().backward()
    assert [r.index for r in w.records] == [1, 2]
    for record in w.records:
        assert not record.missing and not record.failed
        assert set(record) == {n for n, _ in twin.named_parameters()}
    for name, param in twin.named_parameters():
        torch.testing.assert_close(w.last[name].after, param.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(w.records[0][name].after, w.last[name].before)
        torch.testing.assert_close(w.last[name].before + w.last[name].delta, w.last[name].after)


def test_nested_reentrant_checkpoints_with_no_parameter_outside_them() -> None:
    """Every parameter hook fires inside a nested backward (two sibling segments, one holding
    another checkpoint): the pass must end once, when the outer backward() does."""
    torch.manual_seed(0)
    net = nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.Linear(3, 3), "c": nn.Linear(3, 3)})

    def segment(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(net["c"](checkpoint(net["b"], x, use_reentrant=True)))

    def loss(x: torch.Tensor) -> torch.Tensor:
        h = checkpoint(net["a"], x, use_reentrant=True)
        return checkpoint(segment, h, use_reentrant=True).pow(2).sum()

    x = torch.randn(4, 3, requires_grad=True)
    loss(x).backward()
    expected = grads(net)
    net.zero_grad()
    with gradscope.watch(net) as w:
        for _ in range(2):
            net.zero_grad()
            loss(x).backward()
    assert [r.index for r in w.records] == [1, 2]
    assert not w.last.missing
    for name, grad in expected.items():
        torch.testing.assert_close(w.last[name].after, grad)


def test_a_callback_queued_during_backward_runs_before_the_pass_ends() -> None:
    """DistributedDataParallel writes the averaged gradients from an engine callback queued
    during the pass; the watch's end-of-pass callback runs again after such callbacks, so the
    record holds what they wrote (here: the callback doubles every ``.grad``)."""
    from torch.autograd import Variable

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x = torch.randn(5, 4)

    def double_every_grad() -> None:
        for param in net.parameters():
            param.grad.mul_(2.0)

    # the first layer's gradients arrive last, long after the watch's callback was queued
    handle = net[0].weight.register_post_accumulate_grad_hook(
        lambda p: Variable._execution_engine.queue_callback(double_every_grad)
    )
    with gradscope.watch(net) as w:
        net(x).pow(2).sum().backward()
    handle.remove()
    assert w.errors == []
    for name, param in net.named_parameters():
        record = w.last[name]
        assert not record.modified, name
        torch.testing.assert_close(record.after, param.grad, rtol=0, atol=0)
        assert record.stats.norm == pytest.approx(float(param.grad.double().norm()), rel=1e-6)


def test_a_hook_after_the_watch_that_changes_nothing_keeps_the_norm_taken_in_the_hook() -> None:
    """A hook registered after the watch's makes the watch read the final gradient at the
    accumulator; when that hook only looks, the gradient is the one measured (65536 elements:
    measured inside the hook), and the record's norm is still numpy's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 2))
    x = torch.randn(3, 256)
    seen: list[int] = []
    with gradscope.watch(net) as w:
        loss = net(x).sum()
        handle = net[0].weight.register_hook(lambda g: seen.append(g.numel()))
        loss.backward()
        handle.remove()
    assert seen == [65536] and w.errors == []
    for name, param in net.named_parameters():
        expected = float(np.linalg.norm(param.grad.double().numpy().ravel()))
        assert w.last[name].stats.norm == pytest.approx(expected, rel=1e-6), name


@pytest.mark.filterwarnings("ignore:Using backward.. with create_graph=True:UserWarning")
def test_create_graph_with_a_hook_after_the_watch_records_a_plain_tensor() -> None:
    """With ``create_graph=True`` the final gradient a later hook returns carries a graph: the
    record holds a detached copy of it (what the pass added, from clones taken by hand)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    with gradscope.watch(net) as w:
        net(x).pow(2).sum().backward()
        before = net[2].weight.grad.detach().clone()
        loss = net(x).pow(2).sum()
        handle = net[2].weight.register_hook(lambda g: g * 2)
        loss.backward(create_graph=True)
        handle.remove()
        after = net[2].weight.grad.detach().clone()
    delta = w.last["2.weight"].delta
    assert delta is not None and not delta.requires_grad and delta.grad_fn is None
    torch.testing.assert_close(delta, after - before)
    for param in net.parameters():
        param.grad = None  # create_graph=True: .grad holds a graph through the parameters


def test_a_nested_pass_leaves_nothing_on_the_graph_the_user_keeps() -> None:
    """A reentrant checkpoint ends its nested pass through a hook on the checkpoint's node; once
    the pass has ended that hook is gone, so the graph the user still holds (``loss``) keeps
    nothing of the pass alive (its end-of-pass callback, which holds the pass's gradients)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    x = torch.randn(4, 3, requires_grad=True)
    passes = []
    with gradscope.watch(net) as w:
        recorder = w._recorder
        handle = net[0].weight.register_hook(lambda g: passes.append(recorder._pass))
        loss = checkpoint(net, x, use_reentrant=True).pow(2).sum()
        loss.backward()
        handle.remove()
        gc.collect()
        assert len(passes) == 1 and passes[0].end() is None
        assert loss.grad_fn is not None  # the graph is still held
    assert [r.index for r in w.records] == [1] and w.errors == []


def test_closing_after_a_failed_nested_pass_lets_go_of_the_graph_the_user_keeps() -> None:
    """A custom backward runs a nested backward (its pass then waits on the custom node, as a
    checkpoint's does) and raises: the node never finishes, and the user still holds the graph.
    ``close()`` must take the watch's hook off that node, so the graph keeps nothing of it."""
    torch.manual_seed(0)
    net = nn.Linear(3, 3)

    class NestedThenRaise(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        @staticmethod
        def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                net(torch.ones(2, 3)).sum().backward()  # reaches the watched parameters
            raise RuntimeError("after the nested backward")

    passes = []
    w = gradscope.watch(net)
    handle = net.weight.register_hook(lambda g: passes.append(w._recorder._pass))
    out = NestedThenRaise.apply(torch.randn(2, 3, requires_grad=True)).sum()
    with pytest.raises(RuntimeError, match="after the nested backward"):
        out.backward()
    handle.remove()
    assert len(passes) == 1 and passes[0].end() is not None  # held by the unfinished node
    w.close()
    gc.collect()
    assert passes[0].end() is None and out.grad_fn is not None


def test_closing_the_watch_from_a_hook_inside_backward_leaves_backward_unharmed() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    twin = copy.deepcopy(net)
    x = torch.randn(5, 4)
    w = gradscope.watch(net)
    handle = net[2].weight.register_hook(lambda g: w.close())  # mid-pass, ours ran before
    net(x).pow(2).sum().backward()
    handle.remove()
    twin(x).pow(2).sum().backward()
    assert w.closed and w.errors == [] and len(w.records) == 0  # the pass never ended
    for (name, param), twin_param in zip(net.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(param.grad, twin_param.grad, msg=name)


def test_a_nested_pass_also_waits_for_callbacks_queued_after_it_moved_out() -> None:
    """A reentrant checkpoint's pass moves to the outer backward when the checkpoint's node
    finishes; a callback queued later in the outer backward (DDP queues one when its last bucket
    is ready) still runs before the pass ends: here it doubles every ``.grad``."""
    from torch.autograd import Variable

    torch.manual_seed(0)
    outside, inside = nn.Linear(4, 3), nn.Linear(3, 2)
    net = nn.ModuleDict({"outside": outside, "inside": inside})

    def double_every_grad() -> None:
        for param in net.parameters():
            param.grad.mul_(2.0)

    # ``outside`` is reached after the checkpoint's node in backward
    handle = outside.weight.register_post_accumulate_grad_hook(
        lambda p: Variable._execution_engine.queue_callback(double_every_grad)
    )
    x = torch.randn(5, 4)
    with gradscope.watch(net) as w:
        checkpoint(inside, torch.tanh(outside(x)), use_reentrant=True).pow(2).sum().backward()
    handle.remove()
    assert w.errors == [] and [r.index for r in w.records] == [1]
    for name, param in net.named_parameters():
        assert not w.last[name].modified, name
        torch.testing.assert_close(w.last[name].after, param.grad, rtol=0, atol=0)
