"""Real-shaped models for the graph tests and benchmark (not a test file)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def oracle(*tensors: torch.Tensor) -> tuple[set[str], int, int]:
    """A plain next_functions traversal: op-name multiset as sorted list, node and edge counts."""
    seen: dict[int, Any] = {}
    edges = 0
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    names: list[str] = []
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen[id(fn)] = fn
        names.append(fn.name().removeprefix("torch::autograd::"))
        for child, _ in fn.next_functions:
            if child is not None:
                edges += 1
                stack.append(child)
    counts = sorted(names)
    seen.clear()
    return set(counts), len(counts), edges


class ResBlock(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.tanh(self.proj(self.embed(ids))))
        return out


class Reused(nn.Module):
    """One Linear applied ``times`` times: its two parameters fan out to every use."""

    def __init__(self, times: int = 100, dim: int = 8) -> None:
        super().__init__()
        self.times = times
        self.lin = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.times):
            x = torch.tanh(self.lin(x))
        return x


class ResidualMLP(nn.Module):
    """x + relu(lin(x)) per block; ``blocks`` blocks of 5 graph nodes (+2 parameters)."""

    def __init__(self, blocks: int, dim: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.blocks:
            x = x + torch.relu(lin(x))
        return x


def transformer(layers: int = 12, d_model: int = 32) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model, 4, dim_feedforward=64, dropout=0.0, batch_first=True
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
