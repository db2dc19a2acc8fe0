"""How a pass's records are assembled, one case each, against clones of ``.grad`` and torch.

Written against the mutants of ``gradscope/_watch/assembly.py`` that the broader watch tests let
live (see ``tools/mutate.py``): a norm taken in the hook that no longer describes ``.grad``,
``torch.autograd.grad`` next to an existing ``.grad``, and loss scales of scalers that are off.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

import gradscope
import gradscope._watch.assembly as assembly_module
from gradscope._watch.records import GradRecord

pytestmark = pytest.mark.usefixtures("read_path")

BIG = 300  # a 300x300 weight: large enough that the hook takes its norm while it is hot


def _big_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(BIG, BIG), nn.Tanh(), nn.Linear(BIG, 2))


@pytest.mark.parametrize(("keep", "copy"), [("last", False), ("none", False), ("last", True)])
@pytest.mark.parametrize("change", ["in-place", "replaced"])
def test_a_norm_taken_in_the_hook_is_dropped_when_grad_changes_after_it(
    keep: str, copy: bool, change: str
) -> None:
    """A post-accumulate-grad hook doubles ``.grad`` (in place, or by a new tensor) after the
    watch's hook measured the incoming gradient: the recorded norm is the final ``.grad``'s."""
    net, x = _big_net(), torch.randn(3, BIG)
    weight = net[0].weight
    assert weight.numel() >= 1 << 16

    def double(param: torch.Tensor) -> None:
        if change == "in-place":
            param.grad.mul_(2.0)
        else:
            param.grad = param.grad * 2.0

    handle = weight.register_post_accumulate_grad_hook(double)
    with gradscope.watch(net, keep=keep, copy=copy) as w:  # type: ignore[arg-type]
        net(x).pow(2).sum().backward()
        final = weight.grad.clone()
    handle.remove()
    expected = float(final.double().norm())
    assert w.last["0.weight"].recorded.norm == pytest.approx(expected, rel=1e-6)
    assert w.last["0.weight"].stats.norm == pytest.approx(expected, rel=1e-6)
    unchanged = float(net[2].weight.grad.double().norm())
    assert w.last["2.weight"].stats.norm == pytest.approx(unchanged, rel=1e-6)


@pytest.mark.parametrize("keep", ["last", "none"])
def test_a_big_gradient_stored_as_is_keeps_the_norm_taken_in_the_hook(keep: str) -> None:
    net, x = _big_net(), torch.randn(3, BIG)
    with gradscope.watch(net, keep=keep) as w:  # type: ignore[arg-type]
        net(x).pow(2).sum().backward()
    for name, param in net.named_parameters():
        expected = float(param.grad.double().norm())
        assert w.last[name].recorded.norm == pytest.approx(expected, rel=1e-6), name


def test_autograd_grad_next_to_an_existing_grad_leaves_before_and_after_as_they_were() -> None:
    torch.manual_seed(0)
    net, x = nn.Linear(3, 2), torch.randn(4, 3)
    with gradscope.watch(net, keep="all") as w:
        net(x).pow(2).sum().backward()
        existing = net.weight.grad.clone()
        (g,) = torch.autograd.grad(net(x).sum(), [net.weight])
    record = w.last["weight"]
    assert w.last.index == 2 and record.accumulated is False
    torch.testing.assert_close(net.weight.grad, existing, rtol=0, atol=0)
    torch.testing.assert_close(record.before, existing, rtol=0, atol=0)
    torch.testing.assert_close(record.after, existing, rtol=0, atol=0)
    torch.testing.assert_close(record.delta, g, rtol=0, atol=0)
    assert record.stats.norm == pytest.approx(float(g.double().norm()), rel=1e-6)
    assert w.last.missing == ["bias"]
    first = w.records[0]["weight"]  # autograd.grad did not touch .grad: still readable
    assert not first.modified
    torch.testing.assert_close(first.after, existing, rtol=0, atol=0)


def test_autograd_grad_with_keep_none_records_statistics_only() -> None:
    torch.manual_seed(0)
    net, x = nn.Linear(3, 2), torch.randn(4, 3)
    with gradscope.watch(net, keep="none") as w:
        (g,) = torch.autograd.grad(net(x).pow(2).sum(), [net.bias])
    record = w.last["bias"]
    assert record.accumulated is False
    assert record.before is None and record.after is None and record.delta is None
    assert record.stats.norm == pytest.approx(float(g.double().norm()), rel=1e-6)
    assert record.stats.numel == 2 and not record.modified


class _Scaler:
    """A duck-typed scaler: ``get_scale`` only (no ``is_enabled``, no per-optimizer state)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def get_scale(self) -> float:
        return self.scale


@pytest.mark.parametrize("enabled", [True, False])
def test_the_loss_scale_is_recorded_only_for_an_enabled_scaler(enabled: bool) -> None:
    torch.manual_seed(0)
    net, x = nn.Linear(3, 2), torch.randn(4, 3)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0, enabled=enabled)
    with gradscope.watch(net, scaler=scaler) as w:
        scaler.scale(net(x).pow(2).sum()).backward()
        grad = net.weight.grad.clone()
    scale = 256.0 if enabled else None
    assert w.last.loss_scale == scale and w.last["weight"].loss_scale == scale
    expected = float(grad.double().norm()) / (256.0 if enabled else 1.0)
    assert w.last["weight"].stats.norm == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(w.last["weight"].after, grad)  # the tensor itself, unscaled


def test_a_scaler_without_is_enabled_is_taken_as_enabled() -> None:
    torch.manual_seed(0)
    net, x = nn.Linear(3, 2), torch.randn(4, 3)
    with gradscope.watch(net, scaler=_Scaler(8.0)) as w:
        (net(x).pow(2).sum() * 8.0).backward()
        grad = net.weight.grad.clone()
    assert w.last.loss_scale == 8.0
    assert w.last["weight"].stats.norm == pytest.approx(float(grad.double().norm()) / 8.0)
    assert not w.last["weight"].modified  # no GradScaler state to say it ran: it did not
    torch.testing.assert_close(w.last["weight"].after, grad, rtol=0, atol=0)


def test_every_slot_is_set_by_both_constructors() -> None:
    """``GradRecord.from_pass`` sets the slots itself (it runs per parameter per pass): it and
    ``__init__`` must agree on every slot, or a read raises AttributeError."""
    plain = GradRecord("w", 1, torch.Size([2]))
    built = GradRecord.from_pass("w", 1, torch.Size([2]), 0)
    for slot in GradRecord.__slots__:
        assert getattr(plain, slot) == getattr(built, slot), slot


def test_the_common_case_is_assembled_inline(monkeypatch) -> None:
    """``.grad`` was None and the pass stored its gradient there: assembled without a call per
    parameter. Everything else (accumulation, keep="none", copies) goes through
    ``make_grad_record``, and both give the same records (clones of ``.grad`` as oracle)."""
    calls: list[str] = []
    real = assembly_module.make_grad_record

    def counting(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(assembly_module, "make_grad_record", counting)
    torch.manual_seed(0)
    net, x = nn.Linear(3, 2), torch.randn(4, 3)
    with gradscope.watch(net, keep="all") as w:
        net(x).pow(2).sum().backward()
        first = {n: p.grad.clone() for n, p in net.named_parameters()}
        assert calls == []
        net(x).pow(2).sum().backward()  # accumulates into .grad
        second = {n: p.grad.clone() for n, p in net.named_parameters()}
        assert sorted(calls) == ["bias", "weight"]
    old, new = w.records
    for name in first:
        torch.testing.assert_close(old[name].after, first[name], rtol=0, atol=0)
        torch.testing.assert_close(old[name].delta, first[name], rtol=0, atol=0)
        torch.testing.assert_close(new[name].after, second[name], rtol=0, atol=0)
        torch.testing.assert_close(new[name].delta, second[name] - first[name])
    for options in ({"keep": "none"}, {"copy": True}):
        calls.clear()
        net.zero_grad()
        with gradscope.watch(net, **options) as w:  # type: ignore[arg-type]
            net(x).pow(2).sum().backward()
        assert sorted(calls) == ["bias", "weight"], options
        assert w.last["weight"].stats.norm == pytest.approx(float(first["weight"].norm()))


@pytest.mark.parametrize("how", ["unscale_", "step and update"])
def test_a_grad_scaler_that_ran_makes_the_kept_tensors_untrusted(how: str) -> None:
    """GradScaler rescales .grad in place without bumping its version; with a scale of 1 the
    values (and so the norm) do not even change: the scaler's own state says it ran."""
    torch.manual_seed(0)
    net, x = nn.Linear(3, 2), torch.randn(4, 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    with gradscope.watch(net, scaler=scaler) as w:
        scaler.scale(net(x).pow(2).sum()).backward()
        grad = net.weight.grad.clone()
        record = w.last["weight"]
        assert not record.modified  # the scaler has not run yet
        torch.testing.assert_close(record.after, grad, rtol=0, atol=0)
        if how == "unscale_":
            scaler.unscale_(optimizer)
        else:
            scaler.step(optimizer)
            scaler.update()
    torch.testing.assert_close(net.weight.grad, grad, rtol=0, atol=0)  # unscaled by 1
    assert record.modified
    assert record.stats.norm == pytest.approx(float(grad.double().norm()), rel=1e-6)


def test_a_scaler_asked_about_inf_has_not_rescaled_anything() -> None:
    """``_check_inf_per_device`` (what code asking the scaler about Inf/NaN calls) leaves its
    optimizer's entry READY: nothing was unscaled, so the kept tensors stay trusted."""
    torch.manual_seed(0)
    net, x = nn.Linear(3, 2), torch.randn(4, 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    with gradscope.watch(net, scaler=scaler) as w:
        scaler.scale(net(x).pow(2).sum()).backward()
        grad = net.weight.grad.clone()
        scaler._check_inf_per_device(optimizer)
    assert [s["stage"].name for s in scaler._per_optimizer_states.values()] == ["READY"]
    record = w.last["weight"]
    assert not record.modified
    torch.testing.assert_close(record.after, grad, rtol=0, atol=0)


def test_a_failed_autograd_grad_keeps_the_gradients_it_computed() -> None:
    """Under torch.autograd.grad nothing is added into ``.grad``: every gradient whose hook ran
    before the error is recorded (the oracle: the same call on an unwatched twin, no error)."""
    torch.manual_seed(0)
    net, x = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), torch.randn(5, 3)
    twin = copy.deepcopy(net)

    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, h: torch.Tensor) -> torch.Tensor:
            return h.clone()

        @staticmethod
        def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom in backward")

    with gradscope.watch(net) as w:
        loss = net[1](Boom.apply(net[0](x))).pow(2).sum()
        with pytest.raises(RuntimeError, match="boom"):
            torch.autograd.grad(loss, [net[1].weight, net[0].weight])
        with pytest.warns(gradscope.GradscopeWarning, match="pass 1 raised"):
            record = w.last
    (expected,) = torch.autograd.grad(twin(x).pow(2).sum(), [twin[1].weight])
    assert record.failed and set(record.grads) == {"1.weight"}
    assert record["1.weight"].accumulated is False
    torch.testing.assert_close(record["1.weight"].delta, expected)
    assert net[1].weight.grad is None


@pytest.mark.parametrize(
    "scenario", ["first pass", "accumulating", "keep none", "copies", "autograd.grad", "both"]
)
def test_every_record_says_which_parameter_pass_and_scale_it_is(scenario: str) -> None:
    """Name, pass index, shape, tied aliases and loss scale, on every way a record is built
    (``both``: torch.autograd.grad with keep="none")."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    net[2].weight = net[0].weight  # tied: one record, two names
    x = torch.randn(4, 3)
    keep = "none" if scenario in ("keep none", "both") else "last"
    with gradscope.watch(net, keep=keep, copy=scenario == "copies", scaler=_Scaler(4.0)) as w:
        net(x).sum().backward()
        if scenario == "accumulating":
            net(x).sum().backward()
        if scenario in ("autograd.grad", "both"):
            torch.autograd.grad(net(x).sum(), list(net.parameters()))
    record = w.last
    expected_index = 1 if scenario in ("first pass", "keep none", "copies") else 2
    assert record.index == expected_index and record.loss_scale == 4.0
    assert set(record) == {"0.weight", "0.bias", "2.bias"}
    for name, param in (("0.weight", net[0].weight), ("0.bias", net[0].bias)):
        grad = record[name]
        assert (grad.name, grad.index, grad.shape) == (name, expected_index, param.shape)
        assert grad.loss_scale == 4.0
    assert record["0.weight"].aliases == ("2.weight",) and record["0.bias"].aliases == ()
    assert record["2.weight"] is record["0.weight"]


def _optimizer_in_backward(net: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """PyTorch's "fuse the optimizer step into backward" recipe: each parameter steps its own
    optimizer as soon as its gradient is accumulated, then sets ``.grad`` to None."""
    optimizers = {p: torch.optim.SGD([p], lr=0.1) for p in net.parameters()}

    def step(param: torch.Tensor) -> None:
        optimizers[param].step()
        optimizers[param].zero_grad()

    return [p.register_post_accumulate_grad_hook(step) for p in net.parameters()]


def test_optimizer_in_backward_is_recorded_without_errors() -> None:
    torch.manual_seed(0)
    net, x = nn.Linear(3, 2), torch.randn(4, 3)
    handles = _optimizer_in_backward(net)
    with gradscope.watch(net) as w:
        for _ in range(2):
            net(x).pow(2).sum().backward()
    for handle in handles:
        handle.remove()
    assert w.errors == [] and [r.index for r in w.records] == [1, 2]
    assert set(w.last) == {"weight", "bias"} and w.last.missing == []
    assert net.weight.grad is None


@pytest.mark.parametrize("hooks_first", [True, False])
def test_optimizer_in_backward_records_the_gradient_the_optimizer_used(hooks_first: bool) -> None:
    torch.manual_seed(0)
    net, x = nn.Linear(3, 2), torch.randn(4, 3)
    handles = _optimizer_in_backward(net) if hooks_first else []
    with gradscope.watch(net) as w:
        handles = handles or _optimizer_in_backward(net)
        for _ in range(2):
            # the oracle, by hand at this pass's weights: sum(out**2) with out = x W^T + b has
            # dW = (2 out)^T x and db = 2 out summed over the batch; then SGD's step
            names = ("weight", "bias")
            with torch.no_grad():
                out = x @ net.weight.T + net.bias
                expected = ((2 * out).T @ x, (2 * out).sum(0))
            params = list(net.parameters())
            stepped = [p.detach().add(g, alpha=-0.1) for p, g in zip(params, expected, strict=True)]
            net(x).pow(2).sum().backward()
            for name, grad, param, want in zip(names, expected, params, stepped, strict=True):
                record = w.last[name]
                assert record.before is None
                torch.testing.assert_close(record.after, grad)
                assert torch.equal(record.delta, record.after)
                assert record.stats.norm == pytest.approx(float(grad.double().norm()))
                torch.testing.assert_close(param.detach(), want)  # the step used that gradient
                assert param.grad is None
    for handle in handles:
        handle.remove()
    assert [r.index for r in w.records] == [1, 2] and w.errors == []


def test_optimizer_in_backward_on_top_of_an_existing_grad_records_their_sum() -> None:
    """``.grad`` held a gradient before the pass (accumulation): torch adds the pass's gradient
    into it, the optimizer steps with the sum and clears it. The record: before the old
    ``.grad``, after the sum the optimizer used, delta what the pass added (worked out by hand)."""
    torch.manual_seed(0)
    net, x = nn.Linear(3, 2), torch.randn(4, 3)
    old = {"weight": torch.full((2, 3), 0.5), "bias": torch.tensor([1.0, -1.0])}
    for name, param in net.named_parameters():
        param.grad = old[name].clone()
    with torch.no_grad():
        out = x @ net.weight.T + net.bias
        added = {"weight": (2 * out).T @ x, "bias": (2 * out).sum(0)}
        stepped = {n: p.detach() - 0.1 * (old[n] + added[n]) for n, p in net.named_parameters()}
    handles = _optimizer_in_backward(net)
    with gradscope.watch(net) as w:
        net(x).pow(2).sum().backward()
    for handle in handles:
        handle.remove()
    assert w.errors == []
    for name, param in net.named_parameters():
        record = w.last[name]
        torch.testing.assert_close(record.before, old[name])
        torch.testing.assert_close(record.after, old[name] + added[name])
        torch.testing.assert_close(record.delta, added[name])
        torch.testing.assert_close(param.detach(), stepped[name])
        assert param.grad is None


def _through(net: nn.Module, x: torch.Tensor, late: Callable[[torch.Tensor], None]) -> None:
    """Backward through ``net`` with ``late`` run on the input's gradient, after every
    parameter's gradient has been accumulated (torch runs accumulators first)."""
    leaf = x.clone().requires_grad_(True)
    inner = leaf * 1.0
    inner.register_hook(late)
    net(inner).pow(2).sum().backward()


def test_a_gradient_cleared_during_backward_leaves_a_record_without_statistics() -> None:
    """Something sets ``.grad`` to None after torch stored the pass's gradient there (and after
    the watch's hook saw it go by): nothing is left to measure, and nothing is invented."""
    torch.manual_seed(0)
    net, x = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), torch.randn(5, 3)

    def clear(grad: torch.Tensor) -> None:
        net[2].weight.grad = None

    with gradscope.watch(net) as w:
        _through(net, x, clear)
    record = w.last["2.weight"]
    assert w.errors == [] and record.after is None and record.delta is None
    assert (record.stats.numel, record.stats.norm) == (0, 0.0)
    assert w.last["0.weight"].stats.norm == pytest.approx(float(net[0].weight.grad.norm()))


@pytest.mark.parametrize(("keep", "copy"), [("last", False), ("none", False), ("last", True)])
def test_a_big_gradient_changed_in_place_during_backward_is_measured_as_it_ends(
    keep: str, copy: bool
) -> None:
    """The hook measured the incoming gradient (large: while hot); doubled in place later in
    the same backward, ``.grad`` is measured again: the record's norm is the final one's."""
    torch.manual_seed(0)
    net, x = nn.Sequential(nn.Linear(BIG, BIG), nn.Tanh(), nn.Linear(BIG, 2)), torch.randn(3, BIG)
    weight = net[0].weight

    def double(grad: torch.Tensor) -> None:
        weight.grad.mul_(2.0)  # type: ignore[union-attr]

    with gradscope.watch(net, keep=keep, copy=copy) as w:  # type: ignore[arg-type]
        _through(net, x, double)
    expected = float(weight.grad.double().norm())  # type: ignore[union-attr]
    assert w.errors == []
    assert w.last["0.weight"].stats.norm == pytest.approx(expected, rel=1e-6)
