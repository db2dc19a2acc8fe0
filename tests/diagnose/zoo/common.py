"""Data and models the zoo scripts share: small, seeded, learnable."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "SmallCNN",
    "TinyTransformer",
    "classification",
    "images",
    "mlp",
    "sequences",
    "tokens",
]


def classification(n: int = 256, features: int = 20, classes: int = 5, seed: int = 0):
    """Inputs and labels from a random linear teacher (a problem a model can learn)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    teacher = torch.randn(features, classes, generator=g)
    return x, (x @ teacher).argmax(1)


def images(n: int = 64, channels: int = 3, size: int = 16, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g)
    y = (x.mean((1, 2, 3)) * 4).long().clamp(-2, 1) + 2
    return x, y % classes


def tokens(n: int = 64, length: int = 12, vocab: int = 50, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, length), generator=g)
    return x, x[:, 0] % classes


def sequences(n: int = 32, length: int = 30, features: int = 8, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, features, generator=g)
    return x, (x[:, :, 0].sum(1) > 0).long() + (x[:, -1, 1] > 1).long()


def mlp(inputs: int = 20, hidden: int = 64, outputs: int = 5, depth: int = 3, act=nn.ReLU):
    """Linear-act pairs, then a linear head: ``0`` is the first layer, ``2`` the second, ..."""
    layers: list[nn.Module] = []
    size = inputs
    for _ in range(depth):
        layers += [nn.Linear(size, hidden), act()]
        size = hidden
    return nn.Sequential(*layers, nn.Linear(size, outputs))


class SmallCNN(nn.Module):
    """Two conv-BatchNorm-ReLU blocks, pooling, a linear head."""

    def __init__(self, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyTransformer(nn.Module):
    """Token embedding, a 2-layer TransformerEncoder, mean pooling, a linear head."""

    def __init__(self, vocab: int = 50, dim: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))
