"""The pytest plugin (_gradscope_pytest), run for real inside pytester sessions."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import gradscope
import gradscope.testing as gt

pytest_plugins = ["pytester"]

_MODEL = """
import pytest, torch
import gradscope.testing as gt

def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
"""


def test_loading_the_plugin_does_not_import_torch() -> None:
    code = "import sys, _gradscope_pytest; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_a_pytest_session_that_never_uses_gradscope_never_imports_torch(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_plain(request):
            assert request.config.pluginmanager.has_plugin("gradscope")
            assert "torch" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_fixture_records_and_closes_at_teardown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        _MODEL
        + """
WATCHES = []

def test_uses(gradscope_watch):
    net = model()
    w = gradscope_watch(net)
    WATCHES.append(w)
    net(torch.randn(2, 3)).sum().backward()
    assert w.last["0.weight"].after.shape == (4, 3)
    assert not w.closed

def test_after():
    assert WATCHES[0].closed
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)


def test_artifacts_written_on_failure_and_path_printed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        _MODEL
        + """
def test_fails(gradscope_watch):
    net = model()
    w = gradscope_watch(net)
    net(torch.randn(2, 3)).sum().backward()
    assert False, "the model is wrong"

def test_passes(gradscope_watch):
    net = model()
    w = gradscope_watch(net)
    net(torch.randn(2, 3)).sum().backward()

def test_fails_without_fixture():
    assert False
"""
    )
    out = pytester.path / "artifacts"
    result = pytester.runpytest(f"--gradscope-artifacts={out}")
    result.assert_outcomes(passed=1, failed=2)
    folders = sorted(p.name for p in out.iterdir())
    assert len(folders) == 1
    assert re.fullmatch(
        r"test_artifacts_written_on_failure_and_path_printed.py_test_fails-[0-9a-f]{8}", folders[0]
    )
    summary = (out / folders[0] / "summary.txt").read_text()
    # the saved table is the watch's own summary of the failing test's pass
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert name in summary
    # and it ends with the diagnosis of the watch
    assert "gradscope diagnosis of Sequential (1 backward pass): " in summary
    saved = f"saved to {out / folders[0]}: summary.txt"
    result.stdout.fnmatch_lines(["*gradscope artifacts*", saved])


def test_nothing_written_when_all_pass(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        _MODEL
        + """
def test_passes(gradscope_watch):
    net = model()
    gradscope_watch(net)
    net(torch.randn(2, 3)).sum().backward()
"""
    )
    out = pytester.path / "artifacts"
    pytester.runpytest(f"--gradscope-artifacts={out}").assert_outcomes(passed=1)
    assert not out.exists()


def test_finite_marker_fails_a_test_whose_backward_made_nan(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        _MODEL
        + """
@pytest.mark.gradscope_finite
def test_nan_in_second_pass(gradscope_watch):
    net = model()
    w = gradscope_watch(net)
    x = torch.randn(2, 3)
    net(x).sum().backward()
    net.zero_grad()
    (net(x).sum() * float("nan")).backward()
    net.zero_grad()
    net(x).sum().backward()  # the last pass is finite again: only the history shows the NaN

@pytest.mark.gradscope_finite
def test_finite(gradscope_watch):
    net = model()
    gradscope_watch(net)
    net(torch.randn(2, 3)).sum().backward()

def test_nan_without_marker(gradscope_watch):
    net = model()
    gradscope_watch(net)
    (net(torch.randn(2, 3)).sum() * float("nan")).backward()

@pytest.mark.parametrize("k", [1])
def test_nan_with_another_marker(gradscope_watch, k):
    net = model()
    gradscope_watch(net)
    (net(torch.randn(2, 3)).sum() * float("nan")).backward()
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*watch 0 of 1 (gradscope_finite)",
            "assert_watch_finite: 4 parameters got non-finite gradients in the 3 recorded "
            "backward passes (first in pass 2)",
            "  0.weight (4, 3): non-finite from backward pass 2 on: * NaN, 0 Inf of 12 elements",
            "  0.bias (4,): *",
            "  2.weight (1, 4): non-finite from backward pass 2 on: 4 NaN, 0 Inf of 4 elements",
            "Hint: *",
        ]
    )
    assert "test_nan_in_second_pass" in result.stdout.str()


def test_finite_ini_option_applies_to_every_test(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ngradscope_finite = true\n")
    pytester.makepyfile(
        _MODEL
        + """
def test_nan(gradscope_watch):
    net = model()
    gradscope_watch(net)
    (net(torch.randn(2, 3)).sum() * float("inf")).backward()
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*0.weight (4, 3): non-finite from backward pass 1 on*"])


def test_disabled_with_p_no_gradscope(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_uses(gradscope_watch):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:gradscope")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'gradscope_watch' not found*"])
    result = pytester.runpytest("-p", "no:gradscope", "--gradscope-artifacts=x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_assertion_failures_point_at_the_test_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        _MODEL
        + """
def test_user_line():
    net = model()
    net(torch.randn(2, 3)).sum().backward()
    net[2].bias.grad[0] = float("nan")
    gt.assert_grads_finite(net)  # THE USER LINE
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "THE USER LINE" in text
    assert "_assert_grads.py" not in text  # __tracebackhide__ keeps gradscope's frames out
    assert "2.bias (1,): 1 NaN, 0 +Inf, 0 -Inf of 1 element; first at index (0,) = nan" in text


def test_assert_watch_finite_directly(lenet: torch.nn.Module, lenet_input: torch.Tensor) -> None:
    with gradscope.watch(lenet) as w:
        lenet(lenet_input).sum().backward()
        gt.assert_watch_finite(w)
        (lenet(lenet_input).sum() * float("nan")).backward()
    with pytest.raises(gradscope.GradientAssertionError) as excinfo:
        gt.assert_watch_finite(w, msg="epoch 2")
    text = str(excinfo.value)
    assert text.startswith("epoch 2\nassert_watch_finite: 10 parameters got non-finite gradients")
    lines = text.splitlines()
    assert lines[2].startswith("  conv1.weight (6, 1, 5, 5): non-finite from backward pass 2 on")
    assert (
        "  fc3.bias (10,): non-finite from backward pass 2 on: 10 NaN, 0 Inf of 10 elements; "
        "first at index (0,) = nan"
    ) in lines
    with pytest.raises(gradscope.GradscopeError, match="use assert_grads_finite"):
        gt.assert_watch_finite(lenet)  # type: ignore[arg-type]


def test_folder_names_are_safe_and_unique() -> None:
    from _gradscope_pytest import _folder_name

    name = _folder_name("tests/test_a.py::test_b[x/y-1.5]")
    assert re.fullmatch(r"tests_test_a.py_test_b_x_y-1.5-[0-9a-f]{8}", name)
    # capitals kept, only "_" and "." stripped at the ends, at most 120 characters before the
    # hash, and a name that is all punctuation falls back to "test"
    digest = hashlib.sha1(b"X/t.py::test_X").hexdigest()[:8]
    assert _folder_name("X/t.py::test_X") == f"X_t.py_test_X-{digest}"
    assert _folder_name("_.t::X._") == f"t_X-{hashlib.sha1(b'_.t::X._').hexdigest()[:8]}"
    assert (
        _folder_name("t.py::" + "x" * 300)
        == ("t.py_" + "x" * 300)[:120]
        + "-"
        + (hashlib.sha1(("t.py::" + "x" * 300).encode()).hexdigest()[:8])
    )
    assert _folder_name("::/") == f"test-{hashlib.sha1(b'::/').hexdigest()[:8]}"
    ids = [
        "t.py::test_x[a/b]",
        "t.py::test_x[a_b]",
        "t.py::test_x[..]",
        "t.py::test_x",
        "t.py::test_X",
        "t.py::test_x[\ud800]",
    ]
    names = [_folder_name(i) for i in ids]
    assert len({n.lower() for n in names}) == len(ids)  # unique, even on a case-blind disk
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) and len(n) <= 129 for n in names)


_COLLIDING = (
    _MODEL
    + """
@pytest.mark.parametrize("case", ["a/b", "a_b", ".."])
def test_x(gradscope_watch, case):
    net = model()
    w = gradscope_watch(net)
    net(torch.randn(2, 3)).sum().backward()
    assert False, case

def test_moves(gradscope_watch, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a relative DIR was resolved when the session started
    net = model()
    gradscope_watch(net)
    assert False
"""
)


def test_artifact_folders_never_collide_and_stay_where_the_session_started(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(_COLLIDING)
    result = pytester.runpytest("--gradscope-artifacts=relative/out")
    result.assert_outcomes(failed=4)
    out = pytester.path / "relative" / "out"
    folders = sorted(out.iterdir())
    assert len(folders) == 4
    for folder in folders:
        assert (folder / "summary.txt").is_file()
        result.stdout.fnmatch_lines([f"*saved to {folder}: summary.txt*"])


@pytest.mark.parametrize("where", ["file", "under-a-file", "read-only"])
def test_an_unusable_artifacts_folder_is_a_usage_error(
    pytester: pytest.Pytester, where: str
) -> None:
    pytester.makepyfile("def test_ok():\n    pass\n")
    blocker = pytester.path / "blocker"
    blocker.write_text("not a folder")
    target = {"file": blocker, "under-a-file": blocker / "out", "read-only": None}[where]
    if target is None:
        locked = pytester.mkdir("locked")
        locked.chmod(0o500)
        target = locked / "out"
        if os.access(locked, os.W_OK):  # root ignores permissions
            pytest.skip("running as a user who can write anywhere")
    result = pytester.runpytest(f"--gradscope-artifacts={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines([f"*--gradscope-artifacts {target}: *"])


_GRAPH_TESTS = (
    _MODEL
    + """
def test_fails_with_graph(gradscope_watch):
    net = model()
    w = gradscope_watch(net)
    loss = net(torch.randn(2, 3)).sum()
    w.graph(loss)
    loss.backward()
    assert False, "the model is wrong"

def test_passes_with_graph(gradscope_watch):
    net = model()
    w = gradscope_watch(net)
    loss = net(torch.randn(2, 3)).sum()
    w.graph(loss)
    loss.backward()
"""
)


def _svg_nodes(path: Path) -> dict[str, str]:
    """``{svg id: text}`` of each drawn graph node, parsed as XML."""
    svg = "{http://www.w3.org/2000/svg}"
    root = ET.parse(path).getroot()
    assert root.tag == svg + "svg"
    return {
        g.get("id", ""): " ".join("".join(g.itertext()).split())
        for g in root.iter(svg + "g")
        if "node" in (g.get("class") or "").split() and g.get("id", "").startswith("node-")
    }


def test_artifacts_include_the_captured_graph_as_svg(pytester: pytest.Pytester) -> None:
    if not gradscope._graph.render.find_renderers():
        pytest.skip("no Graphviz renderer installed (pip install graphviz-pure)")
    pytester.makepyfile(_GRAPH_TESTS)
    out = pytester.path / "artifacts"
    result = pytester.runpytest(f"--gradscope-artifacts={out}")
    result.assert_outcomes(passed=1, failed=1)
    (folder,) = out.iterdir()  # the passing test wrote nothing
    assert re.fullmatch(r".*test_fails_with_graph-[0-9a-f]{8}", folder.name)
    assert sorted(p.name for p in folder.iterdir()) == ["graph.svg", "summary.txt"]
    nodes = _svg_nodes(folder / "graph.svg")
    # sum <- addmm(2.*) <- relu <- addmm(0.*): four op nodes, parameters drawn inside them,
    # each named by the module that ran it
    labels = sorted(text.split(" |g| ")[0].split(" ", 1)[1] for text in nodes.values())
    assert labels == ["0: AddmmBackward0", "1: ReluBackward0", "2: AddmmBackward0", "SumBackward0"]
    text = " ".join(nodes.values())
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert f"+ {name} (" in text
    # the backward pass ran after w.graph(loss): every node shows the gradient norm through it
    assert all(" |g| " in t for t in nodes.values())
    result.stdout.fnmatch_lines(
        ["*gradscope artifacts*", f"saved to {folder}: summary.txt, graph.svg"]
    )


@pytest.mark.parametrize("renderer", ["missing", "broken"])
def test_artifacts_fall_back_to_dot_source_and_say_why(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, renderer: str
) -> None:
    real = gradscope._graph.render.find_renderers()
    bin_dir = pytester.mkdir("bin")
    if renderer == "broken":
        dot = bin_dir / "dot"
        dot.write_text("#!/bin/sh\necho 'dot: cannot load plugins' >&2\nexit 1\n")
        dot.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))  # nothing else on PATH: no dot, no graphviz-pure
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    assert len(gradscope._graph.render.find_renderers()) == (renderer == "broken")
    pytester.makepyfile(_GRAPH_TESTS)
    out = pytester.path / "artifacts"
    result = pytester.runpytest(f"--gradscope-artifacts={out}")
    result.assert_outcomes(passed=1, failed=1)
    (folder,) = out.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["graph.dot", "summary.txt"]
    source = (folder / "graph.dot").read_text()
    assert source.startswith("digraph backward {")
    for label in ("SumBackward0", "ReluBackward0", "AddmmBackward0", "+ 2.bias (1) |g| "):
        assert label in source
    why = {
        "missing": "no Graphviz renderer found; install a Graphviz renderer: "
        "`pip install graphviz-pure`*",
        "broken": "could not render the graph: dot -Tsvg -Kdot failed (exit 1): "
        "dot: cannot load plugins*",
    }[renderer]
    result.stdout.fnmatch_lines(
        [f"saved to {folder}: summary.txt, graph.dot (DOT source, not SVG: {why}"]
    )
    monkeypatch.undo()
    if real:  # the saved source is valid DOT: a real renderer draws the same four nodes
        svg = folder / "graph.svg"
        svg.write_bytes(gradscope._graph.render.render(source).data)
        assert len(_svg_nodes(svg)) == 4


def test_artifacts_include_the_diagnosis(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        _MODEL
        + """
import gradscope

def test_fails(gradscope_watch):
    net = model()
    w = gradscope_watch(net)
    for _ in range(2):
        net[2](net[1](net[0](torch.randn(2, 3))).detach()).sum().backward()
    gt.assert_healthy(w)
"""
    )
    out = pytester.path / "artifacts"
    result = pytester.runpytest(f"--gradscope-artifacts={out}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert_healthy: the diagnosis of Sequential found 1 problem*"])
    (folder,) = out.iterdir()
    summary = (folder / "summary.txt").read_text()
    assert "gradscope diagnosis of Sequential (2 backward passes): 1 error" in summary
    assert "1. error no_gradient: 0.weight, 0.bias get no gradient" in summary


def test_summary_is_the_last_pass_and_each_watch_has_its_own(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        _MODEL
        + """
def test_fails(gradscope_watch, tmp_path_factory):
    first, second = model(), model()
    w0, w1 = gradscope_watch(first), gradscope_watch(second)
    for _ in range(3):
        first(torch.randn(2, 3)).sum().backward()
    second(torch.ones(2, 3)).sum().backward()
    expected = tmp_path_factory.getbasetemp() / "expected"
    expected.mkdir()
    for i, w in enumerate((w0, w1)):
        (expected / f"{i}.txt").write_text(str(w.summary()), encoding="utf-8")
    assert False
"""
    )
    out = pytester.path / "artifacts"
    result = pytester.runpytest(f"--gradscope-artifacts={out}", f"--basetemp={pytester.path / 't'}")
    result.assert_outcomes(failed=1)
    (folder,) = out.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["watch0-summary.txt", "watch1-summary.txt"]
    first = (folder / "watch0-summary.txt").read_text(encoding="utf-8")
    second = (folder / "watch1-summary.txt").read_text(encoding="utf-8")
    # each file is that watch's own summary table, as str() gives it, and a newline
    for i, text in enumerate((first, second)):
        assert text == (pytester.path / "t" / "expected" / f"{i}.txt").read_text("utf-8") + "\n"
    # the summary of the newest pass (3 of 3), not the first one
    assert first.startswith("gradscope: backward pass 3, 4 parameters")
    assert second.startswith("gradscope: backward pass 1, 4 parameters")
    # oracle: with ones as input, the last layer's bias gradient is the batch size, 2
    (bias_row,) = [line for line in second.splitlines() if line.startswith("2.bias ")]
    assert "2.000e+00" in bias_row
    result.stdout.fnmatch_lines([f"saved to {folder}: watch0-summary.txt, watch1-summary.txt"])


def test_a_graph_that_cannot_be_saved_leaves_a_note_not_an_internal_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        _MODEL
        + """
def test_fails(gradscope_watch, monkeypatch):
    net = model()
    w = gradscope_watch(net)
    loss = net(torch.randn(2, 3)).sum()
    w.graph(loss)
    loss.backward()

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(type(w.last_graph), "to_svg", broken)
    monkeypatch.setattr(type(w.last_graph), "to_dot", broken)
    assert False, "the model is wrong"
"""
    )
    out = pytester.path / "artifacts"
    result = pytester.runpytest(f"--gradscope-artifacts={out}")
    result.assert_outcomes(failed=1)
    assert "INTERNALERROR" not in result.stdout.str()
    (folder,) = out.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["graph-error.txt", "summary.txt"]
    note = (folder / "graph-error.txt").read_text()
    assert note == "could not save the backward graph: RuntimeError('disk on fire')\n"
    result.stdout.fnmatch_lines(
        [
            "*the model is wrong*",
            f"saved to {folder}: summary.txt, graph-error.txt "
            "(could not save the backward graph: disk on fire)",
        ]
    )


def test_a_second_session_into_the_same_folder_replaces_the_artifacts(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        _MODEL
        + """
def test_fails(gradscope_watch):
    net = model()
    gradscope_watch(net)
    net(torch.randn(2, 3)).sum().backward()
    assert False
"""
    )
    out = pytester.path / "artifacts"
    for _ in range(2):  # the folder exists the second time
        result = pytester.runpytest(f"--gradscope-artifacts={out}")
        result.assert_outcomes(failed=1)
        assert "INTERNALERROR" not in result.stdout.str()
        (folder,) = out.iterdir()
        result.stdout.fnmatch_lines([f"saved to {folder}: summary.txt"])
        assert (folder / "summary.txt").read_text().startswith("gradscope: backward pass 1")


def test_help_lists_the_option_and_the_ini_setting(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    text = " ".join(result.stdout.str().split())  # help is wrapped to the terminal's width
    assert "gradient debugging with gradscope: --gradscope-artifacts=DIR when a test using" in text
    assert (
        "save each watch's summary and captured backward graph (SVG) under "
        "DIR/<test id>-<hash>/" in text
    )
    assert (
        "gradscope_finite (bool): fail every test using gradscope_watch whose recorded backward "
        "passes left a NaN/Inf gradient (as @pytest.mark.gradscope_finite does for one test)"
    ) in text
    result = pytester.runpytest("--markers")
    text = " ".join(result.stdout.str().split())
    assert (
        "@pytest.mark.gradscope_finite: fail the test if a backward pass recorded by a "
        "gradscope_watch watch left a NaN or Inf gradient"
    ) in text


def test_finite_ini_option_false_is_off(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ngradscope_finite = false\n")
    pytester.makepyfile(
        _MODEL
        + """
def test_nan(gradscope_watch):
    net = model()
    gradscope_watch(net)
    (net(torch.randn(2, 3)).sum() * float("nan")).backward()
"""
    )
    pytester.runpytest().assert_outcomes(passed=1)
