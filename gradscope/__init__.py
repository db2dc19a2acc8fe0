"""gradscope: see what your gradients are doing.

>>> import gradscope, torch
>>> net = gradscope.LeNet()
>>> with gradscope.watch(net) as w:
...     net(torch.randn(1, 1, 32, 32)).sum().backward()
>>> w.last["conv1.bias"].after.shape
torch.Size([6])
"""

from ._errors import GradientAssertionError, GradscopeError, GradscopeWarning, UnknownParameterError
from ._graph import Graph, NonfiniteGradient, graph
from ._graph_walk import GraphEdge, GraphNode, SavedTensor
from ._lenet import LeNet

__version__ = "0.1.0"

__all__ = [
    "GradientAssertionError",
    "GradscopeError",
    "GradscopeWarning",
    "Graph",
    "GraphEdge",
    "GraphNode",
    "LeNet",
    "NonfiniteGradient",
    "SavedTensor",
    "UnknownParameterError",
    "__version__",
    "graph",
]
