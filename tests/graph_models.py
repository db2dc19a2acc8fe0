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


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convs with batch norm, a shortcut (1x1 conv on stride)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(out + shortcut)
        return out


class ResNet18(nn.Module):
    """torchvision's resnet18 layout (same module names), written here: no torchvision."""

    def __init__(self, classes: int = 10, width: int = 64) -> None:
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w))
        self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w))
        self.layer4 = nn.Sequential(BasicBlock(4 * w, 8 * w, 2), BasicBlock(8 * w, 8 * w))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        out: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return out


def gpt2(layers: int = 2) -> nn.Module:
    """A GPT-2 language model built from a transformers config (needs transformers)."""
    import transformers

    config = transformers.GPT2Config(
        n_layer=layers,
        n_head=4,
        n_embd=64,
        vocab_size=500,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    model: nn.Module = transformers.GPT2LMHeadModel(config)
    return model
