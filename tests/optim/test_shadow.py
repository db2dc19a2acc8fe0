"""gradscope.Shadow: the reference's memory between checked steps."""

from __future__ import annotations

import copy
import doctest
import gc
import weakref

import torch
from torch import nn, optim

import gradscope
from gradscope._optim import shadow as _shadow


def _step(net: nn.Module, opt: optim.Optimizer, shadow: gradscope.Shadow) -> gradscope.StepReport:
    opt.zero_grad()
    net(torch.randn(3, 4)).pow(2).mean().backward()
    with gradscope.check_step(opt, params=net, shadow=shadow) as report:
        opt.step()
    return report


def test_state_changed_between_steps_is_noted_and_the_reference_starts_from_it() -> None:
    net = nn.Linear(4, 2)
    opt = optim.Adam(net.parameters(), lr=1e-2)
    shadow = gradscope.Shadow()
    assert _step(net, opt, shadow).notes == []
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # a checkpoint reload: new tensors
    report = _step(net, opt, shadow)
    assert report.ok, str(report)
    assert any("exp_avg of weight was replaced by another tensor" in n for n in report.notes)
    with torch.no_grad():
        opt.state[net.bias]["exp_avg"].zero_()  # a momentum reset by hand
    report = _step(net, opt, shadow)
    assert report.ok, str(report)
    assert [n for n in report.notes if "changed in place" in n] == [
        "exp_avg of bias was changed in place since the last check (load_state_dict, or code "
        "outside step()?): the reference starts from its new value"
    ]
    assert shadow.steps == 3 and report.step == 2
    assert "3 steps checked" in repr(shadow)


def test_without_a_shadow_the_state_is_not_compared() -> None:
    net = nn.Linear(4, 2)
    opt = optim.SGD(net.parameters(), lr=1e-2, momentum=0.9)
    net(torch.randn(3, 4)).sum().backward()
    with gradscope.check_step(opt, params=net, shadow=False) as report:
        opt.step()
    assert report.ok and not report.state_checked
    assert all(p.state == () for p in report.params)
    assert "(parameters only)" in report.headline()


def test_bad_shadow_argument() -> None:
    opt = optim.SGD([nn.Parameter(torch.randn(2))], lr=0.1)
    for bad in ("yes", 1, None):
        try:
            gradscope.check_step(opt, shadow=bad)  # type: ignore[arg-type]
        except gradscope.GradscopeError as err:
            assert "gradscope.Shadow kept across steps" in str(err)
        else:
            raise AssertionError(f"shadow={bad!r} was accepted")


def test_a_shadow_keeps_no_model_or_optimizer_alive() -> None:
    net = nn.Linear(600, 600)  # large enough for the reused buffers
    opt = optim.Adam(net.parameters())
    shadow = gradscope.Shadow()
    for _ in range(2):
        _step_big(net, opt, shadow)
    refs = [weakref.ref(net), weakref.ref(opt), weakref.ref(net.weight)]
    del net, opt
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    assert shadow.steps == 2


def _step_big(net: nn.Module, opt: optim.Optimizer, shadow: gradscope.Shadow) -> None:
    opt.zero_grad()
    net(torch.randn(2, 600)).pow(2).mean().backward()
    with gradscope.check_step(opt, params=net, shadow=shadow) as report:
        opt.step()
    assert report.ok


def test_docstring_example_runs() -> None:
    assert doctest.testmod(_shadow).failed == 0


def test_the_notebook_table_shows_the_state_column() -> None:
    net = nn.Linear(4, 2)
    opt = optim.Adam(net.parameters(), lr=1e-2)
    report = _step(net, opt, gradscope.Shadow())
    shown = report._repr_html_()
    assert ">state<" in shown and shown.count(">ok<") >= 2
