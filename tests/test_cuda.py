"""The same tools on a CUDA device (skipped where there is none, as on CI)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradscope

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _pair() -> tuple[nn.Module, nn.Module]:
    cpu = gradscope.LeNet()
    cuda = gradscope.LeNet().cuda()
    cuda.load_state_dict(cpu.state_dict())
    return cpu, cuda


def test_watch_on_cuda_matches_cpu() -> None:
    cpu, cuda = _pair()
    x = torch.randn(4, 1, 32, 32)
    with gradscope.watch(cpu, keep="all") as wc, gradscope.watch(cuda, keep="all") as wg:
        for _ in range(3):  # accumulate: before/delta/copy-on-write on the device
            cpu(x).pow(2).sum().backward()
            cuda(x.cuda()).pow(2).sum().backward()
    for rc, rg in zip(wc.records, wg.records, strict=True):
        for name in rc:
            assert rg[name].after.device.type == "cuda"
            torch.testing.assert_close(rg[name].after.cpu(), rc[name].after, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(rg[name].delta.cpu(), rc[name].delta, rtol=1e-4, atol=1e-5)
            assert rg[name].stats.norm == pytest.approx(rc[name].stats.norm, rel=1e-4)
            assert rg[name].stats.abs_max == pytest.approx(rc[name].stats.abs_max, rel=1e-4)


def test_watch_on_cuda_finds_nonfinite_gradients_and_mixed_precision() -> None:
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1)).cuda()
    scaler = torch.amp.GradScaler("cuda", init_scale=256.0)
    with gradscope.watch(net, scaler=scaler) as w:
        with torch.autocast("cuda", dtype=torch.float16):
            loss = net(torch.randn(8, 16, device="cuda")).float().mean()
        scaler.scale(loss * float("inf")).backward()
    assert w.last.scaler_skipped is True
    assert set(w.last.nonfinite) == {"0.weight", "0.bias", "2.weight", "2.bias"}


@pytest.mark.parametrize("impl", [{"foreach": False}, {"foreach": True}, {"fused": True}])
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop"])
def test_check_step_passes_real_cuda_optimizers(name: str, impl: dict[str, bool]) -> None:
    if name in ("RMSprop", "Adagrad") and impl.get("fused"):
        pytest.skip(f"torch has no fused {name} for CUDA")
    kwargs = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    net = gradscope.LeNet().cuda()
    optimizer = getattr(torch.optim, name)(net.parameters(), lr=1e-3, **kwargs, **impl)
    x = torch.randn(2, 1, 32, 32, device="cuda")
    with gradscope.verify_optimizer(optimizer, params=net, on_mismatch="raise") as v:
        for _ in range(5):
            optimizer.zero_grad()
            net(x).pow(2).mean().backward()
            optimizer.step()
    assert len(v.reports) == 5 and all(r.ok for r in v.reports)


@pytest.mark.parametrize(
    "name", ["Adam", "AdamW", "NAdam", "RAdam", "Adamax", "Adadelta", "ASGD", "Rprop", "RMSprop"]
)
@pytest.mark.parametrize("impl", [{"foreach": False}, {"foreach": True}])
def test_capturable_optimizers_state_included(name: str, impl: dict[str, bool]) -> None:
    # capturable keeps step (and NAdam's mu_product, ASGD's eta and mu) on the device and
    # computes the bias corrections with tensors: the same rule, read with one sync per group
    net = gradscope.LeNet().cuda()
    kwargs = {"weight_decay": 0.01} if name != "Rprop" else {}
    optimizer = getattr(torch.optim, name)(
        net.parameters(), lr=1e-3, capturable=True, **kwargs, **impl
    )
    x = torch.randn(2, 1, 32, 32, device="cuda")
    with gradscope.verify_optimizer(optimizer, params=net, on_mismatch="raise") as v:
        for _ in range(12):
            optimizer.zero_grad()
            net(x).pow(2).mean().backward()
            optimizer.step()
    assert len(v.reports) == 12 and v.ok and v.reports[-1].state_checked


def test_graph_on_cuda_records_norms_and_finds_where_a_nan_was_born() -> None:
    cpu, cuda = _pair()
    x = torch.randn(2, 1, 32, 32)
    graphs = []
    for net, inputs in ((cpu, x), (cuda, x.cuda())):
        out = net(inputs)
        loss = (out.sqrt() * 0 + out).sum()  # sqrt of negatives: NaN born in SqrtBackward0
        g = gradscope.graph(loss, params=net, grads=True)
        loss.backward()
        graphs.append(g)
    cpu_graph, cuda_graph = graphs
    assert cpu_graph.first_nonfinite is not None and cuda_graph.first_nonfinite is not None
    assert cuda_graph.first_nonfinite.node.op == cpu_graph.first_nonfinite.node.op
    assert cuda_graph.first_nonfinite.node.op == "SqrtBackward0"
    assert [n.op for n in cuda_graph.nodes] == [n.op for n in cpu_graph.nodes]
    for on_cuda, on_cpu in zip(cuda_graph.nodes, cpu_graph.nodes, strict=True):
        if on_cpu.grad_norm is None:
            assert on_cuda.grad_norm is None
        else:
            assert on_cuda.grad_norm == pytest.approx(on_cpu.grad_norm, rel=1e-3, nan_ok=True)


def test_norms_travel_to_the_host_without_stalling_and_at_most_one_pass_waits() -> None:
    net = gradscope.LeNet().cuda()
    x = torch.randn(2, 1, 32, 32, device="cuda")
    with gradscope.watch(net, keep="all") as w:
        for _ in range(3):
            net.zero_grad()
            net(x).pow(2).sum().backward()
        waiting = {
            r.index
            for record in w.records
            for r in record.grads.values()
            if r._reading is not None and r._reading.pending
        }
        assert waiting == {3}  # older passes were read when the next ended
        expected = float(net.fc1.weight.grad.double().norm())
        assert w.last["fc1.weight"].recorded.norm == pytest.approx(expected, rel=1e-6)
        assert not any(
            r._reading is not None and r._reading.pending
            for record in w.records
            for r in record.grads.values()
        )


def test_the_deferred_read_sees_the_pass_not_the_live_gradient_on_cuda() -> None:
    """Issue 16: the CUDA read recomputed NaN/Inf counts from the live .grad at read time."""
    net = torch.nn.Linear(3, 2).cuda()
    x = torch.tensor([[1.0, 0.0, 2.0]], device="cuda")
    with gradscope.watch(net) as w:
        (net(x) * torch.tensor([float("inf"), 1.0], device="cuda")).sum().backward()
        first = {n: p.grad.clone() for n, p in net.named_parameters()}
        net.zero_grad(set_to_none=False)
        net(x).sum().backward()
    record = w.records[0]
    assert sorted(record.nonfinite) == ["bias", "weight"]
    for name, grad in first.items():
        stats = record[name].stats
        expected = (int(torch.isnan(grad).sum()), int(torch.isinf(grad).sum()))
        assert (stats.nan, stats.inf) == expected


def test_an_untouched_cuda_gradient_is_never_called_modified() -> None:
    """The read recomputes the norm with one tensor where the pass fused many: same value."""
    net = gradscope.LeNet().cuda()
    x = torch.randn(4, 1, 32, 32, device="cuda")
    with gradscope.watch(net, keep="all") as w:
        for _ in range(2):
            net(x).pow(2).sum().backward()
        for record in w.records:
            for name in record:
                assert not record[name].modified, name
                assert record[name].after is not None
        scaler = torch.amp.GradScaler("cuda", init_scale=4.0)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradscope.watch(net, scaler=scaler) as w:
        scaler.scale(net(x).pow(2).sum()).backward()
        scaler.unscale_(optimizer)
    assert w.last["fc1.weight"].modified  # unscale_ bumps no version: caught by norm and state


def test_diagnosis_evidence_on_cuda_matches_cpu() -> None:
    """Forward sums copied through pinned memory, step statistics on the device, the replay
    with CUDA random state: the same findings as on the CPU."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.drop = nn.Dropout(0.2)
            self.b = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.log(self.drop(self.a(x))))

    found = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        net = Net().to(device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x = torch.randn(16, 8, device=device)
        with gradscope.watch(net, optimizer=opt) as w:
            for _ in range(4):
                opt.zero_grad()
                net(x).sum().backward()
                opt.step()
        d = w.diagnose()
        found[device] = (d[0].kind, d[0].module, d.steps)
        assert d[0].evidence["op"].startswith("torch.log")
    assert found["cpu"] == found["cuda"] == ("nonfinite_forward", "", 4)


def test_on_problem_raise_on_cuda() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)).cuda()
    net.forward = lambda x: net[1](net[0](x).detach())  # type: ignore[method-assign]
    with gradscope.watch(net, on_problem="raise"), pytest.raises(gradscope.ProblemFound):
        net(torch.randn(2, 4, device="cuda")).sum().backward()


def test_assert_grads_close_takes_an_expected_gradient_on_another_device() -> None:
    import gradscope.testing as gt

    net = torch.nn.Linear(3, 2).cuda()
    ref = torch.nn.Linear(3, 2).double()
    ref.load_state_dict(net.state_dict())
    x = torch.randn(4, 3)
    net(x.cuda()).sum().backward()
    ref(x.double()).sum().backward()
    gt.assert_grads_close(net, ref)  # expected on the CPU, the gradients on the GPU
    assert ref.bias.grad is not None
    ref.bias.grad[0] += 1.0
    with pytest.raises(AssertionError, match=r"bias \(2,\): mismatched elements: 1 / 2"):
        gt.assert_grads_close(net, ref)
