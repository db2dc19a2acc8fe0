"""Gradient tests for the tutorial's LeNet: copy this file into your suite, swap in your model.

    pytest examples/test_lenet_gradients.py
    pytest examples/test_lenet_gradients.py --gradscope-artifacts=gradscope-artifacts

With the second form, a failing test that used the ``gradscope_watch`` fixture leaves its
per-parameter summary, and the backward graph if it called ``w.graph(loss)``, as
gradscope-artifacts/<test>/summary.txt and graph.svg (graph.dot when no Graphviz is installed).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

import gradscope
import gradscope.testing as gt

Batch = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture
def net() -> gradscope.LeNet:
    torch.manual_seed(0)
    return gradscope.LeNet()


@pytest.fixture
def batch() -> Batch:
    torch.manual_seed(1)
    return torch.randn(4, 1, 32, 32), torch.randn(4, 10)


def loss_of(net: nn.Module, batch: Batch) -> torch.Tensor:
    inputs, target = batch
    loss: torch.Tensor = nn.functional.mse_loss(net(inputs), target)
    return loss


def test_every_parameter_gets_a_finite_gradient(net: nn.Module, batch: Batch) -> None:
    loss_of(net, batch).backward()
    gt.assert_all_params_have_grad(net)  # names any layer the loss does not reach
    gt.assert_grads_finite(net)


def test_gradients_neither_vanish_nor_explode(net: nn.Module, batch: Batch) -> None:
    loss_of(net, batch).backward()
    gt.assert_grad_norms(net, min=1e-6, max=10.0)


def test_float32_gradients_match_a_float64_copy(net: nn.Module, batch: Batch) -> None:
    reference = copy.deepcopy(net).double()
    loss_of(net, batch).backward()
    inputs, target = batch
    loss_of(reference, (inputs.double(), target.double())).backward()
    gt.assert_grads_close(net, reference)  # torch.testing's float32 tolerances


def test_the_classifier_backward_agrees_with_finite_differences(net: gradscope.LeNet) -> None:
    # gradcheck costs two forward passes per element: check a part of the model, not all of it
    gt.assert_gradcheck(net.fc3, torch.randn(2, 84))


def test_one_sgd_step_moves_every_parameter(net: nn.Module, batch: Batch) -> None:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_of(net, batch)
        loss.backward()
        optimizer.step()
        return loss

    gt.assert_params_updated(net, step)


def test_sgd_steps_match_the_documented_update_rule(net: nn.Module, batch: Batch) -> None:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad()
        loss_of(net, batch).backward()
        optimizer.step()

    for _ in range(2):  # the second step also checks the momentum buffers
        gt.assert_step_matches_reference(optimizer, step, params=net)


def test_a_frozen_feature_extractor_stays_out_of_the_graph(
    net: gradscope.LeNet, batch: Batch
) -> None:
    for layer in (net.conv1, net.conv2):
        layer.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01)

    def step() -> None:
        optimizer.zero_grad()
        loss_of(net, batch).backward()
        optimizer.step()

    gt.assert_params_updated(net, step)  # conv1/conv2 must not move (requires_grad=False)
    gt.assert_no_grad(net, ["conv1.*", "conv2.*"])


@pytest.mark.gradscope_finite  # every backward recorded below must leave finite gradients
def test_training_a_few_steps_under_watch(
    net: nn.Module, batch: Batch, gradscope_watch: Callable[..., gradscope.Watch]
) -> None:
    w = gradscope_watch(net)  # closed by the fixture after the test
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = loss_of(net, batch)
        w.graph(loss)  # the backward graph with gradient norms, saved if this test fails
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert len(w.records) == 5
    assert w.last.missing == []
    assert w.last_graph is not None and w.last_graph.first_nonfinite is None
    assert losses[-1] < losses[0]
