"""verify_optimizer: every step checked until close(), warn or raise, no hooks or models leaked."""

from __future__ import annotations

import doctest
import gc
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_cases import OPTIMIZERS, dtypes, implementation, make_params, set_random_grads, shapes
from torch import nn, optim

import gradscope
from gradscope._optim import verify as _verify


def _hooks(opt: optim.Optimizer) -> int:
    return len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)


def _train(net: nn.Module, opt: optim.Optimizer, steps: int, sched: object = None) -> None:
    x, target = torch.randn(4, 1, 32, 32), torch.randn(4, 10)
    for _ in range(steps):
        opt.zero_grad()
        nn.MSELoss()(net(x), target).backward()
        opt.step()
        if sched is not None:
            sched.step()  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@settings(max_examples=5, deadline=None)
@given(data=st.data(), shape_list=shapes, dtype=dtypes)
def test_a_real_run_passes_every_step(
    name: str, data: st.DataObject, shape_list: list[tuple[int, ...]], dtype: torch.dtype
) -> None:
    cls, hyper, fused_ok = OPTIMIZERS[name]
    params = make_params(shape_list, dtype)
    opt = cls(params, **data.draw(hyper), **data.draw(implementation(fused_ok)))
    with gradscope.verify_optimizer(opt, on_mismatch="raise") as v:
        for step in range(25):
            set_random_grads(params, step)
            opt.step()
    assert len(v.reports) == 25 and v.ok
    assert [r.step for r in v.reports] == list(range(25))
    assert _hooks(opt) == 0 and v.closed


def test_lr_at_0_is_a_note_until_it_stays_there_too_long(lenet: gradscope.LeNet) -> None:
    head = [lenet.fc3.weight, lenet.fc3.bias]
    rest = [p for p in lenet.parameters() if all(p is not h for h in head)]
    opt = optim.SGD([{"params": rest}, {"params": head}], lr=0.01, momentum=0.9)
    sched = optim.lr_scheduler.LambdaLR(opt, [lambda e: 1.0, lambda e: 1.0 if e < 2 else 0.0])
    with (
        pytest.warns(gradscope.GradscopeWarning, match="lr has been 0 in param group 1") as caught,
        gradscope.verify_optimizer(opt, params=lenet, max_zero_lr_steps=3) as v,
    ):
        _train(lenet, opt, 6, sched)
    assert [r.ok for r in v.reports] == [True, True, True, True, False, False]
    assert all(any("lr is 0 in param group 1" in n for n in r.notes) for r in v.reports[2:])
    assert "for 3 steps (since step 2)" in v.reports[4].problems[0]
    assert "max_zero_lr_steps=None" in str(caught[0].message)
    assert [r.step for r in v.failures] == [4, 5]
    with gradscope.verify_optimizer(opt, params=lenet, max_zero_lr_steps=None) as v:
        _train(lenet, opt, 4, sched)
    assert v.ok


def test_raise_mode_raises_from_step_with_every_failure(lenet: gradscope.LeNet) -> None:
    opt = optim.Adam([p for n, p in lenet.named_parameters() if not n.startswith("fc3")])
    v = gradscope.verify_optimizer(opt, params=lenet, on_mismatch="raise")
    with pytest.raises(gradscope.StepMismatch) as caught:
        _train(lenet, opt, 1)
    assert "fc3.weight" in str(caught.value) and "fc3.bias" in str(caught.value)
    assert isinstance(caught.value, AssertionError)
    v.close()
    _train(lenet, opt, 1)  # closed: no more checks
    assert len(v.reports) == 1 and _hooks(opt) == 0


def test_steps_after_close_are_not_checked_and_close_is_idempotent(
    lenet: gradscope.LeNet,
) -> None:
    opt = optim.RMSprop(lenet.parameters(), centered=True, momentum=0.5)
    v = gradscope.verify_optimizer(opt, params=lenet)
    _train(lenet, opt, 3)
    v.close()
    v.close()
    _train(lenet, opt, 2)
    assert len(v.reports) == 3 and v.ok
    assert "3 steps, 0 failed, closed" in repr(v)


def test_model_and_optimizer_are_collectable_after_close() -> None:
    net = gradscope.LeNet()
    opt = optim.Adam(net.parameters())
    v = gradscope.verify_optimizer(opt, params=net)
    _train(net, opt, 2)
    v.close()
    refs = [weakref.ref(net), weakref.ref(opt), weakref.ref(net.fc1.weight)]
    del net, opt
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    assert len(v.reports) == 2  # the reports outlive the model


def test_dropping_the_verifier_removes_its_hooks(lenet: gradscope.LeNet) -> None:
    opt = optim.SGD(lenet.parameters(), lr=0.1)
    v = gradscope.verify_optimizer(opt, params=lenet)
    ref = weakref.ref(v)
    assert _hooks(opt) == 2
    del v
    gc.collect()
    assert ref() is None and _hooks(opt) == 0
    _train(lenet, opt, 1)


def test_bad_on_mismatch_and_bad_optimizer() -> None:
    opt = optim.SGD([nn.Parameter(torch.randn(2))], lr=0.1)
    with pytest.raises(gradscope.GradscopeError, match="use 'warn'"):
        gradscope.verify_optimizer(opt, on_mismatch="ignore")
    with pytest.raises(gradscope.GradscopeError, match="verify_optimizer"):
        gradscope.verify_optimizer(None)  # type: ignore[arg-type]
    assert _hooks(opt) == 0


def test_docstring_example_runs() -> None:
    assert doctest.testmod(_verify).failed == 0


class _FailsOnce(optim.Adam):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fail_next = False

    def step(self, closure: object = None) -> object:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().step(closure)  # type: ignore[arg-type]


def test_a_step_that_raised_then_a_good_step_passes(lenet: gradscope.LeNet) -> None:
    opt = _FailsOnce(lenet.parameters(), lr=1e-3)
    with gradscope.verify_optimizer(opt, params=lenet, on_mismatch="raise") as v:
        _train(lenet, opt, 2)
        opt.fail_next = True
        with pytest.raises(RuntimeError, match="simulated"):
            _train(lenet, opt, 1)
        _train(lenet, opt, 3)
    assert len(v.reports) == 5 and v.ok
    assert any("raised before it finished" in n for n in v.reports[2].notes)
    assert not any("raised" in n for r in v.reports[3:] for n in r.notes)


class _PlainSubclass(optim.SGD):
    def step(self, closure: object = None) -> object:  # the common "add logging" override
        return super().step(closure)  # type: ignore[arg-type]


def test_a_subclass_calling_super_step_is_one_step_whatever_exists_already(
    lenet: gradscope.LeNet,
) -> None:
    # a plain SGD makes torch wrap SGD.step too, so the hooks run twice per step
    optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    opt = _PlainSubclass(lenet.parameters(), lr=0.01, momentum=0.9)
    with gradscope.verify_optimizer(opt, params=lenet, on_mismatch="raise") as v:
        _train(lenet, opt, 3)
    assert len(v.reports) == 3 and v.ok
    for _ in range(2):
        opt.zero_grad()
        nn.MSELoss()(lenet(torch.randn(2, 1, 32, 32)), torch.randn(2, 10)).backward()
        with gradscope.check_step(opt, params=lenet) as report:
            opt.step()
        assert report.ok, str(report)


def test_coverage_checks_a_rotating_part_of_large_tensors() -> None:
    net = nn.Sequential(nn.Linear(512, 256), nn.Linear(256, 4))  # 131072 and 1024 weights
    opt = optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(8, 512)
    with gradscope.verify_optimizer(opt, params=net, coverage=0.25, on_mismatch="raise") as v:
        for _ in range(6):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    assert v.ok and len(v.reports) == 6
    assert "part" not in v.reports[0].headline()  # the first step is checked whole
    assert "part 1 of 4" in v.reports[1].headline() and "part 2 of 4" in v.reports[2].headline()
    assert "part 1 of 4" in v.reports[5].headline()
    assert "every element every 4 steps" in v.reports[1].headline()


class _SkipsTheLastRows(optim.SGD):
    @torch.no_grad()
    def step(self, closure: object = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                update = p.grad * group["lr"]
                if p.dim() == 2:
                    update[-3:] = 0  # forgets the last rows of every weight matrix
                p.sub_(update)


def test_a_bug_in_one_corner_of_a_large_tensor_is_found_within_coverage_steps() -> None:
    net = nn.Sequential(nn.Linear(512, 256), nn.Linear(256, 4))
    opt = _SkipsTheLastRows(net.parameters(), lr=1e-2)
    x = torch.randn(8, 512)
    with (
        pytest.warns(gradscope.GradscopeWarning),
        gradscope.verify_optimizer(opt, params=net, coverage=0.25) as v,
    ):
        for _ in range(5):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    # step 0 sees everything; later only the part holding the last rows of 0.weight
    assert [r["0.weight"].failed for r in v.reports] == [True, False, False, False, True]
    assert all(r["1.weight"].failed for r in v.reports)  # small: checked whole every step


@pytest.mark.parametrize("coverage", [0, 1.5, "all", True])
def test_bad_coverage(coverage: object) -> None:
    opt = optim.SGD([nn.Parameter(torch.randn(2))], lr=0.1)
    with pytest.raises(gradscope.GradscopeError, match="coverage"):
        gradscope.verify_optimizer(opt, coverage=coverage)  # type: ignore[arg-type]
    assert _hooks(opt) == 0


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bfloat16, torch.float64])
def test_windows_over_complex_low_precision_and_double_tensors(dtype: torch.dtype) -> None:
    p = nn.Parameter(torch.randn(300, 300, dtype=dtype))
    opt = optim.Adam([p], lr=1e-2, foreach=False)
    with gradscope.verify_optimizer(opt, coverage=0.25, on_mismatch="raise") as v:
        for _ in range(6):
            p.grad = torch.randn_like(p)
            opt.step()
    assert v.ok and "part 4 of 4" in v.reports[4].headline()
