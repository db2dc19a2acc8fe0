"""graph(..., grads=True): gradient norms per node and edge, and where a NaN/Inf was born."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from graph_models import TiedLM
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradscope


def _origin(loss: torch.Tensor, **kw: object) -> gradscope.NonfiniteGradient | None:
    g = gradscope.graph(loss, grads=True, **kw)  # type: ignore[arg-type]
    loss.backward()
    return g.first_nonfinite


def test_parameter_norms_match_torch_grads() -> None:
    net = gradscope.LeNet()
    loss = nn.MSELoss()(net(torch.randn(2, 1, 32, 32)), torch.randn(2, 10))
    g = gradscope.graph(loss, params=net, grads=True)
    loss.backward()
    for node in g.nodes:
        if node.kind == "parameter":
            grad = dict(net.named_parameters())[node.param].grad  # type: ignore[index]
            assert node.grad_norm == pytest.approx(grad.norm().item(), rel=1e-5)
    assert g.roots[0].grad_norm == 1.0
    assert g.first_nonfinite is None


def test_edge_norms_match_retained_intermediate_grads() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(3, 5, requires_grad=True)
    h = x @ w
    h.retain_grad()
    a = torch.tanh(h)
    a.retain_grad()
    loss = (a * a).sum()
    g = gradscope.graph(loss, params={"x": x, "w": w}, grads=True)
    loss.backward()
    tanh = next(n for n in g.nodes if n.op == "TanhBackward0")
    mm = next(n for n in g.nodes if n.op == "MmBackward0")
    assert tanh.grad_norm == pytest.approx(a.grad.norm().item(), rel=1e-6)  # type: ignore[union-attr]
    assert mm.grad_norm == pytest.approx(h.grad.norm().item(), rel=1e-6)  # type: ignore[union-attr]
    (edge,) = [e for e in g.edges if e.src == tanh.id]
    assert edge.grad_norm == pytest.approx(h.grad.norm().item(), rel=1e-6)  # type: ignore[union-attr]


def test_tied_weight_norm_is_the_accumulated_gradient() -> None:
    net = TiedLM()
    loss = net(torch.randint(0, 50, (2, 5))).pow(2).mean()
    g = gradscope.graph(loss, params=net, grads=True)
    loss.backward()
    (tied,) = [n for n in g.nodes if n.param == "embed.weight"]
    assert tied.grad_norm == pytest.approx(net.embed.weight.grad.norm().item(), rel=1e-5)  # type: ignore[union-attr]


def test_sqrt_of_a_negative() -> None:
    x = torch.tensor([-1.0, 4.0], requires_grad=True)
    origin = _origin(x.sqrt().sum())
    assert origin is not None
    assert (origin.node.op, origin.input, origin.value) == ("SqrtBackward0", 0, "nan")


def test_log_of_zero() -> None:
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    origin = _origin((x.log() * 1.0).sum())
    assert origin is not None
    assert (origin.node.op, origin.value) == ("LogBackward0", "inf")


def test_x_over_x_at_zero() -> None:
    x = torch.tensor([0.0, 2.0], requires_grad=True)
    origin = _origin((x / x).sum())
    assert origin is not None
    # d(x/y)/dx = 1/y is inf, d(x/y)/dy = -x/y**2 is 0/0 = nan: both inputs are named
    assert (origin.node.op, origin.input, origin.value) == ("DivBackward0", 0, "inf")
    assert "inf for input 0 and nan for input 1" in origin.reason


def test_inf_turned_nan_downstream_names_the_inf() -> None:
    # sqrt at 0 gives an infinite gradient; multiplying by 0 afterwards (in backward) makes NaN.
    # detect_anomaly blames MulBackward0; the Inf was born in SqrtBackward0.
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    z = w * 0.0
    loss = z.sqrt().sum()
    origin = _origin(loss)
    assert origin is not None
    assert (origin.node.op, origin.value) == ("SqrtBackward0", "inf")
    assert math.isnan(w.grad[0].item())  # type: ignore[index]


def test_clean_graph_has_no_origin() -> None:
    net = gradscope.LeNet()
    assert _origin(net(torch.randn(1, 1, 32, 32)).sum(), params=net) is None


def test_origin_names_the_module_under_tagging() -> None:
    from gradscope._graph.module_tags import install_module_tagging

    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(self.fc(x) * 0.0)

    net = nn.Sequential(nn.Linear(3, 3), Bad())
    handles = install_module_tagging(net)
    origin = _origin(net(torch.randn(2, 3)).sum(), params=net)
    for h in handles:
        h.remove()
    assert origin is not None
    assert origin.node.op == "LogBackward0" and origin.node.module == "1"
    assert "module '1'" in str(origin)


def test_first_nonfinite_needs_grads_and_a_backward() -> None:
    x = torch.randn(2, requires_grad=True)
    loss = x.exp().sum()
    with pytest.raises(gradscope.GradscopeError, match="grads=True"):
        _ = gradscope.graph(loss).first_nonfinite
    g = gradscope.graph(loss, grads=True)
    with pytest.raises(gradscope.GradscopeError, match="no backward pass was recorded"):
        _ = g.first_nonfinite
    assert all(n.grad_norm is None for n in g.nodes)


def test_second_backward_replaces_the_record() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x.exp()
    loss = y.sum()
    g = gradscope.graph(loss, grads=True)
    loss.backward(retain_graph=True)
    first = g.nodes[0].grad_norm
    loss.backward(torch.tensor(3.0))
    assert first == 1.0 and g.nodes[0].grad_norm == 3.0


def test_hooks_hold_the_graph_weakly_and_never_break_backward() -> None:
    x = torch.randn(3, requires_grad=True)
    loss = x.exp().sum()
    g = gradscope.graph(loss, grads=True)
    ref = weakref.ref(g._walked.recorder)  # type: ignore[union-attr, arg-type]
    del g
    gc.collect()
    assert ref() is None
    loss.backward()  # the hooks find nothing to write to and do nothing
    assert torch.allclose(x.grad, x.exp())  # type: ignore[arg-type]


def test_grads_do_not_change_what_backward_computes() -> None:
    torch.manual_seed(1)
    a, b = gradscope.LeNet(), gradscope.LeNet()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 32, 32)
    a(x).sum().backward()
    out = b(x).sum()
    gradscope.graph(out, params=b, grads=True)
    out.backward()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa.grad, pb.grad)  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(
        st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=6
    ),
    op=st.sampled_from(["sqrt", "log", "reciprocal", "tanh"]),
)
def test_origin_agrees_with_the_gradient_itself(values: list[float], op: str) -> None:
    x = torch.tensor(values, requires_grad=True)
    y = getattr(torch, op)(x)
    h = y * 2.0
    loss = h.sum()
    g = gradscope.graph(loss, grads=True)
    loss.backward()
    origin = g.first_nonfinite
    bad_x = not bool(torch.isfinite(x.grad).all())  # type: ignore[arg-type]
    if not bad_x:
        assert origin is None
    else:
        # sum and mul-by-2 hand on finite gradients, so the op itself produced the bad one
        assert origin is not None and origin.node.op.lower().startswith(op)


def test_a_huge_but_finite_gradient_is_not_called_inf() -> None:
    # 1 / 1.5e-37 is finite in float32, but its square overflows: the L2 norm reads Inf.
    x = torch.tensor([1.0, 1.5e-37], requires_grad=True)
    loss = x.log().sum()
    g = gradscope.graph(loss, grads=True)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert g.first_nonfinite is None
    leaf = next(n for n in g.nodes if n.kind != "op")  # x: the gradient that left LogBackward0
    assert leaf.grad_norm is not None and 1e36 < leaf.grad_norm < float("inf")


def test_a_failing_hook_never_breaks_backward_even_under_warnings_as_errors(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import warnings

    import gradscope._graph.grad_flow as grad_flow

    failures = iter(range(1, 100))

    def broken(grads: object, rec: object) -> None:
        raise RuntimeError(f"norm failed ({next(failures)})")

    monkeypatch.setattr(grad_flow, "_norms", broken)
    x = torch.ones(3, requires_grad=True)
    loss = (x * 2).exp().sum()  # Sum, Exp and Mul run hooks (a one-consumer leaf has none)
    g = gradscope.graph(loss, grads=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss.backward()  # the hook's error is kept, not raised or warned here
    assert torch.allclose(x.grad, 2 * torch.exp(torch.full((3,), 2.0)))  # type: ignore[arg-type]
    with pytest.warns(gradscope.GradscopeWarning) as caught:
        g.first_nonfinite  # noqa: B018
    (warning,) = caught
    text = str(warning.message)
    assert "could not record 3 gradient(s)" in text
    assert text.endswith("First: RuntimeError('norm failed (1)')")
    assert warning.filename == __file__  # it points at the line that read first_nonfinite
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g.first_nonfinite  # noqa: B018  # said once, not at every read
    # through another door (the norms), the warning still points at the caller's line
    loss = (x * 2).exp().sum()
    g = gradscope.graph(loss, grads=True)
    loss.backward()
    with pytest.warns(gradscope.GradscopeWarning) as caught:
        g.roots[0].grad_norm  # noqa: B018
    assert [w.filename for w in caught] == [__file__]


def _sources_by_hand(loss: torch.Tensor) -> list[tuple[str, int]]:
    """(op, sequence number) of every node whose incoming gradient was finite and whose
    outgoing one was not, in the order backward ran them: torch's own node hooks, one per
    node of a hand walk, judge each node as it runs (the oracle for 'first')."""
    ran: list[tuple[str, int, bool, bool]] = []
    seen, stack, keep = set(), [loss.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        keep.append(fn)

        def hook(grad_inputs: tuple, grad_outputs: tuple, fn=fn) -> None:  # type: ignore[type-arg, no-untyped-def]
            ok_in = all(bool(torch.isfinite(g).all()) for g in grad_outputs if g is not None)
            ok_out = all(bool(torch.isfinite(g).all()) for g in grad_inputs if g is not None)
            ran.append((fn.name(), fn._sequence_nr(), ok_in, ok_out))

        fn.register_hook(hook)
        stack.extend(c for c, _ in fn.next_functions)
    loss.backward()
    keep.clear()
    return [(name, seq) for name, seq, ok_in, ok_out in ran if ok_in and not ok_out]


def _twin_losses(build: object) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    first = build()  # type: ignore[operator]
    torch.manual_seed(0)
    return first, build()  # type: ignore[operator]


def _two_sources() -> torch.Tensor:
    a = torch.tensor([-1.0, 4.0], requires_grad=True).sqrt()  # NaN gradient, created first
    b = torch.tensor([0.0, 1.0], requires_grad=True).log()  # Inf gradient, created second
    # b's branch comes first in next_functions (walk order) and runs first in backward (higher
    # sequence number); a's branch is walked first below, by writing it second in the sum
    return (b * 3.0).sum() + (a * 2.0).sum()


def _three_sources() -> torch.Tensor:
    x = torch.tensor([0.0, 2.0], requires_grad=True)
    a = torch.tensor([-4.0, 4.0], requires_grad=True).sqrt() * 1.5  # NaN
    b = x.reciprocal().exp()  # Inf born in ReciprocalBackward0 (x = 0)
    c = torch.tensor([0.0, 1.0], requires_grad=True).log() * 0.5  # Inf
    downstream = (b * 0.0).sum()  # Inf * 0 in forward, but backward passes 0 * ... : finite
    return a.sum() + downstream + c.sum() * 2 + b.sum()


@pytest.mark.parametrize("build", [_two_sources, _three_sources], ids=["two", "three"])
def test_first_is_the_first_source_backward_ran(build: object) -> None:
    mine, theirs = _twin_losses(build)
    shift = theirs.grad_fn._sequence_nr() - mine.grad_fn._sequence_nr()  # type: ignore[union-attr]
    expected = [(name, seq - shift) for name, seq in _sources_by_hand(theirs)]
    assert len(expected) == (2 if build is _two_sources else 3)
    g = gradscope.graph(mine, grads=True)
    mine.backward()
    found = [(o.node.op, o.node.seq) for o in g.nonfinite_origins]
    assert found == [(name.removeprefix("torch::autograd::"), seq) for name, seq in expected]
    first = g.first_nonfinite
    assert first is not None and (first.node.op, first.node.seq) == found[0]
    # independent of the walk's numbering: the first source is not the lowest node id
    ids = [o.node.id for o in g.nonfinite_origins]
    assert ids != sorted(ids) or build is _three_sources


def test_two_sources_first_is_the_later_created_branch() -> None:
    loss = _two_sources()
    g = gradscope.graph(loss, grads=True)
    loss.backward()
    assert [o.node.op for o in g.nonfinite_origins] == ["LogBackward0", "SqrtBackward0"]
    assert g.first_nonfinite is not None and g.first_nonfinite.value == "inf"


def _incoming_norms_by_hand(loss: torch.Tensor) -> dict[int, float]:
    """Sequence number -> norm of the gradient each op node received (the sum over its
    consumers), from torch's own pre-hooks on every node of a hand walk, in float64."""
    got: dict[int, float] = {}
    seen, stack, keep = set(), [loss.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        keep.append(fn)
        if "AccumulateGrad" not in fn.name():

            def pre(grad_outputs: tuple, fn=fn) -> None:  # type: ignore[type-arg, no-untyped-def]
                parts = [g.double().norm() ** 2 for g in grad_outputs if g is not None]
                got[fn._sequence_nr()] = float(sum(parts)) ** 0.5

            fn.register_prehook(pre)
        stack.extend(c for c, _ in fn.next_functions)
    loss.backward()
    keep.clear()
    return got


class _Slicer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x).clone()
        return (h[:, 1:4] * 2).sum(1) + h[0].sum() + h.t()[2, :].mean()


class _Splitter(nn.Module):
    """Ops with several outputs (chunk, unbind): their node's norm covers all the gradients
    that come back to it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.lin(x).chunk(3, dim=1)
        rows = (a * b).unbind(0)
        return (a.exp() + c * 3).sum(1) + rows[0].sum() - rows[-1].mean() * 2


@pytest.mark.parametrize("which", ["transformer", "slicer", "splitter"])
def test_every_node_norm_matches_torchs_own_pre_hooks(which: str) -> None:
    from graph_models import transformer

    def build() -> torch.Tensor:
        torch.manual_seed(3)
        net = {"transformer": lambda: transformer(2), "slicer": _Slicer, "splitter": _Splitter}
        x = torch.randn(2, 5, 32) if which == "transformer" else torch.randn(3, 6)
        return net[which]()(x).pow(2).mean()

    mine, theirs = build(), build()
    shift = theirs.grad_fn._sequence_nr() - mine.grad_fn._sequence_nr()  # type: ignore[union-attr]
    expected = _incoming_norms_by_hand(theirs)
    g = gradscope.graph(mine, grads=True)
    mine.backward()
    ops = [n for n in g.nodes if n.kind == "op"]
    multi = {"SplitBackward0", "UnbindBackward0"}  # several outputs, each used
    assert ({"CloneBackward0"} if which != "splitter" else multi) <= {n.op for n in ops}
    assert len(ops) == len(expected)
    for n in ops:
        assert n.seq is not None
        assert n.grad_norm == pytest.approx(expected[n.seq + shift], rel=1e-5, abs=1e-12), n.op


@pytest.mark.parametrize("path", ["host", "device"])
def test_the_device_read_path_gives_the_same_norms_and_origin(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path CUDA takes (float64 norms kept on the device, read once when asked) runs here
    on CPU tensors, so CI checks it without a GPU."""
    import gradscope._graph.grad_flow as grad_flow

    if path == "device":
        monkeypatch.setattr(grad_flow, "HOST", ())
    net = gradscope.LeNet()
    x = torch.randn(2, 1, 32, 32)
    loss = nn.functional.mse_loss(net(x), torch.randn(2, 10))
    g = gradscope.graph(loss, params=net, grads=True)
    loss.backward()
    assert g._walked.recorder.pending == (path == "device")  # type: ignore[union-attr]
    assert g.first_nonfinite is None
    for node in g.nodes:
        if node.kind == "parameter":
            grad = dict(net.named_parameters())[node.param].grad  # type: ignore[index]
            assert node.grad_norm == pytest.approx(grad.double().norm().item(), rel=1e-6)  # type: ignore[union-attr]
    # two independent sources, the huge-but-finite case: same answers on both paths
    mine = _two_sources()
    g = gradscope.graph(mine, grads=True)
    mine.backward()
    assert [o.node.op for o in g.nonfinite_origins] == ["LogBackward0", "SqrtBackward0"]
    y = torch.tensor([1.0, 1.5e-37], requires_grad=True)
    loss = y.log().sum()
    g = gradscope.graph(loss, grads=True)
    loss.backward()
    assert g.first_nonfinite is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_norms_are_exact_to_the_dtype_they_are_taken_in(dtype: torch.dtype) -> None:
    """Oracle: numpy's float64 norm of the very gradient values. (b)float16 gradients are normed
    in float32 (their own precision would be off by ~1e-3), float64 ones in float64."""
    import numpy as np

    torch.manual_seed(0)
    w = torch.randn(300, dtype=dtype, requires_grad=True)
    coeff = torch.randn(300, dtype=dtype) * 3
    loss = (w * coeff).sum()
    g = gradscope.graph(loss, params={"w": w}, grads=True)
    loss.backward()
    assert w.grad is not None
    expected = float(np.linalg.norm(w.grad.double().numpy()))
    (leaf,) = [n for n in g.nodes if n.kind == "parameter"]
    rel = {torch.float64: 1e-14}.get(dtype, 1e-6)
    assert leaf.grad_norm == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize("path", ["host", "device"])
def test_a_clean_pass_resolves_nothing_to_answer_first_nonfinite(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented cost: after a clean pass first_nonfinite is a flag check; the flow is
    only resolved when a non-finite norm was seen (or when norms are asked for)."""
    import gradscope._graph.grad_flow as grad_flow

    if path == "device":
        monkeypatch.setattr(grad_flow, "HOST", ())
    net = gradscope.LeNet()
    loss = net(torch.randn(2, 1, 32, 32)).pow(2).sum()
    g = gradscope.graph(loss, params=net, grads=True)
    loss.backward()
    resolved: list[int] = []
    real = grad_flow._resolve

    def counting(*args: object) -> object:
        resolved.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(grad_flow, "_resolve", counting)
    assert g.first_nonfinite is None and g.nonfinite_origins == ()
    assert resolved == []
    assert g.roots[0].grad_norm == 1.0  # asking for norms resolves, once
    assert g.first_nonfinite is None
    assert resolved == [1]
    # a pass with a NaN is resolved to answer
    x = torch.tensor([-1.0, 4.0], requires_grad=True)
    loss = x.sqrt().sum()
    g = gradscope.graph(loss, grads=True)
    loss.backward()
    assert g.first_nonfinite is not None and g.first_nonfinite.node.op == "SqrtBackward0"
    assert resolved == [1, 1]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_gradient_passed_to_backward_is_its_own_origin(bad: float) -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = (x * 3.0).sum()
    g = gradscope.graph(loss, grads=True)
    loss.backward(torch.tensor(bad))
    kind = "nan" if math.isnan(bad) else "inf"
    (origin,) = g.nonfinite_origins
    assert origin.node.id == g.roots[0].id and origin.node.op == "SumBackward0"
    assert (origin.input, origin.value) == (None, kind)
    assert origin.reason == f"the gradient passed to backward() is already {kind}"


def test_finite_gradients_that_overflow_when_summed_name_the_node_that_sums_them() -> None:
    # h feeds two consumers; each sends back 3e38 per element (finite in float32), and their
    # sum, 6e38, is Inf in float32: the origin is h's node, for its incoming sum
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    h = w * 1.0
    loss = (h * 3e38).sum() + (h * 3e38).sum()
    assert torch.isinf(torch.tensor(3e38) + torch.tensor(3e38))  # the oracle: float32 overflows
    g = gradscope.graph(loss, grads=True)
    loss.backward()
    assert torch.isinf(w.grad).all()  # type: ignore[arg-type]
    (origin,) = g.nonfinite_origins
    assert origin.node.op == "MulBackward0" and origin.node.seq == h.grad_fn._sequence_nr()  # type: ignore[union-attr]
    assert (origin.input, origin.value) == (None, "inf")
    assert origin.reason == "the sum of its 2 incoming finite gradients is inf"
    # the two edges into it carried finite gradients
    into = [e for e in g.edges if e.dst == origin.node.id]
    assert len(into) == 2 and all(math.isfinite(e.grad_norm) for e in into)  # type: ignore[arg-type]
    # with an independent NaN source too (created first, so run after): both are listed
    a = torch.tensor([-1.0, 4.0], requires_grad=True).sqrt()
    h = w * 1.0
    loss = a.sum() + (h * 3e38).sum() + (h * 3e38).sum()
    g = gradscope.graph(loss, grads=True)
    loss.backward()
    assert [(o.node.op, o.input, o.value) for o in g.nonfinite_origins] == [
        ("MulBackward0", None, "inf"),
        ("SqrtBackward0", 0, "nan"),
    ]


def test_sparse_gradients_are_normed_after_coalescing() -> None:
    """Oracle: numpy's norm of the dense gradient. Repeated indices leave an uncoalesced sparse
    gradient whose values, normed as they are, give a different number."""
    import numpy as np

    emb = nn.Embedding(10, 4, sparse=True)
    loss = emb(torch.tensor([3, 3, 7, 3, 1])).pow(2).sum()
    g = gradscope.graph(loss, params=emb, grads=True)
    loss.backward()
    grad = emb.weight.grad
    assert grad is not None and grad.is_sparse and not grad.is_coalesced()
    expected = float(np.linalg.norm(grad.to_dense().double().numpy()))
    assert float(grad._values().double().norm()) != pytest.approx(expected, rel=1e-3)
    (leaf,) = [n for n in g.nodes if n.kind == "parameter"]
    assert leaf.grad_norm == pytest.approx(expected, rel=1e-12)


def test_views_and_one_consumer_leaves_are_read_through_not_hooked() -> None:
    """The documented saving: a view or copy with one consumer, and a leaf with one consumer,
    get no hook (their norm is the edge's); ops and shared leaves do."""
    x = torch.randn(3, 4, requires_grad=True)  # one consumer
    w = torch.randn(4, 3, requires_grad=True)  # two consumers
    loss = (x.view(4, 3).t() * 2 + w.t()).sum() + w.sum()
    g = gradscope.graph(loss, params={"x": x, "w": w}, grads=True)
    recorder = g._walked.recorder  # type: ignore[union-attr]
    hooked = sorted(g.node(i).op or "" for i in recorder.hooked)
    ops = ["AddBackward0", "AddBackward0", "MulBackward0", "SumBackward0", "SumBackward0"]
    assert hooked == sorted([*ops, "AccumulateGrad"])  # the one AccumulateGrad is w's
    loss.backward()
    norms = {n.param: n.grad_norm for n in g.nodes if n.kind == "parameter"}
    assert norms["x"] == pytest.approx(float(x.grad.norm()), rel=1e-6)  # type: ignore[union-attr]
    assert norms["w"] == pytest.approx(float(w.grad.norm()), rel=1e-6)  # type: ignore[union-attr]


class _SparseAndDense(torch.autograd.Function):
    """One node that sends a sparse gradient to one input and a dense one to the other."""

    @staticmethod
    def forward(ctx: object, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return a.sum() * 2 + b.sum() * 3

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        values = torch.tensor([2.0, 2.0, 2.0])
        sparse = torch.sparse_coo_tensor([[0, 2, 0]], values, (4,), check_invariants=True)
        return sparse * g, torch.full((3,), 3.0) * g


@pytest.mark.parametrize("path", ["host", "device"])
def test_a_node_with_sparse_and_dense_gradients(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import gradscope._graph.grad_flow as grad_flow

    if path == "device":
        monkeypatch.setattr(grad_flow, "HOST", ())
    a = torch.ones(4, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    loss = _SparseAndDense.apply(a * 1.0, b * 1.0)
    g = gradscope.graph(loss, grads=True)
    loss.backward()
    (node,) = [n for n in g.nodes if n.op == "_SparseAndDenseBackward"]
    # index 0 twice: coalesced, element 0 holds 4 (an uncoalesced norm would say sqrt(12))
    norms = sorted(e.grad_norm for e in g.edges if e.src == node.id)  # type: ignore[type-var]
    assert norms == pytest.approx(sorted([math.hypot(4.0, 2.0), math.sqrt(27.0)]), rel=1e-12)


def test_a_leaf_given_as_an_output_does_not_stop_the_recording_of_the_others() -> None:
    x = torch.tensor([3.0, 4.0], requires_grad=True)
    loss = (x * 2).sum()
    g = gradscope.graph(x, loss, grads=True)  # x itself has no grad_fn: a leaf root
    loss.backward()
    (mul,) = [n for n in g.nodes if n.op == "MulBackward0"]
    assert mul.grad_norm == pytest.approx(math.sqrt(2.0))  # the ones SumBackward0 sends
    assert g.first_nonfinite is None
