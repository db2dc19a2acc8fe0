"""The tutorial's LeNet, step by step (gradscope's tools are added to it issue by issue)."""

from __future__ import annotations

import argparse

import torch
from torch import nn

import gradscope


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="gradscope-demo", help="folder for the pictures")
    parser.parse_args(argv)
    torch.manual_seed(0)
    net = gradscope.LeNet()
    inputs = torch.randn(1, 1, 32, 32)
    net.zero_grad()
    net(inputs).backward(torch.randn(1, 10))
    loss = nn.MSELoss()(net(inputs), torch.randn(10).view(1, -1))
    print(f"loss: {loss}")


if __name__ == "__main__":
    main()
