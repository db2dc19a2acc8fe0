"""The tutorial's LeNet, step by step, with gradscope watching the gradients.

Run it with ``python examples/lenet.py``; ``make demo`` runs the full demo.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import gradscope


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gradscope-demo", help="folder for the pictures")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    net = gradscope.LeNet()
    inputs = torch.randn(1, 1, 32, 32)

    with gradscope.watch(net) as watch:
        print("Zero the gradient buffers and back-propagate random gradients.")
        net.zero_grad()
        net(inputs).backward(torch.randn(1, 10))
        print(f"   conv1.bias.grad after that pass: {watch.last['conv1.bias'].after}")

        print("A loss: MSELoss against a random target.")
        target = torch.randn(10).view(1, -1)
        loss = nn.MSELoss()(net(inputs), target)
        print(f"   {loss!r}")

        print("conv1.bias.grad before and after loss.backward().")
        net.zero_grad()
        loss.backward()
        record = watch.last["conv1.bias"]
        print(f"   before: {record.before}  (zero_grad() sets .grad to None)")
        print(f"   after:  {record.after}")

    print()
    print(watch.summary())
    print()
    show_graph(net, inputs, target, Path(args.out))


def show_graph(net: nn.Module, inputs: torch.Tensor, target: torch.Tensor, out_dir: Path) -> Path:
    """The tutorial's walk along ``loss.grad_fn.next_functions``, then the graph as an SVG."""
    loss = nn.MSELoss()(net(inputs), target)
    g = gradscope.graph(loss, params=net, grads=True)
    print("Following loss.grad_fn.next_functions[0][0] twice, as the tutorial does by hand:")
    print("   " + " -> ".join(node.label for node in g.path(0, 0)))
    print("   (the last one is the leaf that feeds fc3.bias, not a ReLU)")
    net.zero_grad()
    loss.backward()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = g.save(out_dir / "lenet_backward.svg")
    except gradscope.GradscopeError as err:  # no Graphviz renderer: the DOT text still works
        path = g.save(out_dir / "lenet_backward.dot")
        print(f"   ({err})")
    print(f"The backward graph with gradient norms: {path}")
    return path


if __name__ == "__main__":
    main()
