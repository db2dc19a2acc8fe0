"""Where a watched training step spends its time: cProfile of the step with and without watch().

python benchmarks/profile_watch.py [--device cuda] [--model mlp|lenet|resnet]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_watch import MODELS, make_step

import gradscope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="mlp", choices=["lenet", "mlp", "resnet"])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    factory = list(MODELS.values())[["lenet", "mlp", "resnet"].index(args.model)]
    net, x = factory()
    net, x = net.to(args.device), x.to(args.device)
    watch = gradscope.watch(net)
    step = make_step(net, x)
    for _ in range(5):
        step()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.steps):
        step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    profile.disable()
    watch.close()
    pstats.Stats(profile).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
