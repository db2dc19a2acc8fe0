"""gradscope: see what your gradients are doing.

>>> import gradscope, torch
>>> net = gradscope.LeNet()
>>> with gradscope.watch(net) as w:
...     net(torch.randn(1, 1, 32, 32)).sum().backward()
>>> w.last["conv1.bias"].after.shape
torch.Size([6])
"""

from ._distributed.replicas import ReplicaMismatch, ReplicaReport, check_replicas
from ._errors import (
    GradientAssertionError,
    GradscopeError,
    GradscopeWarning,
    StepMismatch,
    UnknownParameterError,
)
from ._graph.build import graph
from ._graph.data import NonfiniteGradient
from ._graph.graph import Graph
from ._graph.walk import GraphEdge, GraphNode, SavedTensor
from ._lenet import LeNet
from ._optim.check import check_step
from ._optim.shadow import Shadow
from ._optim.step_report import ParamCheck, StateCheck, StepReport
from ._optim.verify import OptimizerVerifier, verify_optimizer
from ._report.summary import Summary
from ._version import __version__
from ._watch.records import BackwardRecord, GradRecord
from ._watch.stats import GradStats
from ._watch.watch import Watch, watch

__all__ = [
    "BackwardRecord",
    "GradRecord",
    "GradStats",
    "GradientAssertionError",
    "GradscopeError",
    "GradscopeWarning",
    "Graph",
    "GraphEdge",
    "GraphNode",
    "LeNet",
    "NonfiniteGradient",
    "OptimizerVerifier",
    "ParamCheck",
    "ReplicaMismatch",
    "ReplicaReport",
    "SavedTensor",
    "Shadow",
    "StateCheck",
    "StepMismatch",
    "StepReport",
    "Summary",
    "UnknownParameterError",
    "Watch",
    "__version__",
    "check_replicas",
    "check_step",
    "graph",
    "verify_optimizer",
    "watch",
]
