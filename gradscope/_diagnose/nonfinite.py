"""NaN/Inf: born in the data, in the forward pass, in the loss, or in the backward pass."""

from __future__ import annotations

from typing import Any

from .._errors import GradscopeError
from .._watch.evidence import Evidence, module_of
from .._watch.forward_pass import ForwardRecord
from .common import Collector, ordered
from .finding import Finding

__all__ = ["check"]

# The usual fix for the op that made a NaN/Inf in forward, by the op's last name.
_FORWARD_FIXES = {
    "log": "log of a value <= 0: clamp its input (x.clamp_min(1e-8)), or use a stable form "
    "(log_softmax, logsumexp, BCEWithLogitsLoss) instead of log(softmax/sigmoid)",
    "sqrt": "sqrt of a negative value: clamp its input (x.clamp_min(0)) and add a small eps",
    "rsqrt": "rsqrt of a value <= 0: add a small eps to its input",
    "div": "division by zero: add a small eps to the denominator (x / (d + 1e-8)) or mask "
    "the rows where it is 0",
    "true_divide": "division by zero: add a small eps to the denominator",
    "reciprocal": "1/x at 0: add a small eps",
    "pow": "a fractional power of a negative value, or a large power that overflows: clamp "
    "the base",
    "exp": "exp overflows above ~88 in float32: subtract the max first (logsumexp, softmax "
    "do this for you)",
    "acos": "acos outside [-1, 1]: clamp its input to [-1 + eps, 1 - eps]",
    "asin": "asin outside [-1, 1]: clamp its input to [-1 + eps, 1 - eps]",
}
# The usual fix for a backward node that made a NaN/Inf from finite gradients.
_BACKWARD_FIXES = {
    "Sqrt": "the derivative of sqrt at 0 is infinite: add a small eps inside (sqrt(x + 1e-12)) "
    "or use torch.linalg.vector_norm, whose gradient at 0 is defined",
    "Norm": "the gradient of a norm at the zero vector is 0/0: add eps, or mask zero rows",
    "LinalgVectorNorm": "the gradient of a norm at the zero vector is 0/0: add eps, or mask "
    "zero rows",
    "Pow": "x**p with p < 1 has an infinite derivative at 0: add a small eps to the base",
    "Div": "a division by a value near 0 makes its gradient overflow: add eps to the denominator",
    "Log": "log's derivative 1/x is infinite at 0: clamp its input",
    "Acos": "acos' derivative is infinite at +-1: clamp its input to [-1 + eps, 1 - eps]",
    "Asin": "asin' derivative is infinite at +-1: clamp its input to [-1 + eps, 1 - eps]",
    "Atan2": "atan2 at (0, 0) has no gradient: add eps",
}


def _op_fix(op: str) -> str:
    last = op.rsplit(".", 1)[-1].rstrip("_")
    for key, fix in _FORWARD_FIXES.items():
        if last == key or last.startswith(key):
            return fix
    return f"look at the inputs of {op}: clamp them to its domain or add a small eps"


def _node_fix(op: str) -> str:
    for key, fix in _BACKWARD_FIXES.items():
        if op.startswith(key):
            return fix
    return f"look at the forward inputs of the op behind {op}: its derivative overflows there"


def check(ev: Evidence, out: Collector) -> None:
    gradients_first = _first_bad_gradient(ev)
    forward_bad = _forward(ev, out, gradients_first)
    _backward(ev, out, forward_bad)


def _first_bad_gradient(ev: Evidence) -> int | None:
    """The first pass with NaN/Inf gradients whose forward pass was finite (or not checked)."""
    forward = ev.forward
    bad_forward: set[int] = set()
    if forward is not None:
        bad_forward = {p for r in forward.records if r.origin is not None for p in r.passes}
    for record in ev.records:
        if record.nonfinite and record.index not in bad_forward:
            return record.index
    return None


def _forward(ev: Evidence, out: Collector, gradients_first: int | None) -> set[int]:
    """Findings for NaN/Inf born in forward; returns the backward passes they explain.

    When NaN/Inf gradients came first (from a finite forward pass), a later non-finite forward
    pass is their consequence (the optimizer wrote NaN into the weights): that is said by the
    gradient's finding, not reported as a cause of its own.
    """
    forward = ev.forward
    if forward is None:
        why = "forward checks are off (watch(..., check_forward=False) or a compiled model)"
        out.skip("nonfinite_forward", why)
        out.skip("nonfinite_input", why)
        return set()
    first = forward.first_bad
    if first is None or first.origin is None:
        return set()
    origin = first.origin
    bad: list[ForwardRecord] = [r for r in forward.records if r.origin is not None]
    passes = sorted({p for r in bad for p in r.passes})
    if gradients_first is not None and (not first.passes or min(first.passes) > gradients_first):
        return set()
    count = forward.bad_count
    evidence: dict[str, Any] = {
        "first forward pass with NaN/Inf": first.index,
        "forward passes with NaN/Inf": f"{count} of {forward.forwards}",
        "born": origin.describe(),
    }
    if origin.where == "input":
        out.add(
            Finding(
                "nonfinite_input",
                "error",
                f"The input given to the model holds NaN/Inf from forward pass {first.index} on "
                f"({count} of {forward.forwards} forward passes): the data, not the model, is "
                f"where it starts.",
                "check the dataset and its transforms for NaN/Inf (torch.isfinite(x).all() in "
                "the data loader), and normalisations that divide by a zero std",
                module=origin.module,
                passes=tuple(passes),
                evidence=evidence,
            )
        )
        return set(passes)
    site = forward.located
    params = ordered(ev, [n for n in ev.shapes if module_of(n) == origin.module])
    if site is not None:
        evidence["op"] = site.describe()
        if site.inputs:
            evidence["its inputs"] = "; ".join(site.inputs)
        message = (
            f"A NaN/Inf is born in the forward pass {origin.describe()}: {site.op} returned "
            f"{site.value} from finite inputs"
            + (f" at {site.location}" if site.location else "")
            + f", from forward pass {first.index} on; everything computed after it, the loss "
            "and every gradient, is non-finite."
        )
        hint = _op_fix(site.op)
    else:
        tried = (
            "; the op could not be singled out (the next forward pass was clean)"
            if forward.locate_tried
            else "; run one more forward pass inside the watch to name the op"
        )
        message = (
            f"A NaN/Inf is born in the forward pass {origin.describe()}, from forward pass "
            f"{first.index} on; everything computed after it is non-finite{tried}."
        )
        hint = (
            "look for log/sqrt/division/exp in that code and clamp their inputs or add a small eps"
        )
    out.add(
        Finding(
            "nonfinite_forward",
            "error",
            message,
            hint,
            params=params,
            module=origin.module,
            passes=tuple(passes),
            evidence=evidence,
        )
    )
    return set(passes)


def _origins(graph: Any) -> tuple[Any, ...] | None:
    if graph is None:
        return None
    try:
        found: tuple[Any, ...] = graph.nonfinite_origins
    except GradscopeError:  # no gradients recorded through it (yet)
        return None
    return found


def _backward(ev: Evidence, out: Collector, explained: set[int]) -> None:
    if ev.scaler:  # NaN/Inf scaled gradients are GradScaler's business: see the scaler rule
        return
    bad = [r for r in ev.records if r.nonfinite and r.index not in explained]
    if not bad:
        return
    first = bad[0]
    # Hooks fire in backward order (output side first): the first parameters to go non-finite
    # sit nearest to where the NaN/Inf was born, upstream of it.
    nearest = [n for n in first.grads if not first.grads[n].recorded.finite]
    params = ordered(ev, nearest)
    origin = None
    from_loss = False
    found_by = ev.forward.backward if ev.forward is not None else None
    if found_by is not None:
        origin, from_loss = found_by.origin, found_by.from_loss
    if origin is None and not from_loss:
        found = _origins(ev.graph)
        if found:
            origin = found[0]
            from_loss = _from_loss(origin)
    evidence: dict[str, Any] = {
        "first pass with NaN/Inf gradients": first.index,
        "passes with NaN/Inf gradients": f"{len(bad)} of {len(ev.records)}",
    }
    forward_known = ev.forward is not None
    if forward_known:
        evidence["forward values"] = "finite (every module's output checked)"
    later = [r.index for r in ev.forward.records if r.origin is not None] if ev.forward else []
    if later:
        evidence["then"] = (
            f"from forward pass {later[0]} on the forward values are NaN/Inf too (the "
            "optimizer applied the NaN/Inf gradients to the weights)"
        )
    if from_loss:
        out.add(
            Finding(
                "nonfinite_loss",
                "error",
                "The gradient reaching the model's output is already NaN/Inf while every value "
                "the model computed was finite: the loss, computed outside the model, is "
                f"NaN/Inf or has a NaN/Inf gradient (from backward pass {first.index} on).",
                "look at the loss function: log of 0 or of a negative number, a division by a "
                "batch size or count of 0, a mean over an empty selection; print the loss "
                "before backward()",
                params=params,
                module=None,
                passes=tuple(r.index for r in bad),
                evidence=evidence,
            )
        )
        return
    if origin is not None:
        node = origin.node
        evidence["born at"] = str(origin)
        graph = found_by.graph if found_by is not None and found_by.graph is not None else ev.graph
        near = _around(graph, origin)
        if near:
            evidence["next to"] = near
        module = node.module
        message = (
            f"A NaN/Inf gradient is born in the backward pass at {node.op}"
            + (f" in module '{module}'" if module else "")
            + f" ({origin.reason}) from backward pass {first.index} on"
            + (", while the forward values were finite" if forward_known else "")
            + "; every parameter upstream of it gets NaN/Inf gradients."
        )
        hint = _node_fix(node.op)
    else:
        if found_by is not None and found_by.note:
            evidence["replay"] = found_by.note
        module = module_of(nearest[0]) if nearest else None
        message = (
            f"NaN/Inf gradients from backward pass {first.index} on"
            + (" while every forward value was finite: born in backward" if forward_known else "")
            + (
                f", first reaching {nearest[0]} (the NaN/Inf was born between it and the loss)"
                if nearest
                else ""
            )
            + "."
        )
        hint = (
            "an op with an infinite derivative at its input (sqrt or a norm at 0, x**p with "
            "p < 1 at 0, acos/asin at +-1): add a small eps; capture w.graph(loss) before "
            "backward (or let the watch run one more pass) to name the node"
        )
    out.add(
        Finding(
            "nonfinite_backward",
            "error",
            message,
            hint,
            params=params,
            module=module,
            passes=tuple(r.index for r in bad),
            evidence=evidence,
        )
    )


def _around(graph: Any, origin: Any) -> str:
    """The labels of the nodes one edge away from the origin (``Graph.around``)."""
    if graph is None:
        return ""
    try:
        near = graph.around(origin, radius=1)
    except GradscopeError:
        return ""
    labels = [n.label for n in near.nodes if n.id != origin.node.id]
    return ", ".join(labels[:6])


def _from_loss(origin: Any) -> bool:
    """The graph's origin is its root and the gradient handed to it was already NaN/Inf."""
    return origin.input is None and "passed to backward()" in origin.reason
