"""Fixtures shared by every test file."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import Phase, settings

import gradscope

# CI runs a fixed sequence of examples (a red build must be reproducible); locally each run
# explores new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
# tools/mutate.py: the first failing example kills a mutant; shrinking it only costs time (it
# turned most killed mutants of a rule into timeouts, several seconds each)
settings.register_profile(
    "mutate",
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
if os.environ.get("GRADSCOPE_MUTATE"):
    settings.load_profile("mutate")
elif os.environ.get("CI"):
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
