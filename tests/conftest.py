"""Fixtures shared by every test file."""

from __future__ import annotations

import pytest
import torch

import gradscope


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def lenet() -> gradscope.LeNet:
    return gradscope.LeNet()


@pytest.fixture
def lenet_input() -> torch.Tensor:
    return torch.randn(1, 1, 32, 32)
