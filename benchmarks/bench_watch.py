"""Overhead of watch() on a full training step (forward, backward, SGD step), one thread.

Each configuration trains its own copy of the model; configurations are interleaved round by
round so drifts in machine speed hit them alike. Prints the median step time of the baseline and
the median ratio of each watched configuration to it.

    python benchmarks/bench_watch.py [--rounds 30] [--clock cpu]

``--clock cpu`` times with this thread's CPU time instead of the wall clock: on a machine shared
with other jobs it leaves out the time the benchmark was waiting for a core (cache and memory
bandwidth contention still show).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import gradscope


def mlp() -> tuple[nn.Module, torch.Tensor]:
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(1024, 1024), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(1024, 10)), torch.randn(64, 1024)


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


def resnet() -> tuple[nn.Module, torch.Tensor]:
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        *[Block(32) for _ in range(4)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    return net, torch.randn(8, 3, 32, 32)


def lenet() -> tuple[nn.Module, torch.Tensor]:
    return gradscope.LeNet(), torch.randn(1, 1, 32, 32)


MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "LeNet (batch 1)": lenet,
    "MLP 4x1024 (batch 64)": mlp,
    "ResNet-style CNN (batch 8)": resnet,
}
CONFIGS: dict[str, dict[str, object] | None] = {
    "baseline": None,
    "watch()": {},
    'watch(keep="none")': {"keep": "none"},
    "watch(copy=True)": {"copy": True},
    "watch(tag_modules=False)": {"tag_modules": False},
}


def make_step(net: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    target = torch.randn(x.shape[0], 10, device=x.device)

    def step() -> None:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(net(x), target)
        loss.backward()
        optimizer.step()

    return step


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_model(
    factory: Callable[[], tuple[nn.Module, torch.Tensor]],
    rounds: int,
    device: str = "cpu",
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    net, x = factory()
    net, x = net.to(device), x.to(device)
    steps: dict[str, Callable[[], None]] = {}
    watches = []
    for name, options in CONFIGS.items():
        copy_ = copy.deepcopy(net)
        if options is not None:
            watches.append(gradscope.watch(copy_, **options))  # type: ignore[arg-type]
        steps[name] = make_step(copy_, x)
    for step in steps.values():  # warm up
        for _ in range(3):
            step()
    sync(device)
    start = clock()
    steps["baseline"]()
    sync(device)
    per_round = max(1, int(0.05 / max(clock() - start, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync(device)
            start = clock()
            for _ in range(per_round):
                step()
            sync(device)
            times[name].append((clock() - start) / per_round)
    for w in watches:
        w.close()
    base = statistics.median(times["baseline"])
    result = {"baseline_ms": base * 1e3}
    for name, values in times.items():
        if name != "baseline":
            ratios = [t / b for t, b in zip(values, times["baseline"], strict=True)]
            result[name] = statistics.median(ratios)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a machine with a GPU")
    parser.add_argument(
        "--clock", default="wall", choices=["wall", "cpu"], help="cpu: this thread's CPU time"
    )
    args = parser.parse_args()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(1)
    torch.manual_seed(0)
    header = f"{'model':<28} {'baseline step':>14} " + " ".join(
        f"{name:>20}" for name in CONFIGS if name != "baseline"
    )
    print(header)
    print("-" * len(header))
    for label, factory in MODELS.items():
        result = bench_model(factory, args.rounds, args.device, clock)
        cells = " ".join(f"{result[name]:>19.3f}x" for name in CONFIGS if name != "baseline")
        print(f"{label:<28} {result['baseline_ms']:>11.2f} ms {cells}")


if __name__ == "__main__":
    main()
