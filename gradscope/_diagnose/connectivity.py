"""Parameters that cannot learn: no gradient, not in the optimizer, frozen while held."""

from __future__ import annotations

from collections import Counter
from typing import Any

from .._watch.evidence import Evidence, module_of
from .._watch.tracer import CutSite
from .common import Collector, common_module, ordered
from .finding import Finding, names_text

__all__ = ["check", "held"]

_CUT_FIXES = {
    "detach": "remove that .detach() (keep detach() only where gradients must stop, such as a "
    "target or a running statistic)",
    "data": "use the tensor itself instead of .data (which hides the op from autograd)",
    "no_grad": "move that computation out of the torch.no_grad() / inference_mode() block",
    "integer": "integer results (argmax, .long(), comparisons, round) carry no gradient: keep "
    "the float tensor or use a differentiable relaxation (softmax instead of argmax)",
    "number": ".item()/.tolist()/.numpy() leave autograd: keep working on the tensor",
    "other": "that op returns a tensor that does not require grad: make sure it is "
    "differentiable for its inputs",
}


def check(ev: Evidence, out: Collector) -> None:
    _no_gradient(ev, out)
    _optimizer(ev, out)


def held(ev: Evidence) -> set[str] | None:
    """Names the watch's optimizers hold; None without optimizers (or once they are gone)."""
    steps = ev.steps
    if steps is None:
        return None
    names = {n for group in steps.held for n in group}
    if not names and not steps.optimizers:
        return None
    return names


def _explain(ev: Evidence, name: str, passes: set[int]) -> tuple[Any, str, str, str | None]:
    """(group key, why it got no gradient, fix, module where the path was cut)."""
    forward = ev.forward
    module = module_of(name)
    if forward is None:
        return (
            "unknown",
            "it is not connected to the loss (forward checks are off, so gradscope cannot say "
            "where the path was cut)",
            "look for .detach(), .data, torch.no_grad() or an unused module between it and the "
            "loss; gradscope.graph(loss) shows what the loss depends on",
            None,
        )
    seen = [r for r in forward.records if r.grad_enabled and passes.intersection(r.passes)]
    if not seen:
        seen = [r for r in forward.records if passes.intersection(r.passes)]
    if module and seen and all(module not in r.called for r in seen):
        return (
            "never ran",
            "never ran in the forward pass (created in __init__ but not called in forward(), "
            "or skipped by a branch)",
            "call it in forward(), or, if it is not needed, delete it (or leave it out of the "
            "optimizer and exclude it from the watch)",
            module,
        )
    if module and seen and all(module in r.no_grad for r in seen):
        return (
            "no_grad",
            "ran with autograd off (torch.no_grad() or inference_mode()), so autograd does not "
            "track what was computed there",
            "move that call out of the torch.no_grad() block (no_grad is for evaluation, not "
            "for parts of the model that should learn)",
            module,
        )
    trace = forward.traces.get(name)
    if trace is None:
        return (
            "pending",
            "it ran but no gradient reached it; where the path was cut shows after one more "
            "forward pass inside the watch",
            "look for .detach(), .data, torch.no_grad() or an unused result after it",
            None,
        )
    if not trace.used:
        return (
            ("unused", module),
            "its module ran but never used this parameter",
            "use the parameter in forward(), or remove it",
            module,
        )
    if trace.reached_output:
        return (
            "after output",
            "values computed from them reach the model's output, but the loss does not use "
            "that output through autograd: it was detached (or read through .item()/.data) "
            "after the model returned, or it is left out of the loss",
            "compute the loss from the model's output itself, without .detach()/.data/.item()",
            None,
        )
    if trace.cut is not None:
        site: CutSite = trace.cut
        return (
            ("cut", site),
            f"the path to the loss is cut at {site.describe()}",
            _CUT_FIXES[site.reason],
            site.module,
        )
    return (
        ("branch", module),
        f"{repr(module) if module else 'the model'} ran, but nothing computed from this parameter "
        "reaches the model's output (an unused branch)",
        "use that branch's result in the output (for example add it to the loss), or remove it",
        module,
    )


def _no_gradient(ev: Evidence, out: Collector) -> None:
    records = ev.records
    if not records:
        return
    counts: Counter[str] = Counter()
    where: dict[str, set[int]] = {}
    for record in records:
        for name in record.missing:
            counts[name] += 1
            where.setdefault(name, set()).add(record.index)
    groups: dict[Any, list[str]] = {}
    details: dict[Any, tuple[str, str, str | None]] = {}
    for name, count in counts.items():
        if count < len(records):
            continue
        key, why, fix, cut_module = _explain(ev, name, where[name])
        groups.setdefault(key, []).append(name)
        details[key] = (why, fix, cut_module)
    for key, names in groups.items():
        why, fix, cut_module = details[key]
        params = ordered(ev, names)
        if key in ("never ran", "no_grad"):
            modules = list(dict.fromkeys(module_of(p) for p in params))
            listed = ", ".join(f"'{m}'" for m in modules[:6])
            many = len(modules) > 1
            why = f"{'their modules' if many else 'its module'} {listed} {why}"
            cut_module = modules[0] if not many else None
        owner = common_module(params)
        module = owner if owner else (cut_module if cut_module is not None else owner)
        evidence: dict[str, Any] = {"passes without gradient": f"{len(records)} of {len(records)}"}
        if isinstance(key, tuple) and key[0] == "cut":
            site: CutSite = key[1]
            evidence["cut at"] = f"{site.op} in '{site.module}'" + (
                f" ({site.location})" if site.location else ""
            )
        plural = len(params) > 1
        out.add(
            Finding(
                "no_gradient",
                "error",
                f"{names_text(params)} {'get' if plural else 'gets'} no gradient in any of the "
                f"{len(records)} recorded passes: {why}.",
                fix,
                params=params,
                module=module,
                passes=tuple(r.index for r in records),
                evidence=evidence,
            )
        )
    partial = [n for n, c in counts.items() if c < len(records)]
    if partial:
        params = ordered(ev, partial)
        out.add(
            Finding(
                "no_gradient",
                "info",
                f"{names_text(params)} got a gradient in only some passes (conditional layers "
                "or branches are fine; a layer that should always run is not).",
                "nothing to do if the branch is conditional on purpose",
                params=params,
                module=common_module(params),
                passes=tuple(sorted(set().union(*(where[n] for n in partial)))),
                evidence={
                    n: f"no gradient in {counts[n]} of {len(records)} passes" for n in params[:6]
                },
            )
        )


def _optimizer(ev: Evidence, out: Collector) -> None:
    holds = held(ev)
    if holds is None:
        why = "needs watch(net, optimizer=opt)"
        out.skip("not_in_optimizer", why)
        out.skip("frozen", why)
        return
    with_grad = {n for r in ev.records for n in r.grads}
    left_out = [n for n in with_grad if n not in holds]
    if left_out:
        params = ordered(ev, left_out)
        out.add(
            Finding(
                "not_in_optimizer",
                "error",
                f"{names_text(params)} {'get' if len(params) > 1 else 'gets'} gradients but no "
                "optimizer the watch was given holds "
                f"{'them' if len(params) > 1 else 'it'}: "
                f"{'they' if len(params) > 1 else 'it'} never change.",
                "build the optimizer from net.parameters() (or add a param group for these); "
                "an optimizer created before the layer was added or replaced misses it",
                params=params,
                module=common_module(params),
                passes=tuple(r.index for r in ev.records if any(n in r.grads for n in params)),
                evidence={
                    "optimizer holds": f"{len(holds)} of {len(ev.shapes)} watched parameters"
                },
            )
        )
    frozen = [n for n in holds if not ev.trainable.get(n, True)]
    if frozen:
        params = ordered(ev, frozen)
        out.add(
            Finding(
                "frozen",
                "warning",
                f"{names_text(params)} {'have' if len(params) > 1 else 'has'} requires_grad=False, "
                "yet the optimizer holds "
                f"{'them' if len(params) > 1 else 'it'}: frozen by mistake, or frozen on "
                "purpose with the optimizer built from every parameter?",
                "if they should train, set requires_grad=True; if frozen on purpose, build the "
                "optimizer from [p for p in net.parameters() if p.requires_grad]",
                params=params,
                module=common_module(params),
                evidence={"frozen and held": len(params)},
            )
        )
