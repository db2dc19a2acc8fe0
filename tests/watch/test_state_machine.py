"""A state machine drives a watched model and an unwatched twin through random training.

Each rule does the same thing to both models: forward and backward, accumulation without
``zero_grad``, ``zero_grad()`` both ways, a ``retain_graph`` double backward,
``torch.autograd.grad``, a backward that raises midway, clipping, GradScaler scale / unscale /
step / update (with forced Inf steps), freezing and unfreezing, replacing a parameter, deepcopy
and pickle of the watched model, and ``close()`` followed by a new watch with freshly drawn
``copy=``, ``keep=``, ``max_bytes=``, ``scaler=`` and read path. The oracle is the twin (the
watch must never change training) and clones of ``.grad`` taken by hand at the moment each
value is defined. After every step, every record must give the value of that clone or say the
value is gone (``modified`` and an error), never a different one; its statistics, ``missing``,
``frozen``, ``failed`` and count must match; a closed watch leaves no hook behind.

CI runs a few hundred steps, derandomized (the ``ci`` Hypothesis profile). To explore longer::

    GRADSCOPE_MACHINE_EXAMPLES=2000 GRADSCOPE_MACHINE_STEPS=60 \\
        pytest tests/watch/test_state_machine.py
"""

from __future__ import annotations

import copy
import io
import math
import os
import pickle
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from read_paths import CopyLater
from torch import nn

import gradscope
import gradscope._watch.ending as ending_module
from gradscope import GradscopeError, GradscopeWarning
from gradscope._hooks import CopySafe
from gradscope._watch.reading import host_copy_for


class Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom in backward")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, boom: bool = False) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        out: torch.Tensor = self.b(Boom.apply(h) if boom else h)
        return out


def clone(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone()


@dataclass
class Pass:
    """What a record of one backward pass must say, from clones taken by hand."""

    accumulated: bool
    before: dict[str, torch.Tensor | None]
    after: dict[str, torch.Tensor | None]
    delta: dict[str, torch.Tensor]
    frozen: list[str]
    failed: bool = False
    scale: float | None = None
    missing: list[str] = field(default_factory=list)


def magnitude(*tensors: torch.Tensor | None) -> float:
    """The largest finite |element|: the scale of the rounding in a difference of these."""
    finite = [t[torch.isfinite(t)].abs() for t in tensors if t is not None]
    return max([1.0] + [float(f.max()) for f in finite if f.numel()])


def same(actual: torch.Tensor, expected: torch.Tensor, exact: bool, size: float = 1.0) -> None:
    """Bit-equal, or (a delta the oracle got by subtraction) equal up to that rounding."""
    tol = 0.0 if exact else 1e-6 * size
    torch.testing.assert_close(actual, expected, equal_nan=True, rtol=tol, atol=tol)


def live_hooks(net: nn.Module) -> list[object]:
    """gradscope's working hooks on ``net`` (the user's own are not counted)."""
    hooks: list[object] = []
    for module in net.modules():
        for table in (module._forward_pre_hooks, module._forward_hooks):
            hooks += [h for h in table.values() if isinstance(h, CopySafe)]
    for param in net.parameters():
        hooks += [h for h in (param._backward_hooks or {}).values() if isinstance(h, CopySafe)]
    return hooks


class WatchMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net, self.twin = Net(), Net()
        self.twin.load_state_dict(self.net.state_dict())
        self.scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2)]
        self.unscaled = False
        self._optimizers()
        self.watch: gradscope.Watch | None = None
        self.passes: list[Pass] = []
        self.scaled_once = False
        self.clamped: set[int] = set()
        self.handles: list[Any] = []
        self.keep, self.copy, self.uses_scaler = "last", False, False

    def _optimizers(self) -> None:
        self.opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (self.net, self.twin)]

    def teardown(self) -> None:
        for handle in self.handles:
            handle.remove()
        if self.watch is not None:
            self.watch.close()
        ending_module.host_copy_for = host_copy_for  # type: ignore[assignment]

    # ------------------------------------------------------------------------------ helpers
    def _names(self) -> list[str]:
        return [n for n, _ in self.net.named_parameters()]

    def _grads(self) -> dict[str, torch.Tensor | None]:
        return {n: clone(p.grad) for n, p in self.net.named_parameters()}

    def _frozen(self) -> list[str]:
        return [n for n, p in self.net.named_parameters() if not p.requires_grad]

    def _both(self, fn: Any) -> list[Any]:
        return [fn(model, i) for i, model in enumerate((self.net, self.twin))]

    def _scale(self) -> float | None:
        """The loss scale a record divides its statistics by (the watch's scaler, if any)."""
        return self.scalers[0].get_scale() if self.uses_scaler else None

    def _backward_both(self, x: torch.Tensor, *, scale: bool = False, inf: bool = False) -> None:
        frozen = self._frozen()
        if len(frozen) == len(self._names()):
            return  # nothing requires grad: no backward to run
        before = self._grads()

        def run(model: nn.Module, i: int) -> None:
            loss = model(x).pow(2).mean()
            if inf:
                loss = loss * torch.tensor(math.inf)
            (self.scalers[i].scale(loss) if scale else loss).backward()

        delta = self._probe(run)
        self._both(run)
        self.scaled_once |= scale
        arrived = [n for n in self._names() if n not in frozen]
        self._expect(before, self._grads(), frozen, arrived, delta)

    def _probe(self, run: Any) -> dict[str, torch.Tensor]:
        """What one pass adds, from a copy of the twin that starts with no gradient."""
        probe = copy.deepcopy(self.twin)  # a copy drops tensor hooks: register them again
        for index in self.clamped:
            param = list(probe.parameters())[index]
            if param.requires_grad:
                param.register_hook(_clamp)
        probe.zero_grad(set_to_none=True)
        try:
            run(probe, 1)
        except RuntimeError as error:
            assert "boom" in str(error)
        return {n: p.grad.clone() for n, p in probe.named_parameters() if p.grad is not None}

    def _expect(
        self,
        before: dict[str, torch.Tensor | None],
        after: dict[str, torch.Tensor | None],
        frozen: list[str],
        arrived: list[str],
        delta: dict[str, torch.Tensor],
        *,
        failed: bool = False,
    ) -> None:
        if not arrived:
            return  # no parameter hook fired: the watch saw no pass
        assert sorted(delta) == sorted(arrived)
        self.passes.append(
            Pass(
                True,
                {n: before[n] for n in arrived},
                {n: after[n] for n in arrived},
                delta,
                frozen,
                failed=failed,
                scale=self._scale(),
                missing=[n for n in self._names() if n not in frozen and n not in arrived],
            )
        )

    # ------------------------------------------------------------------------------ rules
    options: ClassVar[dict[str, st.SearchStrategy[Any]]] = {
        "copy": st.booleans(),
        "keep": st.sampled_from(["last", "all", "none"]),
        "bound": st.sampled_from([None, 2500]),
        "scaler": st.booleans(),
        "later": st.booleans(),
    }

    @initialize(**options)
    def first_watch(
        self, copy: bool, keep: str, bound: int | None, scaler: bool, later: bool
    ) -> None:
        self._start(copy, keep, bound, scaler, later)

    @rule(**options)
    def close_and_watch_again(
        self, copy: bool, keep: str, bound: int | None, scaler: bool, later: bool
    ) -> None:
        assert self.watch is not None
        self.watch.close()
        assert live_hooks(self.net) == []  # a closed watch leaves no hook behind
        self._start(copy, keep, bound, scaler, later)

    def _start(self, copy: bool, keep: str, bound: int | None, scaler: bool, later: bool) -> None:
        factory = (lambda device: CopyLater()) if later else host_copy_for
        ending_module.host_copy_for = factory  # type: ignore[assignment]
        self.keep, self.copy, self.uses_scaler = keep, copy, scaler
        self.watch = gradscope.watch(
            self.net,
            copy=copy,
            keep=keep,  # type: ignore[arg-type]
            max_bytes=bound,
            scaler=self.scalers[0] if scaler else None,
        )
        self.passes = []

    @rule(seed=st.integers(0, 9))
    def backward(self, seed: int) -> None:
        self._backward_both(torch.randn(5, 3, generator=torch.Generator().manual_seed(seed)))

    @rule(set_to_none=st.booleans())
    def zero_grad(self, set_to_none: bool) -> None:
        self._both(lambda m, i: m.zero_grad(set_to_none=set_to_none))

    @precondition(lambda self: len(self._frozen()) < 4)
    @rule()
    def retain_graph_twice(self) -> None:
        x = torch.randn(5, 3)
        delta = self._probe(lambda m, i: m(x).pow(2).sum().backward())
        losses = self._both(lambda m, i: m(x).pow(2).sum())
        for retain in (True, False):
            frozen, before = self._frozen(), self._grads()
            for loss in losses:
                loss.backward(retain_graph=retain)
            trainable = [n for n in self._names() if n not in frozen]
            self._expect(before, self._grads(), frozen, trainable, delta)

    @precondition(lambda self: len(self._frozen()) < 4)
    @rule()
    def autograd_grad(self) -> None:
        x = torch.randn(5, 3)
        frozen, before = self._frozen(), self._grads()
        names = [n for n in self._names() if n not in frozen]

        def grads(model: nn.Module, i: int) -> tuple[torch.Tensor, ...]:
            params = dict(model.named_parameters())
            out = torch.autograd.grad(model(x).pow(2).sum(), [params[n] for n in names])
            return tuple(out)

        mine, theirs = self._both(grads)
        for a, b in zip(mine, theirs, strict=True):
            same(a, b, exact=True)
        assert self._grads().keys() == before.keys()
        self.passes.append(
            Pass(
                False,
                {n: before[n] for n in names},
                {n: before[n] for n in names},
                {n: g.clone() for n, g in zip(names, mine, strict=True)},
                frozen,
                scale=self._scale(),
            )
        )

    @precondition(lambda self: not {"a.weight", "a.bias"} <= set(self._frozen()))
    @rule()
    def backward_that_raises(self) -> None:
        """Boom sits between the layers: b's gradients arrive, then backward raises (Boom is
        in the graph only while a layer below it trains)."""
        x = torch.randn(5, 3)
        frozen, before = self._frozen(), self._grads()

        def run(model: nn.Module, i: int) -> None:
            model(x, boom=True).sum().backward()

        delta = self._probe(run)
        for i, model in enumerate((self.net, self.twin)):
            with pytest.raises(RuntimeError, match="boom"):
                run(model, i)
        arrived = [n for n in ("b.weight", "b.bias") if n not in frozen]
        self._expect(before, self._grads(), frozen, arrived, delta, failed=True)
        if arrived:
            _, said = self._records()
            assert any("raised before it finished" in note for note in said)

    @rule(max_norm=st.sampled_from([1e-3, 1.0, 1e6]))
    def clip(self, max_norm: float) -> None:
        self._both(lambda m, i: nn.utils.clip_grad_norm_(m.parameters(), max_norm))

    @precondition(lambda self: not self.unscaled)
    @rule(seed=st.integers(0, 9), inf=st.booleans())
    def scaled_backward(self, seed: int, inf: bool) -> None:
        x = torch.randn(5, 3, generator=torch.Generator().manual_seed(seed))
        self._backward_both(x, scale=True, inf=inf)

    @precondition(lambda self: self.scaled_once and not self.unscaled)
    @rule()
    def unscale(self) -> None:
        if all(p.grad is None for p in self.net.parameters()):
            return
        self._both(lambda m, i: self.scalers[i].unscale_(self.opts[i]))
        self.unscaled = True

    @precondition(lambda self: self.scaled_once)
    @rule()
    def step_and_update(self) -> None:
        if all(p.grad is None for p in self.net.parameters()):
            return
        self._both(lambda m, i: self.scalers[i].step(self.opts[i]))
        self._both(lambda m, i: self.scalers[i].update())
        self.unscaled = False
        for a, b in zip(self.net.parameters(), self.twin.parameters(), strict=True):
            same(a, b, exact=True)

    @rule(index=st.integers(0, 3), trainable=st.booleans())
    def freeze(self, index: int, trainable: bool) -> None:
        self._both(lambda m, i: list(m.parameters())[index].requires_grad_(trainable))

    @rule(index=st.integers(0, 3))
    def clamp_hook(self, index: int) -> None:
        """A hook registered after the watch that changes the gradient: delta must follow it."""
        if index in self.clamped:
            return
        params = [list(model.parameters())[index] for model in (self.net, self.twin)]
        if not params[0].requires_grad:
            return  # torch refuses hooks on a frozen tensor
        self.clamped.add(index)
        self.handles += [param.register_hook(_clamp) for param in params]

    @rule(which=st.sampled_from(["a", "b"]))
    def replace_weight(self, which: str) -> None:
        def replace(model: nn.Module, i: int) -> None:
            layer = getattr(model, which)
            layer.weight = nn.Parameter(layer.weight.detach().clone())

        self._both(replace)
        self._optimizers()
        self.clamped.discard(0 if which == "a" else 2)  # the new parameter has no hook

    @rule()
    def deepcopy_and_pickle(self) -> None:
        assert self.watch is not None
        count = len(self._records()[0])
        best = copy.deepcopy(self.net)
        torch.save(self.net, io.BytesIO())
        again = pickle.loads(pickle.dumps(best))
        for twin in (best, again):
            assert live_hooks(twin) == []
            if any(p.requires_grad for p in twin.parameters()):
                twin(torch.randn(2, 3)).sum().backward()
        assert len(self._records()[0]) == count

    # ------------------------------------------------------------------------------ checks
    @invariant()
    def training_is_unchanged(self) -> None:
        for (name, a), b in zip(self.net.named_parameters(), self.twin.parameters(), strict=True):
            assert (a.grad is None) == (b.grad is None), name
            if a.grad is not None:
                same(a.grad, b.grad, exact=True)  # type: ignore[arg-type]

    def _records(self) -> tuple[list[gradscope.BackwardRecord], list[str]]:
        """The watch's records, and what it warned about on the way (failed passes, bounds)."""
        assert self.watch is not None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GradscopeWarning)
            records = self.watch.records
        return records, [str(w.message) for w in caught]

    @invariant()
    def records_match_the_clones(self) -> None:
        """Count, lists and statistics; tensors are read by the read_tensors rule only, since
        reading hands a tensor to the user, which keeps it from being recycled."""
        self._compare(read_tensors=False)

    @rule()
    def read_tensors(self) -> None:
        self._compare(read_tensors=True)

    def _compare(self, read_tensors: bool) -> None:
        if self.watch is None:
            return
        records, _ = self._records()
        assert self.watch.errors == []  # nothing failed inside gradscope's hooks
        assert len(records) == len(self.passes)
        for record, expected in zip(records, self.passes, strict=True):
            assert record.failed == expected.failed
            assert sorted(record.frozen) == sorted(expected.frozen)
            assert sorted(record.missing) == sorted(expected.missing)
            assert set(record) == set(expected.delta)
            for name, grad in record.grads.items():
                self._check_stats(grad, expected, name)
                if read_tensors:
                    self._check_tensors(grad, expected, name)

    def _check_stats(self, grad: gradscope.GradRecord, e: Pass, name: str) -> None:
        assert grad.accumulated == e.accumulated
        assert grad.loss_scale == e.scale
        source = e.after[name] if e.accumulated else e.delta[name]
        assert source is not None
        raw = source.double()
        divide = e.scale or 1.0
        stats = grad.stats
        nan, inf = int(torch.isnan(raw).sum()), int(torch.isinf(raw).sum())
        assert (stats.nan, stats.inf) == (nan, inf), name
        norm = float(raw.norm()) / divide
        assert (math.isnan(norm) and math.isnan(stats.norm)) or math.isclose(
            stats.norm, norm, rel_tol=1e-5
        ), (name, stats.norm, norm)
        finite = raw[torch.isfinite(raw)]
        if stats.mean is not None:
            spread = float(finite.abs().max()) / divide if finite.numel() else 0.0
            assert math.isclose(stats.mean, float(finite.mean()) / divide, abs_tol=1e-5 * spread)

    def _check_tensors(self, grad: gradscope.GradRecord, e: Pass, name: str) -> None:
        if self.keep == "none":
            assert grad.after is None and grad.before is None and grad.delta is None
            return
        shared = not self.copy and e.accumulated  # after (and delta = after) may be .grad itself
        self._either(grad, "before", e.before[name], exact=True, may_be_gone=False)
        self._either(grad, "after", e.after[name], exact=True, may_be_gone=shared)
        size = magnitude(e.before[name], e.after[name])
        self._either(grad, "delta", e.delta[name], exact=False, may_be_gone=shared, size=size)

    def _either(
        self,
        grad: gradscope.GradRecord,
        what: str,
        wanted: torch.Tensor | None,
        *,
        exact: bool,
        may_be_gone: bool,
        size: float = 1.0,
    ) -> None:
        """The record gives the hand-taken clone, or None once let go, or says it is gone."""
        try:
            value = getattr(grad, what)
        except GradscopeError as error:
            assert may_be_gone and grad.modified and "changed in place" in str(error), what
            return
        if value is None:
            assert wanted is None or self.keep != "all" or _dropped(self.watch, grad), what
            return
        assert wanted is not None, what
        same(value, wanted, exact=exact, size=size)


def _clamp(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(-0.1, 0.1)


def _dropped(watch: gradscope.Watch | None, grad: gradscope.GradRecord) -> bool:
    assert watch is not None
    return any(r.dropped == "max_bytes" and grad in r.grads.values() for r in watch.records)


WatchMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("GRADSCOPE_MACHINE_EXAMPLES", "30")),
    stateful_step_count=int(os.environ.get("GRADSCOPE_MACHINE_STEPS", "12")),
    deadline=None,
)
TestWatchMachine = WatchMachine.TestCase
