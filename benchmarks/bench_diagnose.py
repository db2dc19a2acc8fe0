"""What the diagnosis evidence costs in the training loop: forward checks and optimizer= hooks,
against plain watch() (without either), on a full training step, one thread.

Each configuration trains its own copy of the model, interleaved round by round so drifts in
machine speed hit them alike; ratios are medians of per-round ratios to plain watch() (and, for
reference, plain watch() to no watch at all). diagnose() itself runs on read and is timed once
at the end, after the rounds.

    python benchmarks/bench_diagnose.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gradscope

sys.path.insert(0, str(Path(__file__).parent))
from bench_watch import MODELS  # the same three models as the watch benchmark

# None: no watch at all. "plain" is watch() as it was before the diagnosis evidence.
CONFIGS: dict[str, dict[str, Any] | None] = {
    "no watch": None,
    "plain": {"check_forward": False},
    "forward checks": {},
    "optimizer=": {"check_forward": False, "optimizer": True},
    "both": {"optimizer": True},
}


def make_step(net: nn.Module, x: torch.Tensor, options: dict[str, Any] | None) -> Any:
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    target = torch.randn(x.shape[0], 10)
    watch = None
    if options is not None:
        given = dict(options)
        if given.pop("optimizer", False):
            given["optimizer"] = optimizer
        watch = gradscope.watch(net, **given)

    def step() -> None:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(net(x), target)
        loss.backward()
        optimizer.step()

    return step, watch


def bench_model(
    factory: Callable[[], tuple[nn.Module, torch.Tensor]], rounds: int
) -> dict[str, float]:
    net, x = factory()
    steps: dict[str, Callable[[], None]] = {}
    watches: dict[str, gradscope.Watch] = {}
    for name, options in CONFIGS.items():
        step, watch = make_step(copy.deepcopy(net), x, options)
        steps[name] = step
        if watch is not None:
            watches[name] = watch
    for step in steps.values():  # warm up
        for _ in range(3):
            step()
    start = time.perf_counter()
    steps["plain"]()
    per_round = max(1, int(0.05 / max(time.perf_counter() - start, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - start) / per_round)
    result = {"plain_ms": statistics.median(times["plain"]) * 1e3}
    for name, values in times.items():
        if name == "plain":
            continue
        ratios = [t / p for t, p in zip(values, times["plain"], strict=True)]
        result[name] = statistics.median(ratios)
    result["plain vs no watch"] = statistics.median(
        p / n for p, n in zip(times["plain"], times["no watch"], strict=True)
    )
    start = time.perf_counter()
    diagnosis = watches["both"].diagnose()
    result["diagnose_ms"] = (time.perf_counter() - start) * 1e3
    result["passes"] = diagnosis.passes
    for watch in watches.values():
        watch.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shown = ["forward checks", "optimizer=", "both"]
    header = (
        f"{'model':<28} {'plain watch() step':>18} "
        + " ".join(f"{name:>15}" for name in shown)
        + f" {'plain/no watch':>15} {'diagnose()':>14}"
    )
    print(header)
    print("-" * len(header))
    for label, factory in MODELS.items():
        r = bench_model(factory, args.rounds)
        cells = " ".join(f"{r[name]:>14.3f}x" for name in shown)
        print(
            f"{label:<28} {r['plain_ms']:>15.2f} ms {cells} {r['plain vs no watch']:>14.3f}x "
            f"{r['diagnose_ms']:>8.1f} ms ({int(r['passes'])} passes)"
        )


if __name__ == "__main__":
    main()
