"""Fixtures shared by every test file."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

import gradscope

# CI runs a fixed sequence of examples (a red build must be reproducible); locally each run
# explores new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def lenet() -> gradscope.LeNet:
    return gradscope.LeNet()


@pytest.fixture
def lenet_input() -> torch.Tensor:
    return torch.randn(1, 1, 32, 32)
