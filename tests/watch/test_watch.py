"""watch(): the recorded gradients against what PyTorch itself leaves in .grad."""

from __future__ import annotations

import gc
import itertools
import weakref

import pytest
import torch
from torch import nn

import gradscope
from gradscope import GradscopeError, UnknownParameterError

pytestmark = pytest.mark.usefixtures("read_path")


def backward(net: nn.Module, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
    loss = net(x).pow(2).sum()
    loss.backward(**kwargs)  # type: ignore[no-untyped-call]
    return loss


def test_records_before_after_and_delta(lenet: nn.Module, lenet_input: torch.Tensor) -> None:
    with gradscope.watch(lenet) as w:
        lenet.zero_grad()
        backward(lenet, lenet_input)
    record = w.last["conv1.bias"]
    assert record.before is None  # zero_grad() sets .grad to None by default
    assert torch.equal(record.after, lenet.conv1.bias.grad)
    assert torch.equal(record.delta, lenet.conv1.bias.grad)
    assert record.after.shape == (6,)
    assert set(w.last) == {name for name, _ in lenet.named_parameters()}


def test_gradient_accumulation(lenet: nn.Module) -> None:
    k = 4
    with gradscope.watch(lenet, keep="all") as w:
        for _ in range(k):
            backward(lenet, torch.randn(2, 1, 32, 32))
    assert [r.index for r in w.records] == [1, 2, 3, 4]
    for name, param in lenet.named_parameters():
        history = w.history(name)
        assert len(history) == k
        assert history[0].before is None
        total = sum(r.delta for r in history)
        torch.testing.assert_close(total, param.grad)
        for previous, current in itertools.pairwise(history):
            assert torch.equal(current.before, previous.after)
            torch.testing.assert_close(current.before + current.delta, current.after)
        assert torch.equal(history[-1].after, param.grad)


def test_zero_grad_set_to_none_false_gives_zero_before(lenet: nn.Module, lenet_input) -> None:
    with gradscope.watch(lenet) as w:
        backward(lenet, lenet_input)
        lenet.zero_grad(set_to_none=False)
        backward(lenet, lenet_input)
    before = w.last["fc1.weight"].before
    assert before is not None and torch.count_nonzero(before) == 0
    # oracle: the gradient of one pass alone, taken by torch.autograd.grad outside the watch
    (alone,) = torch.autograd.grad(lenet(lenet_input).pow(2).sum(), [lenet.fc1.weight])
    torch.testing.assert_close(w.last["fc1.weight"].after, alone)
    torch.testing.assert_close(w.last["fc1.weight"].delta, alone)


def test_in_place_change_after_the_pass_is_detected_not_hidden(lenet, lenet_input) -> None:
    with gradscope.watch(lenet, keep="all") as w:
        backward(lenet, lenet_input)
        norm = float(lenet.fc1.weight.grad.norm())
        nn.utils.clip_grad_norm_(lenet.parameters(), 1e-3)  # modifies .grad in place
        clipped = lenet.fc1.weight.grad.clone()
        backward(lenet, lenet_input)
    first = w.records[0]["fc1.weight"]
    assert first.modified
    with pytest.raises(GradscopeError, match=r"changed in place.*copy=True"):
        first.after  # noqa: B018
    assert first.stats.norm == pytest.approx(norm)  # recorded when the pass ended
    assert torch.equal(w.last["fc1.weight"].before, clipped)


def test_copy_true_keeps_exact_copies_through_in_place_changes(lenet, lenet_input) -> None:
    with gradscope.watch(lenet, keep="all", copy=True) as w:
        backward(lenet, lenet_input)
        unclipped = lenet.fc1.weight.grad.clone()
        nn.utils.clip_grad_norm_(lenet.parameters(), 1e-3)
        clipped = lenet.fc1.weight.grad.clone()
        backward(lenet, lenet_input)
    assert torch.equal(w.records[0]["fc1.weight"].after, unclipped)
    assert torch.equal(w.last["fc1.weight"].before, clipped)
    torch.testing.assert_close(w.last["fc1.weight"].after, lenet.fc1.weight.grad)


def test_reading_after_never_aliases_the_live_grad(lenet, lenet_input) -> None:
    with gradscope.watch(lenet) as w:
        backward(lenet, lenet_input)
        after = w.last["fc3.bias"].after
        after.zero_()  # the user's copy: the model's .grad must not change
    assert torch.count_nonzero(lenet.fc3.bias.grad) > 0


def test_keep_modes(lenet: nn.Module, lenet_input) -> None:
    with gradscope.watch(lenet, keep="last") as w:
        backward(lenet, lenet_input)
        first = w.last["fc3.bias"]
        first_mean = first.stats.mean
        backward(lenet, lenet_input)
    assert first.after is None and first.delta is None  # dropped, statistics stay
    assert first.stats.norm > 0 and first.stats.mean == first_mean
    assert w.last["fc3.bias"].after is not None
    with gradscope.watch(lenet, keep="none") as w:
        backward(lenet, lenet_input)
    record = w.last["fc3.bias"]
    assert record.after is None and record.delta is None
    assert record.stats.norm == pytest.approx(float(lenet.fc3.bias.grad.norm()), rel=1e-6)


def test_every_and_history(lenet: nn.Module, lenet_input) -> None:
    with gradscope.watch(lenet, every=3, history=2) as w:
        for _ in range(9):
            backward(lenet, lenet_input)
    assert [r.index for r in w.records] == [4, 7]


def test_include_exclude(lenet: nn.Module, lenet_input) -> None:
    with gradscope.watch(lenet, include="fc*", exclude=["*.bias"]) as w:
        backward(lenet, lenet_input)
    assert set(w.last) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    with pytest.raises(GradscopeError, match="no parameters"):
        gradscope.watch(lenet, include="nothing.*")


def test_retain_graph_twice_and_double_backward() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(5, 3)
    with gradscope.watch(net, keep="all") as w:
        loss = net(x).sum()
        loss.backward(retain_graph=True)
        loss.backward()
    assert len(w.records) == 2
    torch.testing.assert_close(w.records[1]["0.weight"].delta, w.records[0]["0.weight"].delta)
    net.zero_grad()
    with gradscope.watch(net, keep="all") as w:
        loss = net(x).sum()
        grads = torch.autograd.grad(loss, list(net.parameters()), create_graph=True)
        penalty = sum(g.pow(2).sum() for g in grads)
        penalty.backward()
    first, second = w.records
    assert not first.grads["0.weight"].accumulated  # autograd.grad leaves .grad alone
    torch.testing.assert_close(first["0.weight"].delta, grads[0].detach())
    assert second["0.weight"].accumulated
    assert not second["0.weight"].after.requires_grad
    torch.testing.assert_close(second["0.weight"].after, net[0].weight.grad)


def test_autograd_grad_is_recorded_without_touching_grad(lenet, lenet_input) -> None:
    with gradscope.watch(lenet) as w:
        (g,) = torch.autograd.grad(lenet(lenet_input).sum(), [lenet.fc3.bias])
    record = w.last["fc3.bias"]
    assert record.accumulated is False
    assert torch.equal(record.delta, g)
    assert record.before is None and record.after is None and lenet.fc3.bias.grad is None
    assert record.stats.norm == pytest.approx(float(g.norm()))
    assert "conv1.weight" in w.last.missing


def test_unused_and_frozen_parameters() -> None:
    net = nn.ModuleDict({"used": nn.Linear(2, 2), "unused": nn.Linear(2, 2)})
    net["used"].bias.requires_grad_(False)
    with gradscope.watch(net) as w:
        net["used"](torch.randn(1, 2)).sum().backward()
        record = w.last
    assert record.missing == ["unused.weight", "unused.bias"]
    assert record.frozen == ["used.bias"]
    with pytest.raises(UnknownParameterError, match="received no gradient"):
        record["unused.weight"]
    with pytest.raises(UnknownParameterError, match="requires_grad=False"):
        record["used.bias"]
    assert "frozen" in str(w.summary()) and "no gradient" in str(w.summary())


def test_freezing_and_unfreezing_after_watch_started() -> None:
    net = nn.Linear(2, 1)
    net.bias.requires_grad_(False)
    x = torch.randn(3, 2)
    with gradscope.watch(net) as w:
        net(x).sum().backward()
        assert w.last.frozen == ["bias"]
        net.bias.requires_grad_(True)
        net.weight.requires_grad_(False)
        net(x).sum().backward()
    assert w.last.frozen == ["weight"]
    assert set(w.last) == {"bias"}
    torch.testing.assert_close(w.last["bias"].after, torch.tensor([3.0]))


def test_replaced_parameter_is_followed() -> None:
    net = nn.Linear(2, 1)
    x = torch.randn(3, 2)
    with gradscope.watch(net) as w:
        net(x).sum().backward()
        net.weight = nn.Parameter(torch.zeros(1, 2))
        net(x).sum().backward()
    assert w.last.replaced == ["weight"]
    assert torch.equal(w.last["weight"].after, net.weight.grad)
    assert "replaced" in str(w.summary())


def test_parameters_added_and_removed_after_watch_started_are_followed() -> None:
    """A parameter set to None drops out (its last record lets go of its tensor at the next
    forward); one registered later is hooked and recorded from the next pass on."""

    class Growing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.ones(3))
            self.b: nn.Parameter | None = nn.Parameter(torch.ones(3))
            self.c: nn.Parameter | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x * self.a
            for extra in (self.b, self.c):
                if extra is not None:
                    out = out * extra
            return out.sum()

    net = Growing()
    x = torch.arange(3.0)
    with gradscope.watch(net) as w:
        net(x).backward()
        first = w.last
        assert set(first) == {"a", "b"}
        net.b = None  # removed: nn.Module keeps the slot, holding None
        net.zero_grad()
        net(x).backward()
        assert set(w.last) == {"a"} and not w.last.missing
        assert first.dropped == "keep" and first["b"].after is None
        net.c = nn.Parameter(torch.full((3,), 2.0))
        net.zero_grad()
        net(x).backward()
    assert set(w.last) == {"a", "c"}
    torch.testing.assert_close(w.last["c"].after, x)
    torch.testing.assert_close(w.last["a"].after, 2 * x)


def test_a_replaced_submodule_is_followed() -> None:
    """Its new parameters are hooked and recorded, not reported missing (they were, before the
    change check covered submodule slots)."""
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    x = torch.randn(4, 2)
    with gradscope.watch(net) as w:
        net(x).sum().backward()
        net[1] = nn.Linear(2, 1)
        net.zero_grad()
        net(x).sum().backward()
    assert not w.last.missing and sorted(w.last.replaced) == ["1.bias", "1.weight"]
    assert torch.equal(w.last["1.weight"].after, net[1].weight.grad)


def test_weight_tying_gives_one_record_for_every_alias() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(7, 4)
            self.decoder = nn.Linear(4, 7, bias=False)
            self.decoder.weight = self.embed.weight

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.decoder(self.embed(tokens))
            return out

    net = Tied()
    with gradscope.watch(net) as w:
        net(torch.tensor([1, 2, 3])).sum().backward()
    assert w.last["decoder.weight"] is w.last["embed.weight"]
    assert set(w.last) == {"embed.weight"}
    assert w.last["embed.weight"].aliases == ("decoder.weight",)
    torch.testing.assert_close(w.last["decoder.weight"].after, net.embed.weight.grad)
    assert len(w.history("decoder.weight")) == 1


def test_torch_compile_gives_the_same_records_as_eager() -> None:
    torch._dynamo.reset()
    eager = gradscope.LeNet()
    compiled_net = gradscope.LeNet()
    compiled_net.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_net, backend="aot_eager")
    x = torch.randn(2, 1, 32, 32)
    with gradscope.watch(eager) as we, gradscope.watch(compiled) as wc:
        # no per-module hooks under torch.compile (they would break its graph); eager has them
        assert not any(m._forward_pre_hooks or m._forward_hooks for m in compiled_net.modules())
        assert all(m._forward_pre_hooks and m._forward_hooks for m in eager.children())
        for _ in range(2):
            eager(x).sum().backward()
            compiled(x).sum().backward()
    assert set(wc.last) == set(we.last)
    for name in we.last:
        torch.testing.assert_close(wc.last[name].after, we.last[name].after)
        torch.testing.assert_close(wc.last[name].before, we.last[name].before)
        assert wc.last[name].stats.norm == pytest.approx(we.last[name].stats.norm, rel=1e-5)


def test_grad_scaler_statistics_are_unscaled_and_skips_are_marked() -> None:
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    reference = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    reference.load_state_dict(net.state_dict())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(4, 8)
    with gradscope.watch(net, scaler=scaler) as w:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net(x).float().pow(2).mean()
        scaler.scale(loss).backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference(x).float().pow(2).mean().backward()
    record = w.last
    assert record.loss_scale == 1024.0 and record.scaler_skipped is False
    raw = net[0].weight.grad
    unscaled = float(reference[0].weight.grad.norm())
    assert float(raw.norm()) == pytest.approx(1024 * unscaled, rel=1e-4)
    assert record["0.weight"].stats.norm == pytest.approx(unscaled, rel=1e-4)
    assert record["0.weight"].stats.abs_max == pytest.approx(
        float(reference[0].weight.grad.abs().max()), rel=1e-4
    )
    assert "unscaled by GradScaler scale 1024" in str(w.summary())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradscope.watch(net, scaler=scaler) as w:
        net.zero_grad()
        loss = net(x).float().pow(2).mean() * torch.tensor(float("inf"))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    assert w.last.scaler_skipped is True
    assert w.last.nonfinite and scaler.get_scale() < 1024.0


def test_close_is_idempotent_and_removes_hooks(lenet, lenet_input) -> None:
    w = gradscope.watch(lenet)
    backward(lenet, lenet_input)
    w.close()
    w.close()
    backward(lenet, lenet_input)
    assert len(w.records) == 1
    assert all(not p._backward_hooks for p in lenet.parameters())
    assert not lenet._forward_pre_hooks


def test_context_manager_removes_hooks_on_exception(lenet) -> None:
    with pytest.raises(ValueError, match="boom"), gradscope.watch(lenet):
        raise ValueError("boom")
    assert all(not p._backward_hooks for p in lenet.parameters())


def test_model_is_garbage_collected_after_close_and_after_dropping_both() -> None:
    net = gradscope.LeNet()
    w = gradscope.watch(net)
    backward(net, torch.randn(1, 1, 32, 32))
    w.close()
    ref = weakref.ref(net)
    del net
    gc.collect()
    assert ref() is None
    net = gradscope.LeNet()
    w = gradscope.watch(net)
    backward(net, torch.randn(1, 1, 32, 32))
    refs = weakref.ref(net), weakref.ref(w)
    del net, w
    gc.collect()
    assert refs[0]() is None and refs[1]() is None


def test_bad_input_is_explained() -> None:
    with pytest.raises(GradscopeError, match=r"takes an nn\.Module, not int 42"):
        gradscope.watch(42)  # type: ignore[arg-type]
    with pytest.raises(GradscopeError, match=r"not a tensor of shape \(3,\)"):
        gradscope.watch(torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(GradscopeError, match="keep="):
        gradscope.watch(nn.Linear(1, 1), keep="some")  # type: ignore[arg-type]
    with pytest.raises(GradscopeError, match="every="):
        gradscope.watch(nn.Linear(1, 1), every=0)
    with pytest.raises(GradscopeError, match="no parameters"):
        gradscope.watch(nn.ReLU())


def test_unknown_name_suggests_close_ones(lenet, lenet_input) -> None:
    with gradscope.watch(lenet) as w:
        backward(lenet, lenet_input)
    with pytest.raises(UnknownParameterError, match=r"did you mean 'fc1\.weight'"):
        w.last["fc1.wieght"]
    with pytest.raises(KeyError):
        w.history("conv9.bias")


def test_last_before_any_backward_says_why(lenet, lenet_input) -> None:
    w = gradscope.watch(lenet)
    with torch.no_grad():
        lenet(lenet_input)
    with pytest.raises(GradscopeError, match=r"no backward pass was recorded yet.*no_grad"):
        w.last  # noqa: B018
    w.close()
    with pytest.raises(GradscopeError, match="closed"):
        w.last  # noqa: B018


def test_watch_and_Watch_take_the_same_options() -> None:
    """watch() repeats Watch()'s keyword options: names, kinds, defaults and types must agree,
    and its docstring must say what each one does."""
    import inspect

    function = inspect.signature(gradscope.watch)
    method = inspect.signature(gradscope.Watch.__init__)
    ours = list(function.parameters.values())
    theirs = [p for name, p in method.parameters.items() if name != "self"]
    assert ours == theirs
    doc = gradscope.watch.__doc__ or ""
    for p in ours[1:]:
        assert f"``{p.name}" in doc, p.name
