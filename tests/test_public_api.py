"""The public surface: what `import gradscope` offers must not drift by accident."""

from __future__ import annotations

import subprocess
import sys
from types import ModuleType

import gradscope

EXPECTED = {
    "BackwardRecord",
    "GradRecord",
    "GradStats",
    "Summary",
    "Watch",
    "watch",
    "GradientAssertionError",
    "GradscopeError",
    "GradscopeWarning",
    "Graph",
    "GraphEdge",
    "GraphNode",
    "LeNet",
    "NonfiniteGradient",
    "OptimizerVerifier",
    "SavedTensor",
    "graph",
    "ParamCheck",
    "Shadow",
    "StateCheck",
    "StepMismatch",
    "StepReport",
    "UnknownParameterError",
    "__version__",
    "check_step",
    "verify_optimizer",
    "check_replicas",
    "ReplicaReport",
    "ReplicaMismatch",
}


def test_all_is_exactly_the_public_surface() -> None:
    assert set(gradscope.__all__) == EXPECTED
    for name in gradscope.__all__:
        assert hasattr(gradscope, name), name


def test_everything_public_is_in_all_or_a_submodule() -> None:
    extra = {
        name
        for name, value in vars(gradscope).items()
        if not name.startswith("_") and name not in EXPECTED and not isinstance(value, ModuleType)
    }
    assert extra == set()


def test_errors_share_one_base() -> None:
    assert issubclass(gradscope.GradientAssertionError, gradscope.GradscopeError)
    assert issubclass(gradscope.GradientAssertionError, AssertionError)
    assert issubclass(gradscope.UnknownParameterError, KeyError)


def test_import_prints_nothing_and_leaves_global_state_alone() -> None:
    code = (
        "import torch, warnings;"
        "before = (torch.is_grad_enabled(), torch.get_default_dtype(), torch.is_anomaly_enabled(),"
        " len(warnings.filters));"
        "import gradscope;"
        "after = (torch.is_grad_enabled(), torch.get_default_dtype(), torch.is_anomaly_enabled(),"
        " len(warnings.filters));"
        "assert before == after, (before, after)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""
