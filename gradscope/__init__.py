"""gradscope: see what your gradients are doing.

>>> import gradscope, torch
>>> net = gradscope.LeNet()
>>> with gradscope.watch(net) as w:
...     net(torch.randn(1, 1, 32, 32)).sum().backward()
>>> w.last["conv1.bias"].after.shape
torch.Size([6])
"""

from ._errors import GradientAssertionError, GradscopeError, GradscopeWarning, UnknownParameterError
from ._lenet import LeNet
from ._records import BackwardRecord, GradRecord
from ._stats import GradStats
from ._summary import Summary
from ._watch import Watch, watch

__version__ = "0.1.0"

__all__ = [
    "BackwardRecord",
    "GradRecord",
    "GradStats",
    "GradientAssertionError",
    "GradscopeError",
    "GradscopeWarning",
    "LeNet",
    "Summary",
    "UnknownParameterError",
    "Watch",
    "__version__",
    "watch",
]
