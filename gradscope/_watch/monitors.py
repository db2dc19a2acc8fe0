"""The evidence-gathering parts of a watch beyond the gradient records, and ``on_problem``.

A :class:`Monitors` owns the forward monitor (``check_forward``), the step monitor
(``optimizer=``) and the per-pass signals, and is told about each backward pass through the
recorder's ``end_of_pass`` listeners: one explicit seam into the recorder, so the recording of
gradients does not know about diagnosis. It holds the recorder weakly.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.autograd import Variable

from .._errors import GradscopeError, GradscopeWarning, ProblemFound
from .._naming import describe
from .assembly import loss_scale
from .evidence import Evidence, param_order
from .forward import ForwardMonitor
from .records import BackwardRecord
from .signals import PassSignals
from .steps import StepMonitor

if TYPE_CHECKING:
    from .recorder import Recorder

__all__ = ["ON_PROBLEM", "Monitors", "optimizers_of"]

ON_PROBLEM = (None, "warn", "raise")
# What can be known when a pass ends (the rest needs several passes or steps).
_PASS_KINDS = ("nonfinite_input", "nonfinite_forward", "nonfinite_loss", "nonfinite_backward")


def _unwrap(optimizer: Any) -> Any:
    """The torch optimizer inside a wrapper (accelerate's AcceleratedOptimizer, Lightning's
    LightningOptimizer): the wrapper's step calls the inner one's, whose hooks fire."""
    seen = 0
    while not hasattr(optimizer, "_optimizer_step_pre_hooks") and seen < 8:
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if inner is None:
            break
        optimizer, seen = inner, seen + 1
    return optimizer


def optimizers_of(optimizer: Any) -> list[Any]:
    """``optimizer=`` as a list: one optimizer, a sequence of them, or None."""
    if optimizer is None:
        return []
    items = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    out = []
    for item in items:
        inner = _unwrap(item)
        if not (hasattr(inner, "param_groups") and hasattr(inner, "_optimizer_step_pre_hooks")):
            raise GradscopeError(
                f"optimizer= takes a torch.optim.Optimizer (or a list of them), not "
                f"{describe(item)}; e.g. gradscope.watch(net, optimizer=opt)"
            )
        out.append(inner)
    return out


class Monitors:
    """Forward checks, step records and pass signals of one watch; see the module docstring."""

    def __init__(
        self,
        recorder: Recorder,
        module: nn.Module,
        *,
        optimizers: Sequence[Any],
        check_forward: bool,
        on_problem: str | None,
        history: int | None,
    ) -> None:
        if on_problem not in ON_PROBLEM:
            raise GradscopeError(
                f"on_problem={on_problem!r}: pass 'warn', 'raise', or None (the default: "
                "diagnose only when asked, with w.diagnose())"
            )
        if not isinstance(check_forward, bool):
            raise GradscopeError(
                f"check_forward= takes True or False, not {describe(check_forward)}"
            )
        self._recorder = weakref.ref(recorder)
        self.on_problem = on_problem
        root = recorder.root
        self.module_types = (
            {path: type(m).__name__ for path, m in root.named_modules()} if root is not None else {}
        )
        compiled = hasattr(module, "_orig_mod")
        self.forward = (
            ForwardMonitor(root, recorder.errors, history)
            if check_forward and root is not None and not compiled
            else None
        )
        ref = weakref.ref(recorder)

        def params() -> Mapping[str, torch.Tensor]:
            alive = ref()
            return alive.names.params if alive is not None else {}

        def passes() -> int:
            alive = ref()
            return alive.passes_seen if alive is not None else 0

        self.steps = (
            StepMonitor(optimizers, params, passes, recorder.errors, history)
            if optimizers
            else None
        )
        self.signals = PassSignals(history)
        self._always_missing: set[str] | None = None
        self._reported: set[tuple[str, tuple[str, ...], str | None]] = set()
        me = weakref.ref(self)

        def listener(record: BackwardRecord, names: Mapping[str, torch.Tensor]) -> None:
            monitors = me()
            if monitors is not None:
                monitors.on_pass(record, names)

        recorder.end_of_pass.append(listener)

    # ----------------------------------------------------------------------------- passes
    def on_pass(self, record: BackwardRecord, params: Mapping[str, torch.Tensor]) -> None:
        if _sharded(params):
            return  # FSDP2: the per-pass evidence is not written for DTensor shards yet
        missing = record.missing
        if self._always_missing is None:
            self._always_missing = set(missing)
        else:
            self._always_missing &= set(missing)
        checking = self.on_problem is not None
        # Knowing now costs nothing on the CPU (the norms are read as the pass ends); on a GPU it
        # would wait for the whole backward pass, so only on_problem= asks there.
        nonfinite = record.any_nonfinite() if checking or _on_cpu(params) else None
        if self.forward is not None:
            self.forward.after_backward(record.index, missing, nonfinite, params, wait=checking)
        self.signals.on_pass(record, params)
        if self.steps is not None:
            self.steps.after_backward(params)
        if checking and (nonfinite or self._always_missing or self._forward_bad()):
            self._problem()

    def _forward_bad(self) -> bool:
        forward = self.forward
        return forward is not None and any(r.origin is not None for r in list(forward.records)[-4:])

    def _problem(self) -> None:
        """Diagnose now; raise or warn about the first new error a pass can show."""
        from .._diagnose.diagnose import diagnose  # the diagnosis layer, only on a problem

        evidence = self.evidence(None)
        if evidence is None:
            return
        for finding in diagnose(evidence):
            if finding.severity != "error":
                continue
            if finding.kind not in (*_PASS_KINDS, "no_gradient"):
                continue
            key = (finding.kind, finding.params, finding.module)
            if key in self._reported:
                continue
            self._reported.add(key)
            # Queued after the recorder's own end-of-pass work, so every .grad is written when
            # it raises (or warns, under -W error) out of loss.backward().
            Variable._execution_engine.queue_callback(_announce(self.on_problem, finding))
            return

    # ----------------------------------------------------------------------------- reading
    def evidence(self, graph: Any) -> Evidence | None:
        recorder = self._recorder()
        if recorder is None:
            return None
        if self.forward is not None:
            self.forward.settle()
        if self.steps is not None and not recorder.closed:
            self.steps.refresh_held()
        records = list(recorder.records)
        params = recorder.names.params
        shapes: dict[str, tuple[int, ...]] = {}
        for record in records:
            shapes.update(record.shapes)
        shapes.update({n: tuple(p.shape) for n, p in params.items()})
        if params:
            trainable = {n: bool(p.requires_grad) for n, p in params.items()}
        else:  # closed: what the last pass saw
            frozen = set(records[-1].frozen) if records else set()
            trainable = {n: n not in frozen for n in shapes}
        order = param_order(list(shapes), self.forward.order if self.forward is not None else [])
        return Evidence(
            model=recorder.module_type,
            records=records,
            passes_seen=recorder.passes_seen,
            every=recorder.every,
            keep=recorder.keep,
            shapes=shapes,
            order=order,
            module_types=self.module_types,
            trainable=trainable,
            weight_norms=_weight_norms(params),
            forward=self.forward,
            steps=self.steps,
            signals=self.signals,
            graph=graph,
            scaler=loss_scale(recorder.scaler) is not None,
            closed=recorder.closed,
        )

    def close(self) -> None:
        if self.forward is not None:
            self.forward.close()
        if self.steps is not None:
            self.steps.close()


def _announce(on_problem: str | None, finding: Any) -> Any:
    message = str(finding)

    def announce() -> None:
        if on_problem == "raise":
            raise ProblemFound(message, finding)
        warnings.warn(GradscopeWarning(message), stacklevel=2)

    return announce


_device_of = attrgetter("device")


def _sharded(params: Mapping[str, torch.Tensor]) -> bool:
    """FSDP2 parameters are DTensors (their per-pass evidence would mix them with tensors).
    Decided per distinct type (``map`` and ``set`` run in C: this runs every pass)."""
    return any(t.__name__ == "DTensor" for t in set(map(type, params.values())))


def _on_cpu(params: Mapping[str, torch.Tensor]) -> bool:
    return all(d.type == "cpu" for d in set(map(_device_of, params.values())))


def _weight_norms(params: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """|p| of every live parameter: one fused norm per (device, dtype), read once."""
    groups: dict[tuple[torch.device, torch.dtype], list[str]] = {}
    for name, p in params.items():
        if p.layout == torch.strided and p.numel() and not p.is_complex():
            groups.setdefault((p.device, p.dtype), []).append(name)
    out: dict[str, float] = {}
    with torch.no_grad():
        for names in groups.values():
            norms = torch._foreach_norm([params[n].detach() for n in names], 2)
            for name, value in zip(names, torch.stack(norms).tolist(), strict=True):
                out[name] = float(value)
    return out
