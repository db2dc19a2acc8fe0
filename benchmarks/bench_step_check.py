"""Cost of checking optimizer steps: a LeNet/MLP training step with and without the check.

Prints the median time per step for each variant and its ratio to the plain step, measured
interleaved in one process on one thread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn, optim

import gradscope

ROUNDS, STEPS = 15, 10


def _model(kind: str) -> tuple[nn.Module, torch.Tensor]:
    if kind == "LeNet":
        return gradscope.LeNet(), torch.randn(8, 1, 32, 32)
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(1024, 1024), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(1024, 10)), torch.randn(32, 1024)


def _variants(kind: str) -> dict[str, Callable[[], None]]:
    net, x = _model(kind)
    opt = optim.Adam(net.parameters(), lr=1e-4)

    def forward_backward() -> None:
        opt.zero_grad()
        net(x).pow(2).mean().backward()

    def plain() -> None:
        forward_backward()
        opt.step()

    def checked() -> None:
        forward_backward()
        with gradscope.check_step(opt, params=net) as report:
            opt.step()
        assert report.ok

    return {"plain step": plain, "check_step(Adam reference)": checked}


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for kind in ("LeNet", "MLP 4x1024"):
        variants = _variants(kind)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():
            fn()  # warm up
        for _ in range(ROUNDS):
            for name, fn in variants.items():
                start = time.perf_counter()
                for _ in range(STEPS):
                    fn()
                times[name].append((time.perf_counter() - start) / STEPS)
        base = statistics.median(times["plain step"])
        for name, samples in times.items():
            med = statistics.median(samples)
            print(f"{kind:11s} {name:28s} {med * 1e3:8.2f} ms/step  {med / base:5.2f}x")


if __name__ == "__main__":
    main()
