"""Cost of checking optimizer steps on the MLP 4x1024 (batch 64) and LeNet, SGD and Adam.

Two questions, each answered with interleaved median ratios measured in one process on one
thread (the load of other processes then mostly cancels):

* ``verify_optimizer`` (state checked) on a whole training step (forward, backward, step)
  against the same step unchecked; with ``coverage=1`` (every element every step) and
  ``coverage=0.125`` (a rotating eighth of each large tensor per step);
* ``check_step`` around ``optimizer.step()`` against the plain ``optimizer.step()``
  (forward and backward run untimed before each), on its own and with a ``gradscope.Shadow``
  kept across calls (which reuses its buffers).

Run: ``python benchmarks/bench_step_check.py [--rounds 15]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn, optim

import gradscope

STEPS = 5


def _model(kind: str) -> tuple[nn.Module, torch.Tensor]:
    if kind == "LeNet":
        return gradscope.LeNet(), torch.randn(8, 1, 32, 32)
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(1024, 1024), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(1024, 10)), torch.randn(64, 1024)


def _optimizer(name: str, net: nn.Module) -> optim.Optimizer:
    if name == "SGD":
        return optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    return optim.Adam(net.parameters(), lr=1e-4)


Timed = Callable[[], float]


def _whole_steps(kind: str, name: str) -> dict[str, Timed]:
    """Variants that time a whole training step."""
    out: dict[str, Timed] = {}
    for label, coverage in (("plain", None), ("verify", 1.0), ("verify 1/8", 0.125)):
        net, x = _model(kind)
        opt = _optimizer(name, net)
        verifier = None
        if coverage is not None:
            verifier = gradscope.verify_optimizer(
                opt, params=net, coverage=coverage, on_mismatch="raise"
            )

        def step(
            net: nn.Module = net,
            x: torch.Tensor = x,
            opt: optim.Optimizer = opt,
            verifier: object = verifier,  # kept alive: a dropped verifier removes its hooks
        ) -> float:
            start = time.perf_counter()
            for _ in range(STEPS):
                opt.zero_grad()
                net(x).pow(2).mean().backward()
                opt.step()
            return (time.perf_counter() - start) / STEPS

        out[label] = step
    return out


def _steps_only(kind: str, name: str) -> dict[str, Timed]:
    """Variants that time optimizer.step() alone, with and without check_step around it."""
    out: dict[str, Timed] = {}
    for label in ("step", "check_step", "check_step+Shadow"):
        net, x = _model(kind)
        opt = _optimizer(name, net)
        shadow = gradscope.Shadow()  # kept across calls: its buffers are reused

        def step(
            net: nn.Module = net,
            x: torch.Tensor = x,
            opt: optim.Optimizer = opt,
            label: str = label,
            shadow: gradscope.Shadow = shadow,
        ) -> float:
            total = 0.0
            for _ in range(STEPS):
                opt.zero_grad()
                net(x).pow(2).mean().backward()
                start = time.perf_counter()
                if label == "step":
                    opt.step()
                else:
                    kept = shadow if label.endswith("Shadow") else True
                    with gradscope.check_step(opt, params=net, shadow=kept) as report:
                        opt.step()
                    assert report.ok
                total += time.perf_counter() - start
            return total / STEPS

        out[label] = step
    return out


def _measure(variants: dict[str, Timed], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm up (and the first step creates the optimizer state)
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(fn())
    return {name: statistics.median(samples) for name, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--models", default="MLP 4x1024,LeNet")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for kind in args.models.split(","):
        for name in ("SGD", "Adam"):
            whole = _measure(_whole_steps(kind, name), args.rounds)
            alone = _measure(_steps_only(kind, name), args.rounds)
            base = whole["plain"]
            print(
                f"{kind:10s} {name:4s} training step {base * 1e3:7.2f} ms | "
                f"verify_optimizer {whole['verify'] / base:5.2f}x | "
                f"coverage=1/8 {whole['verify 1/8'] / base:5.2f}x | "
                f"step {alone['step'] * 1e3:6.2f} ms, check_step "
                f"{alone['check_step'] / alone['step']:5.2f}x, with a Shadow "
                f"{alone['check_step+Shadow'] / alone['step']:5.2f}x"
            )


if __name__ == "__main__":
    main()
