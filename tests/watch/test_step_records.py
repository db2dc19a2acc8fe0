"""``watch(net, optimizer=opt)``: per-step update and weight norms (``_watch/steps.py``),
checked against numpy on the same elements."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import gradscope
from gradscope._watch.sampling import SAMPLE, sample


def _step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad()
    net(x).pow(2).mean().backward()
    opt.step()


def test_update_and_weight_norms_match_numpy_on_every_element_of_small_tensors() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x = torch.randn(8, 6)
    with gradscope.watch(net, optimizer=opt) as w:
        before = {n: p.detach().numpy().copy() for n, p in net.named_parameters()}
        _step(net, opt, x)
    (record,) = w._monitors.steps.records
    assert record.names == ("0.weight", "0.bias", "2.weight", "2.bias")
    for k, (name, p) in enumerate(net.named_parameters()):
        after = p.detach().numpy()
        exact = np.linalg.norm(after - before[name])
        assert record.update_norms[k] == pytest.approx(exact, rel=1e-5)
        assert record.weight_norms[k] == pytest.approx(np.linalg.norm(after), rel=1e-5)
        assert record.with_grad[k] == int(np.count_nonzero(p.grad.numpy()))
        assert record.stuck[k] == 0
    assert record.lrs == (0.01,) * 4 and record.after_pass == 1 and not record.modified


def test_large_tensors_are_sampled_evenly_and_the_sample_is_what_numpy_sees() -> None:
    torch.manual_seed(0)
    net = nn.Linear(300, 40)  # 12,000 weights: a sample of SAMPLE of them
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(4, 300)
    flat_before = net.weight.detach().numpy().reshape(-1).copy()
    with gradscope.watch(net, optimizer=opt) as w:
        _step(net, opt, x)
    stride = net.weight.numel() // SAMPLE
    picked = np.arange(SAMPLE) * stride
    flat_after = net.weight.detach().numpy().reshape(-1)
    record = w._monitors.steps.records[0]
    assert record.update_norms[0] == pytest.approx(
        np.linalg.norm(flat_after[picked] - flat_before[picked]), rel=1e-5
    )
    assert record.weight_norms[0] == pytest.approx(np.linalg.norm(flat_after[picked]), rel=1e-5)
    # the ratio over the sample estimates the ratio over the whole tensor
    whole = np.linalg.norm(flat_after - flat_before) / np.linalg.norm(flat_after)
    assert record.update_norms[0] / record.weight_norms[0] == pytest.approx(whole, rel=0.1)
    np.testing.assert_array_equal(sample(net.weight.detach()).numpy(), flat_after[picked])


def test_an_lr_of_zero_leaves_every_element_with_a_gradient_stuck() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    opt = torch.optim.SGD(
        [{"params": net[0].parameters(), "lr": 0.0}, {"params": net[1].parameters()}], lr=0.1
    )
    with gradscope.watch(net, optimizer=opt) as w:
        _step(net, opt, torch.randn(4, 3))
    record = w._monitors.steps.records[0]
    assert record.lrs == (0.0, 0.0, 0.1, 0.1)
    assert record.stuck[:2] == record.with_grad[:2] and record.with_grad[0] > 0
    assert record.update_norms[:2] == [0.0, 0.0] and record.stuck[2:] == [0, 0]


def test_clipping_is_seen_as_a_changed_grad_with_its_total_norm() -> None:
    torch.manual_seed(0)
    net = nn.Linear(5, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradscope.watch(net, optimizer=opt) as w:
        opt.zero_grad()
        (net(torch.randn(4, 5)) * 10).pow(2).sum().backward()
        total = torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        opt.step()
    record = w._monitors.steps.records[0]
    assert record.modified and float(total) > 0.5
    assert record.grad_norm == pytest.approx(0.5, rel=1e-4)  # what clip_grad_norm_ left


def test_steps_gradscaler_skips_leave_no_record() -> None:
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)  # overflows: first steps skipped
    with gradscope.watch(net, optimizer=opt, scaler=scaler) as w:
        for _ in range(3):
            opt.zero_grad()
            scaler.scale(net(torch.randn(2, 3)).sum() * 1e30).backward()
            scaler.step(opt)
            scaler.update()
    assert w._monitors.steps.steps == 0 and len(w.records) == 3


def test_several_optimizers_a_wrapper_and_a_missing_grad() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1), nn.Linear(1, 1))
    first = torch.optim.SGD(net[0].parameters(), lr=0.1)

    class Wrapper:  # like accelerate's AcceleratedOptimizer
        def __init__(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer

    second = torch.optim.SGD([*net[1].parameters(), *net[2].parameters()], lr=0.1)
    with gradscope.watch(net, optimizer=[first, Wrapper(second)]) as w:
        net[1](net[0](torch.randn(2, 3))).sum().backward()  # net[2] unused: no .grad
        first.step()
        second.step()
    steps = w._monitors.steps
    assert steps.held == [["0.weight", "0.bias"], ["1.weight", "1.bias", "2.weight", "2.bias"]]
    assert [r.optimizer for r in steps.records] == [0, 1]
    assert steps.records[1].no_grad == ("2.weight", "2.bias")


def test_not_an_optimizer_is_refused() -> None:
    with pytest.raises(
        gradscope.GradscopeError, match=r"optimizer= takes a torch\.optim\.Optimizer"
    ):
        gradscope.watch(nn.Linear(2, 1), optimizer="adam")


def test_hooks_are_removed_and_the_optimizer_is_held_weakly() -> None:
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    w = gradscope.watch(net, optimizer=opt)
    _step(net, opt, torch.randn(2, 3))
    w.close()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    ref = weakref.ref(opt)
    del opt
    gc.collect()
    assert ref() is None
    assert w._monitors.steps.held == [["weight", "bias"]]  # noted when the watch closed
    assert w.diagnose().ok


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_of_the_optimizer_steps_without_reporting_into_the_watch(how: str) -> None:
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradscope.watch(net, optimizer=opt) as w:
        net(torch.ones(2, 3)).sum().backward()
        twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
        # torch's Optimizer.__getstate__ leaves the step hooks out of copies: the copy (of
        # copies of the parameters) is not this watch's business
        twin.step()
        assert w._monitors.steps is not None and w._monitors.steps.steps == 0
        opt.step()
        assert w._monitors.steps.steps == 1
