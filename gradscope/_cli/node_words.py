"""``loss.grad_fn`` read in the tutorial's words, for the demo's steps 3 and 4.

The chain of ops from the input to the loss (``conv2d [conv1] -> relu -> ...``) with the layer
each reads, and a node's class name with the parameter it reads or, for an ``AccumulateGrad``,
writes. Reads autograd's nodes directly, as the tutorial does by hand.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["chain", "node_label"]


def node_label(node: Any, names: dict[int, str]) -> str:
    """A grad_fn's class name, plus the parameter it writes when it is an AccumulateGrad."""
    label = type(node).__name__
    variable = getattr(node, "variable", None)
    if variable is not None:
        name = names.get(id(variable))
        return f"{label} -> writes {name}.grad" if name else f"{label} (a leaf tensor)"
    used = sorted(_parameters_used(node, names))
    return f"{label} (uses {', '.join(used)})" if used else label


def _parameters_used(node: Any, names: dict[int, str]) -> set[str]:
    """Parameters a node reads directly, looking through the transposes torch inserts."""
    found: set[str] = set()
    for child, _ in getattr(node, "next_functions", ()):
        if child is None:
            continue
        variable = getattr(child, "variable", None)
        if variable is not None and id(variable) in names:
            found.add(names[id(variable)])
        elif type(child).__name__ in ("TBackward0", "PermuteBackward0", "ViewBackward0"):
            found |= _parameters_used(child, names)
    return found


# What the tutorial calls the ops whose backward nodes torch names differently.
_OP_NAMES = {
    "Convolution": "conv2d",
    "MaxPool2DWithIndices": "maxpool2d",
    "Addmm": "linear",
    "MseLoss": "MSELoss",
    # The tutorial's LeNet calls torch.flatten(x, 1), which autograd records as a view.
    "View": "flatten",
}


def chain(loss: torch.Tensor, names: dict[int, str]) -> tuple[list[str], list[str]]:
    """The ops from the input side to the loss, following each node's non-parameter input.

    Returns (the tutorial's words with the layer each op uses, torch's node names).
    """
    words: list[str] = []
    nodes: list[str] = []
    node = loss.grad_fn
    while node is not None:
        label = type(node).__name__
        nodes.append(label)
        op = label.removesuffix("0").removesuffix("Backward")
        used = sorted({name.rsplit(".", 1)[0] for name in _parameters_used(node, names)})
        words.append(_OP_NAMES.get(op, op.lower()) + (f" [{', '.join(used)}]" if used else ""))
        inner = [
            n
            for n, _ in node.next_functions
            if n is not None and type(n).__name__ not in ("AccumulateGrad", "TBackward0")
        ]
        node = inner[0] if inner else None
    return ["input", *reversed(words), "loss"], list(reversed(nodes))
