"""Overhead of watch() per training step under FSDP2 and DDP, 2 CPU processes (gloo).

Launches itself under torchrun. Each rank trains two copies of a 4x512 MLP, one watched and one
not, interleaved round by round (so drifts in machine speed hit both alike), under FSDP2, under
DDP, and unwrapped ("local": the watch's own cost in the same processes, for comparison). Rank 0
prints the median step time of the unwatched job, the median ratio of the watched one, and the
number of collectives gradscope adds per backward pass (counted at torch.distributed's Python
API).

    python benchmarks/bench_distributed.py [--rounds 25] [--steps 4]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import gradscope

COLLECTIVES = ("all_gather", "all_reduce", "all_gather_object", "broadcast", "reduce_scatter")


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(512, 10))


def fsdp() -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    net = mlp()
    for layer in net:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(net)
    return net


def ddp() -> nn.Module:
    return nn.parallel.DistributedDataParallel(mlp())


def step_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()

    return step


def count_collectives(step: Callable[[], None]) -> int:
    calls: list[str] = []
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def counting(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return originals[name](*args, **kwargs)

        return call

    for name in COLLECTIVES:
        setattr(dist, name, counting(name))
    try:
        step()
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return len(calls)


def worker(rounds: int, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x = torch.randn(32, 512, generator=torch.Generator().manual_seed(rank))
    # "local": the same MLP unwrapped in the same processes, for the watch's own cost
    for label, build in (("FSDP2", fsdp), ("DDP", ddp), ("local", mlp)):
        plain, watched = build(), build()
        plain_step, watched_step = step_fn(plain, x), step_fn(watched, x)
        watch = gradscope.watch(watched)
        for _ in range(3):  # warm up both (FSDP's lazy init, allocator)
            plain_step()
            watched_step()
        added = count_collectives(watched_step) - count_collectives(plain_step)
        base: list[float] = []
        ratios: list[float] = []
        for _ in range(rounds):
            times = []
            for step in (plain_step, watched_step):
                dist.barrier()
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                times.append((time.perf_counter() - start) / steps)
            base.append(times[0])
            ratios.append(times[1] / times[0])
        watch.close()
        if rank == 0:
            print(
                f"{label:6s} MLP 4x512, batch 32/rank: "
                f"{statistics.median(base) * 1e3:7.2f} ms/step unwatched; "
                f"watch() median ratio {statistics.median(ratios):.3f}x; "
                f"collectives added per pass: {added}"
            )
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.rounds, args.steps)
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(port), __file__, "--worker",
        "--rounds", str(args.rounds), "--steps", str(args.steps),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sys.exit(subprocess.run(command, env=env, timeout=1800, check=False).returncode)


if __name__ == "__main__":
    main()
