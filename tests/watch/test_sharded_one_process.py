"""watch() under FSDP2 (``fully_shard``) on one process, in this test process (gloo, world 1).

The multi-process checks are in tests/distributed (torchrun, slow); these run the recorder's
FSDP2 path in the normal suite. On one rank the shard is the whole gradient, so the oracles are
clones of the shard taken by hand between passes and an unsharded twin of the model trained on
the same inputs. Parameters owned by the root module (``fully_shard(net)`` alone) are unsharded
by FSDP's own forward pre-hook: the watch must take ``before`` ahead of it.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

import gradscope

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch without distributed"),
    pytest.mark.usefixtures("read_path", "process_group"),
]


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def _sharded(how: str) -> tuple[nn.Module, nn.Module]:
    from torch.distributed.fsdp import fully_shard

    net = _mlp()
    twin = copy.deepcopy(net)
    if how == "per-layer":
        for layer in net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
    fully_shard(net)
    return net, twin


def _shards(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.to_local().clone() for n, p in net.named_parameters() if p.grad is not None}


def _plain(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("how", ["root-only", "per-layer"])
def test_accumulating_passes_record_before_after_and_delta(how: str) -> None:
    net, twin = _sharded(how)
    x1, x2 = torch.randn(6, 4), torch.randn(6, 4)
    with gradscope.watch(net, keep="all") as w:
        net(x1).pow(2).sum().backward()
        first = _shards(net)
        net(x2).pow(2).sum().backward()  # no zero_grad: FSDP adds into the shards
        second = _shards(net)
    twin(x1).pow(2).sum().backward()
    twin_first = _plain(twin)
    twin(x2).pow(2).sum().backward()
    twin_second = _plain(twin)
    assert [r.index for r in w.records] == [1, 2] and w.errors == []
    old, new = w.records
    assert set(old) == set(new) == set(first) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert old.synchronised is True and old.missing == [] and old.frozen == []
    for name in first:
        torch.testing.assert_close(first[name], twin_first[name])  # one rank: shard == whole
        torch.testing.assert_close(second[name], twin_second[name])
        assert old[name].before is None
        torch.testing.assert_close(old[name].after, first[name], rtol=0, atol=0)  # copied on write
        torch.testing.assert_close(old[name].delta, first[name], rtol=0, atol=0)
        torch.testing.assert_close(new[name].before, first[name], rtol=0, atol=0)
        torch.testing.assert_close(new[name].after, second[name], rtol=0, atol=0)
        torch.testing.assert_close(new[name].delta, second[name] - first[name])
        for record, oracle in ((old, twin_first), (new, twin_second)):
            expected = float(oracle[name].double().norm())
            assert record[name].stats.norm == pytest.approx(expected, rel=1e-6)
            assert record[name].stats.numel == oracle[name].numel()
            assert [s.norm for s in record[name].rank_stats] == pytest.approx([expected])


def test_zero_grad_between_passes_gives_no_before() -> None:
    net, twin = _sharded("root-only")
    x = torch.randn(6, 4)
    with gradscope.watch(net) as w:
        for _ in range(2):
            net.zero_grad()
            net(x).pow(2).sum().backward()
    twin(x).pow(2).sum().backward()
    for name, grad in _plain(twin).items():
        assert w.last[name].before is None
        torch.testing.assert_close(w.last[name].after, grad)
        torch.testing.assert_close(w.last[name].delta, grad)


def test_keep_none_and_every_other_pass_keep_only_statistics() -> None:
    net, twin = _sharded("per-layer")
    xs = [torch.randn(6, 4) for _ in range(3)]
    norms = []
    with gradscope.watch(net, keep="none", every=2) as w:
        for x in xs:
            net(x).pow(2).sum().backward()
            twin(x).pow(2).sum().backward()
            norms.append({n: float(g.double().norm()) for n, g in _plain(twin).items()})
    assert [r.index for r in w.records] == [1, 3] and w.errors == []
    for record, expected in zip(w.records, (norms[0], norms[2]), strict=True):
        assert set(record) == set(expected)
        for name, norm in expected.items():
            assert record[name].before is None and record[name].after is None
            assert record[name].stats.norm == pytest.approx(norm, rel=1e-6)


def test_copy_true_keeps_each_pass_through_in_place_changes() -> None:
    net, _ = _sharded("root-only")
    x = torch.randn(6, 4)
    with gradscope.watch(net, keep="all", copy=True) as w:
        net(x).pow(2).sum().backward()
        first = _shards(net)
        for p in net.parameters():
            p.grad.to_local().mul_(0.5)  # in place, as a clip would
        halved = _shards(net)
        net(x).pow(2).sum().backward()
        second = _shards(net)
    old, new = w.records
    for name in first:
        assert not old[name].modified
        torch.testing.assert_close(old[name].after, first[name], rtol=0, atol=0)
        torch.testing.assert_close(new[name].before, halved[name], rtol=0, atol=0)
        torch.testing.assert_close(new[name].after, second[name], rtol=0, atol=0)


def test_a_pass_without_gradient_sync_records_nothing_missing_and_the_next_the_sum() -> None:
    """FSDP2 keeps an unsynchronised pass's gradients unsharded inside FSDP: that record has no
    gradients and none missing; the next synchronised pass records the sum of both passes."""
    net, twin = _sharded("per-layer")
    x1, x2 = torch.randn(6, 4), torch.randn(6, 4)
    with gradscope.watch(net, keep="all") as w:
        net.set_requires_gradient_sync(False)
        net(x1).pow(2).sum().backward()
        net.set_requires_gradient_sync(True)
        net(x2).pow(2).sum().backward()
    twin(x1).pow(2).sum().backward()
    twin(x2).pow(2).sum().backward()
    quiet, synced = w.records
    assert w.errors == []
    assert quiet.synchronised is False and dict(quiet.grads) == {} and quiet.missing == []
    assert synced.synchronised is True and synced.missing == []
    for name, grad in _plain(twin).items():
        torch.testing.assert_close(synced[name].after, grad)
        assert synced[name].stats.norm == pytest.approx(float(grad.double().norm()), rel=1e-6)


def test_records_carry_their_pass_index_and_loss_scale() -> None:
    """Under a GradScaler FSDP2 holds the scaled gradient; the records divide it back out."""
    net, twin = _sharded("per-layer")
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    xs = [torch.randn(6, 4) for _ in range(2)]
    with gradscope.watch(net, scaler=scaler) as w:
        for x in xs:
            net.zero_grad()
            scaler.scale(net(x).pow(2).sum()).backward()
    twin(xs[1]).pow(2).sum().backward()
    assert w.errors == [] and w.last.index == 2 and w.last.loss_scale == 8.0
    for name, grad in _plain(twin).items():
        record = w.last[name]
        assert record.index == 2 and record.loss_scale == 8.0
        torch.testing.assert_close(record.after, 8.0 * grad)  # as FSDP2 holds it
        assert record.stats.norm == pytest.approx(float(grad.double().norm()), rel=1e-6)


def test_keep_none_takes_no_copy_of_a_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    import gradscope._watch.keeping as keeping_module

    copies: list[str] = []
    real = keeping_module.Keeper.copy

    def counting(self: object, name: str, tensor: torch.Tensor) -> torch.Tensor:
        copies.append(name)
        return real(self, name, tensor)  # type: ignore[arg-type]

    monkeypatch.setattr(keeping_module.Keeper, "copy", counting)
    net, _ = _sharded("root-only")
    with gradscope.watch(net, keep="none") as w:
        for _ in range(3):  # accumulating: every shard has a .grad from the second pass on
            net(torch.randn(6, 4)).pow(2).sum().backward()
    assert copies == [] and len(w.records) == 3 and w.errors == []
    assert all(w.last[name].before is None for name in w.last)


class _Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom in backward")


class _MaybeBoom(nn.Module):
    on = False

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return _Boom.apply(h) if self.on else torch.tanh(h)


def _failed_then_fine() -> tuple[gradscope.Watch, dict[str, torch.Tensor]]:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), _MaybeBoom(), nn.Linear(5, 3))
    for layer in (net[0], net[2]):
        fully_shard(layer)
    fully_shard(net)
    x = torch.randn(6, 4)
    with gradscope.watch(net) as w:
        net[1].on = True
        bad = net(x).pow(2).sum()
        net[1].on = False
        fine = net(x).pow(2).sum()
        with pytest.raises(RuntimeError, match="boom"):
            bad.backward()
        arrived = _shards(net)
        fine.backward()  # its first hook ends the failed pass
        with pytest.warns(gradscope.GradscopeWarning, match="pass 1 raised"):
            w.records  # noqa: B018
    return w, arrived


def test_a_failed_pass_is_ended_by_the_next_backward_of_a_graph_built_before_it() -> None:
    w, arrived = _failed_then_fine()
    failed, nxt = w.records
    assert set(arrived) == {"2.weight", "2.bias"}
    assert failed.failed and failed.index == 1 and set(failed.grads) == set(arrived)
    assert not nxt.failed and nxt.index == 2


def test_a_failed_pass_ended_by_the_next_backward_keeps_what_arrived() -> None:
    # ended lazily by the next backward's first hook, when FSDP2 has put unsharded parameters
    # (no .grad) on the modules: the records read the sharded ones their hooks ran on
    w, arrived = _failed_then_fine()
    failed = w.records[0]
    for name, shard in arrived.items():
        assert failed[name].stats.numel == shard.numel()
        assert failed[name].stats.norm == pytest.approx(float(shard.double().norm()), rel=1e-6)
