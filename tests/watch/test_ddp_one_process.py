"""watch() under DistributedDataParallel on one process, in this test process (gloo, world 1).

The multi-process checks are in tests/distributed (torchrun, slow); these run the recorder's DDP
path (``local``, ``delta = after - before``, bucket views) in the normal suite. On one rank the
average is the rank's own gradient, so the oracles are an undistributed twin of the model,
trained on the same inputs, and clones of ``.grad`` taken by hand between passes.
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


def _models(**options: object) -> tuple[nn.Module, nn.Module, nn.Module]:
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    twin = copy.deepcopy(net)
    return DistributedDataParallel(net, **options), net, twin  # type: ignore[arg-type]


def _clones(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _pass_gradient(twin: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What one pass alone adds, from the twin (its own .grad is left as it was)."""
    params = list(twin.parameters())
    grads = torch.autograd.grad(twin(x).pow(2).sum(), params)
    return {n: g for (n, _), g in zip(twin.named_parameters(), grads, strict=True)}


@pytest.mark.parametrize("copy_grads", [False, True])
def test_accumulating_passes_record_local_before_after_and_delta(copy_grads: bool) -> None:
    ddp, net, twin = _models()
    xs = [torch.randn(6, 4) for _ in range(2)]
    afters = []
    with gradscope.watch(ddp, keep="all", copy=copy_grads) as w:
        for x in xs:
            ddp(x).pow(2).sum().backward()  # no zero_grad: DDP adds into .grad
            afters.append(_clones(net))
    assert w.errors == [] and [r.index for r in w.records] == [1, 2]
    own = [_pass_gradient(twin, x) for x in xs]
    old, new = w.records
    assert set(old) == set(new) == set(own[0]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert old.synchronised is True and new.synchronised is True
    for name in own[0]:
        torch.testing.assert_close(afters[0][name], own[0][name])  # one rank: average == own
        torch.testing.assert_close(afters[1][name], own[0][name] + own[1][name])
        assert old[name].before is None
        torch.testing.assert_close(old[name].local, own[0][name])
        torch.testing.assert_close(old[name].delta, afters[0][name])
        torch.testing.assert_close(new[name].local, own[1][name])
        torch.testing.assert_close(new[name].before, afters[0][name], rtol=0, atol=0)
        torch.testing.assert_close(new[name].after, afters[1][name], rtol=0, atol=0)
        torch.testing.assert_close(new[name].delta, afters[1][name] - afters[0][name])
        expected = float(afters[1][name].double().norm())
        assert new[name].stats.norm == pytest.approx(expected, rel=1e-6)
    if copy_grads:  # copies: still readable once the next pass has added into .grad
        torch.testing.assert_close(old["0.weight"].after, afters[0]["0.weight"], rtol=0, atol=0)


def test_no_sync_passes_are_marked_unsynchronised() -> None:
    ddp, net, _ = _models()
    with gradscope.watch(ddp, keep="all", copy=True) as w:
        with ddp.no_sync():
            ddp(torch.randn(6, 4)).pow(2).sum().backward()
        ddp(torch.randn(6, 4)).pow(2).sum().backward()
    assert [r.synchronised for r in w.records] == [False, True]
    torch.testing.assert_close(w.last["2.bias"].after, net[2].bias.grad)


def test_bucket_views_keep_every_pass_right() -> None:
    """With gradient_as_bucket_view=True DDP writes every pass into the same buckets that .grad
    views, even after zero_grad(set_to_none=True): keep="all" makes the watch copy."""
    ddp, net, _ = _models(gradient_as_bucket_view=True)
    seen = []
    with gradscope.watch(ddp, keep="all") as w:
        for step in range(3):
            net.zero_grad(set_to_none=step % 2 == 0)
            ddp(torch.randn(6, 4)).pow(2).sum().backward()
            seen.append(_clones(net))
    assert w.errors == []
    for record, clones in zip(w.records, seen, strict=True):
        for name, grad in clones.items():
            assert not record[name].modified
            torch.testing.assert_close(record[name].after, grad, rtol=0, atol=0)
            torch.testing.assert_close(record[name].local, grad)


def test_bucket_views_under_keep_last_are_not_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    """keep="last" lets go of a pass's tensors before DDP writes the next one into the buckets:
    the record's ``after`` is ``.grad`` itself, so an in-place change shows (copies are for
    keep="all" and copy=True only)."""
    import gradscope._watch.keeping as keeping_module

    copies: list[str] = []
    real = keeping_module.Keeper.copy

    def counting(self: object, name: str, tensor: torch.Tensor) -> torch.Tensor:
        copies.append(name)
        return real(self, name, tensor)  # type: ignore[arg-type]

    monkeypatch.setattr(keeping_module.Keeper, "copy", counting)
    ddp, net, _ = _models(gradient_as_bucket_view=True)
    with gradscope.watch(ddp) as w:
        ddp(torch.randn(6, 4)).pow(2).sum().backward()
        after = _clones(net)
        for param in net.parameters():
            param.grad.mul_(2.0)  # clip_grad_norm_ does this
    assert copies == [] and w.errors == []
    for name, grad in after.items():
        assert w.last[name].modified
        assert w.last[name].stats.norm == pytest.approx(float(grad.double().norm()), rel=1e-6)
