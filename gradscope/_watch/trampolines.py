"""The functions torch calls for a recorder's hooks, each forwarding to one recorder method.

Bound with ``functools.partial`` (through :class:`gradscope._hooks.CopySafe`), so torch calls
them at C speed, and holding the recorder only through a weak reference, so a hook can never
keep a recorder (or the model) alive. They run in every pass: keep them short. An error inside
is stored on the recorder (``caught``), never raised out of the user's forward or backward.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._hooks import CopySafe
from .sharded import hook_output

if TYPE_CHECKING:
    from .recorder import Recorder

__all__ = ["after_forward", "before_forward", "on_grad", "on_shard"]


def before_forward(ref: weakref.ref[Recorder], module: nn.Module, _args: Any) -> None:
    """Forward pre-hook on the watched module."""
    recorder = ref()
    if recorder is not None:
        try:
            recorder.before_forward(module)
        except Exception as error:  # never break the user's forward or backward
            recorder.caught(error)


def on_grad(ref: weakref.ref[Recorder], name: str, param: torch.Tensor, grad: torch.Tensor) -> None:
    """Tensor hook on a parameter: sees the incoming gradient before it is accumulated."""
    recorder = ref()
    if recorder is not None:
        try:
            recorder.on_grad(name, param, grad)
        except Exception as error:
            recorder.caught(error)


def on_shard(ref: weakref.ref[Recorder], name: str, param: torch.Tensor) -> None:
    """Post-accumulate-grad hook on an FSDP2 parameter: its shard is in ``.grad``."""
    recorder = ref()
    if recorder is not None:
        recorder.guard(recorder.on_shard, name, param)


def after_forward(ref: weakref.ref[Recorder], _module: nn.Module, _args: Any, out: Any) -> None:
    """FSDP2 forward hook: start the pass when backward reaches the output (see ``sharded``)."""
    recorder = ref()
    if recorder is not None:
        recorder.guard(hook_output, out, CopySafe(_on_output_grad, ref))


def _on_output_grad(ref: weakref.ref[Recorder], _grad: torch.Tensor) -> None:
    recorder = ref()
    if recorder is not None:
        recorder.guard(recorder.current_pass)
