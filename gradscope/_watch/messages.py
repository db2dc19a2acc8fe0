"""What a watch says when asked for something it does not have.

Why no backward pass was recorded (closed, ``every=`` skipped the passes seen, every parameter
frozen, or the usual suspects when nothing explains it), and which parameter a name that is
not one probably meant (any alias a record or the model knows, the closest ones suggested).
"""

from __future__ import annotations

from .._errors import GradscopeError, UnknownParameterError
from .._naming import describe, suggest
from .recorder import Recorder

__all__ = ["canonical_name", "why_no_record"]


def canonical_name(recorder: Recorder, name: str) -> str:
    """The parameter's canonical name, from any of its names in the records or the model."""
    if not isinstance(name, str):
        raise GradscopeError(f"parameter names are strings, not {describe(name)}")
    known: dict[str, str] = {}
    for record in recorder.records:
        known.update(record.aliases)
    known.update(recorder.names.canonical)
    if name in known:
        return known[name]
    raise UnknownParameterError(f"the watch has no parameter named {name!r}{suggest(name, known)}")


def why_no_record(recorder: Recorder) -> str:
    """The likely reasons no backward pass was recorded, most specific first."""
    reasons = []
    if recorder.closed:
        reasons.append("the watch is closed")
    seen = recorder.passes_seen
    if seen and recorder.every > 1:
        reasons.append(f"every={recorder.every} skipped the {seen} passes seen so far")
    if not any(p.requires_grad for p in recorder.names.params.values()):
        reasons.append("every watched parameter has requires_grad=False")
    if not reasons:
        reasons = [
            "backward() has not run since watch() started",
            "the forward pass ran under torch.no_grad() or inference_mode()",
            "the loss does not depend on this module (is the watch on the right model?)",
        ]
    return "no backward pass was recorded yet; likely because " + "; or ".join(reasons)
