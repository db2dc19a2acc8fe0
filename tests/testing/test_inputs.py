"""Every function that takes parameters accepts the forms users pass, and refuses the rest.

``params=`` (``graph``, ``check_step``, ``verify_optimizer``) and the module argument of every
``gradscope.testing`` assertion take a module, a mapping, or any iterable of tensors or
(name, tensor) pairs; meta-device tensors and complex gradients get the same care everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import pytest
import torch
from torch import nn

import gradscope
import gradscope.testing as gt
from gradscope import GradientAssertionError, GradscopeError


def trained() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    net(torch.randn(5, 3)).pow(2).sum().backward()
    return net


FORMS: dict[str, Callable[[nn.Module], Iterable[object]]] = {
    "list": lambda net: list(net.parameters()),
    "generator": lambda net: net.parameters(),
    "pairs": lambda net: net.named_parameters(),
    "tuple": lambda net: tuple(net.parameters()),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_graph_check_step_and_verify_take_any_iterable_of_parameters(form: str) -> None:
    net = trained()
    loss = net(torch.randn(2, 3)).sum()
    g = gradscope.graph(loss, params=FORMS[form](net))
    named = sorted(n.param for n in g.nodes if n.param is not None)
    assert len(named) == 4 and all(isinstance(n, str) for n in named)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradscope.check_step(optimizer, params=FORMS[form](net)) as report:
        optimizer.step()
    assert report.ok and len(report.params) == 4
    with gradscope.verify_optimizer(optimizer, params=FORMS[form](net)) as verifier:
        optimizer.step()
    assert len(verifier.reports) == 1 and verifier.ok


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_assertion_takes_any_iterable_of_parameters(form: str) -> None:
    net = trained()
    gt.assert_grads_finite(FORMS[form](net))
    gt.assert_all_params_have_grad(FORMS[form](net))
    gt.assert_grad_norms(FORMS[form](net), max=1e6)
    gt.assert_grads_close(FORMS[form](net), FORMS[form](net))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    gt.assert_params_updated(FORMS[form](net), optimizer.step)
    gt.assert_step_matches_reference(optimizer, optimizer.step, params=FORMS[form](net))
    net.zero_grad()
    gt.assert_no_grad(FORMS[form](net))
    with pytest.raises(GradientAssertionError, match=r"\[2\]|2\.weight"):
        net[2].weight.grad = torch.full_like(net[2].weight, math.nan)
        gt.assert_grads_finite(FORMS[form](net))


def test_a_failing_assertion_names_listed_tensors_by_position() -> None:
    net = trained()
    net[0].bias.grad[1] = math.inf
    with pytest.raises(GradientAssertionError, match=r"\[1\] \(4,\): 0 NaN, 1 \+Inf"):
        gt.assert_grads_finite(list(net.parameters()))


def complex_param(values: list[complex]) -> nn.Module:
    holder = nn.Module()
    holder.p = nn.Parameter(torch.zeros(len(values), dtype=torch.complex64))
    holder.p.grad = torch.tensor(values, dtype=torch.complex64)
    return holder


def test_complex_gradients_in_the_assertions() -> None:
    holder = complex_param([3 + 4j, 0])
    with pytest.raises(GradientAssertionError, match=r"gradient norm 5 > max=4.9"):
        gt.assert_grad_norms(holder, max=4.9)
    gt.assert_grad_norms(holder, min=4.99, max=5.01)
    broken = complex_param([complex(math.nan, 0), complex(1, math.inf), 1j])
    with pytest.raises(GradientAssertionError, match=r"1 NaN, 1 Inf of 3 elements; first at"):
        gt.assert_grads_finite(broken)
    gt.assert_grads_finite(holder)


def meta_model() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))


@pytest.mark.parametrize(
    "call",
    [
        lambda net: gt.assert_grads_finite(net),
        lambda net: gt.assert_all_params_have_grad(net),
        lambda net: gt.assert_grad_norms(net, max=1.0),
        lambda net: gt.assert_no_grad(net),
        lambda net: gt.assert_params_updated(net, lambda: None),
        lambda net: gt.assert_grads_close(net, net),
    ],
)
def test_assertions_refuse_meta_models(call: Callable[[nn.Module], object]) -> None:
    with pytest.raises(GradscopeError, match=r"parameters are on the meta device"):
        call(meta_model())


def test_graph_and_step_checks_refuse_meta_models_where_they_need_values() -> None:
    net = meta_model()
    loss = net(torch.ones(1, 2, device="meta")).sum()
    g = gradscope.graph(loss, params=net)  # walking needs no values
    assert {n.param for n in g.nodes if n.param} == {"0.weight", "0.bias", "1.weight", "1.bias"}
    with pytest.raises(
        GradscopeError, match=r"graph\(grads=True\): 1 of 1 outputs are on the meta"
    ):
        gradscope.graph(loss, params=net, grads=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(GradscopeError, match=r"check_step\(\): 4 of 4 parameters are on the meta"):
        gradscope.check_step(optimizer, params=net)
    with pytest.raises(GradscopeError, match=r"verify_optimizer\(\): 4 of 4 parameters"):
        gradscope.verify_optimizer(optimizer)
