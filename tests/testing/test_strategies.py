"""gradscope.strategies, and gradscope's invariants over the networks it draws."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st

import gradscope
import gradscope.strategies as gst
import gradscope.testing as gt
from gradscope import GradscopeError

# find() searches until an example matches: derandomized, so a rare feature cannot make it flaky
FIND = settings(database=None, derandomize=True, max_examples=2000)
SETTINGS = settings(max_examples=30, deadline=None)
FAMILIES = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.Adamax,
    torch.optim.Adadelta,
    torch.optim.Rprop,
    torch.optim.ASGD,
)


def _loss(out: torch.Tensor) -> torch.Tensor:
    return out.pow(2).mean() + out.sum()


@SETTINGS
@given(st.data())
def test_drawn_models_run_and_declare_their_dead_parameters(data: st.DataObject) -> None:
    case = data.draw(gst.models())
    x = data.draw(case.inputs)
    assert tuple(x.shape) == case.input_shape
    out = case.module(x)
    assert out.shape[0] == x.shape[0] and bool(torch.isfinite(out).all())
    _loss(out).backward()
    # oracle: a plain loop over named_parameters
    no_grad = {n for n, p in case.module.named_parameters() if p.grad is None}
    assert no_grad == set(case.frozen) | set(case.unused)
    assert all(not p.requires_grad for n, p in case.module.named_parameters() if n in case.frozen)


@SETTINGS
@given(st.data())
def test_watch_and_assertions_hold_on_any_drawn_model(data: st.DataObject) -> None:
    case = data.draw(gst.models())
    net = case.module
    x = data.draw(case.inputs)
    with gradscope.watch(net, keep="all") as w:
        _loss(net(x)).backward()
        _loss(net(x)).backward()  # accumulates: before of pass 2 is after of pass 1
    first, second = w.records
    assert set(second.missing) == set(case.unused)
    assert set(second.frozen) == set(case.frozen)
    params = dict(net.named_parameters())
    for name, record in second.grads.items():
        assert record.after is not None and record.delta is not None
        assert torch.equal(record.after, params[name].grad)  # type: ignore[arg-type]
        torch.testing.assert_close(record.before, first[name].after)
        torch.testing.assert_close(record.after, record.before + record.delta)  # type: ignore[operator]
        assert record.stats.norm == pytest.approx(
            float(torch.linalg.vector_norm(params[name].grad.double())),  # type: ignore[union-attr]
            rel=1e-5,
            abs=1e-12,
        )
    table = str(w.summary())
    assert all(name in table for name in params)
    gt.assert_grads_finite(net)
    gt.assert_watch_finite(w)
    gt.assert_all_params_have_grad(net, ignore=case.unused, allow_zero=True)
    if case.frozen or case.unused:
        gt.assert_no_grad(net, [*case.frozen, *case.unused])


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_the_step_check_passes_for_any_drawn_model_and_torch_optimizer(
    data: st.DataObject,
) -> None:
    case = data.draw(gst.models())
    net = case.module
    opt = data.draw(gst.optimizers(net))
    x = data.draw(case.inputs)
    with gradscope.watch(net) as w:
        for _ in range(2):  # the second step starts from optimizer state
            opt.zero_grad()
            _loss(net(x)).backward()
            with gradscope.check_step(opt, params=net) as report:
                opt.step()
            assert report.ok, f"{opt}\n{report}"
    assert len(w.records) == 2
    assert set(w.last.missing) == set(case.unused)


def _next_functions_walk(root: torch.Tensor) -> tuple[set[object], int]:
    """Oracle: the autograd nodes behind ``root`` and their input edges, by ``next_functions``."""
    seen: set[object] = set()
    edges = 0
    stack = [root.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        inputs = [f for f, _ in fn.next_functions if f is not None]
        edges += len(inputs)
        stack.extend(inputs)
    return seen, edges


@SETTINGS
@given(st.data())
def test_graph_invariants_hold_on_any_drawn_model(data: st.DataObject) -> None:
    case = data.draw(gst.models())
    net = case.module
    x = data.draw(case.inputs)
    nan = data.draw(st.booleans(), label="one NaN in the input")
    if nan:
        x = x.clone()
        x.view(-1)[data.draw(st.integers(0, x.numel() - 1))] = float("nan")
    under_watch = data.draw(st.booleans(), label="built by Watch.graph")
    with gradscope.watch(net) as w:
        loss = _loss(net(x))
        if under_watch:  # module tags from the watch's forward hooks
            g = w.graph(loss)
            assert w.last_graph is g
        else:
            g = gradscope.graph(loss, params=net, grads=True)
        fns, edge_count = _next_functions_walk(loss)
        loss.backward()

    assert len(g.nodes) == len(fns) and len(g.edges) == edge_count
    # the parameter leaves are exactly the parameters that got a gradient: frozen and unused
    # ones are absent, a reused layer's parameters appear once
    leaves = [n.param for n in g.nodes if n.kind == "parameter"]
    assert all(n.kind in ("op", "parameter") for n in g.nodes)  # the input needs no grad
    assert sorted(leaves) == sorted(n for n, p in net.named_parameters() if p.grad is not None)
    assert not set(leaves) & {*case.frozen, *case.unused}
    # Every node has a norm: loss.backward() runs every node next_functions reaches (it lists
    # only nodes that need a gradient), and the views and single-use leaves that grads=True
    # does not hook read the norm on their one incoming edge. Only a node backward skips
    # (torch.autograd.grad(..., inputs=...) pruning a branch) would have none.
    assert all(n.grad_norm is not None for n in g.nodes)
    assert all(e.grad_norm is not None for e in g.edges)
    (root,) = g.roots
    assert root.grad_norm == 1.0  # d loss / d loss
    if nan:  # the NaN in the forward output meets the gradient at out.pow(2)
        origin = g.first_nonfinite
        assert origin is not None and origin.node.op == "PowBackward0"
        return
    assert g.first_nonfinite is None
    for n in g.nodes:  # oracle: torch's own .grad (None before this backward)
        if n.kind == "parameter":
            grad = net.get_parameter(str(n.param)).grad
            assert grad is not None
            expected = float(torch.linalg.vector_norm(grad.double()))
            assert n.grad_norm == pytest.approx(expected, rel=1e-5, abs=1e-12), n.param


@pytest.mark.parametrize(
    "feature",
    ["linear", "conv1d", "conv2d", "relu_inplace", "+res", "x2", "+frozen", "+unused"],
)
def test_every_feature_of_the_issue_can_be_drawn(feature: str) -> None:
    case = find(gst.models(), lambda c: feature in c.description, settings=FIND)
    assert feature in repr(case)


def test_branch_switches() -> None:
    never = find(
        gst.models(frozen_branch=False, unused_branch=True),
        lambda c: True,
        settings=FIND,
    )
    assert never.frozen == () and never.unused != ()


def test_drawing_a_model_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    find(gst.models(), lambda c: "conv2d" in c.description, settings=FIND)
    assert torch.equal(state, torch.get_rng_state())


@SETTINGS
@given(st.data())
def test_drawn_optimizers_cover_the_trainable_parameters_and_step(data: st.DataObject) -> None:
    case = data.draw(gst.models(frozen_branch=True))
    opt = data.draw(gst.optimizers(case.module))
    assert type(opt) in FAMILIES
    trainable = [p for p in case.module.parameters() if p.requires_grad]
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in trainable]
    opt.zero_grad()
    _loss(case.module(data.draw(case.inputs))).backward()
    opt.step()
    assert all(bool(torch.isfinite(p).all()) for p in trainable)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_optimizer_family_can_be_drawn(family: type) -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = find(gst.optimizers(params), lambda o: type(o) is family, settings=FIND)
    assert isinstance(opt, family)


def test_tensors_strategy_specials() -> None:
    t = find(
        gst.tensors((2, 3), allow_nan=True, allow_infinity=True),
        lambda t: bool(torch.isnan(t).any()) and bool(torch.isinf(t).any()),
        settings=FIND,
    )
    assert t.shape == (2, 3) and t.dtype == torch.float32


def test_bad_arguments_are_explained() -> None:
    with pytest.raises(GradscopeError, match=r"models\(kinds=\.\.\.\) takes some of"):
        gst.models(kinds=["lstm"])  # type: ignore[list-item]
    with pytest.raises(GradscopeError, match="not a tensor of shape"):
        gst.optimizers(torch.zeros(2))
    with pytest.raises(GradscopeError, match="no trainable parameters"):
        gst.optimizers(torch.nn.Linear(2, 2).requires_grad_(False))
    with pytest.raises(GradscopeError, match="float dtype"):
        gst.tensors((2,), dtype=torch.int64)


def test_missing_hypothesis_gives_an_install_hint() -> None:
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "try:\n    import gradscope.strategies\n"
        "except ImportError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install hypothesis" in done.stdout
    assert "gradscope[dev]" in done.stdout
