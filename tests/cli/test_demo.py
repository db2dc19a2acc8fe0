"""gradscope demo: its narration against the tutorial replayed in plain torch, and its files."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from html_check import assert_valid_html
from torch import nn, optim

import gradscope
import gradscope._cli.demo
from gradscope import GradscopeError
from gradscope._cli.demo import FILES, GRAPH_SHOWS, LEARNING_RATE, run_demo
from gradscope._cli.main import build_parser
from gradscope._cli.progress import Progress


def tutorial(steps: int) -> dict[str, object]:
    """The article's code, as written there, with the demo's seed: the oracle."""
    torch.manual_seed(0)
    net = gradscope.LeNet()
    input = torch.randn(1, 1, 32, 32)
    net.zero_grad()
    out = net(input)
    out.backward(torch.randn(1, 10))
    output = net(input)
    target = torch.randn(10).view(1, -1)
    criterion = nn.MSELoss()
    loss = criterion(output, target)
    third = loss.grad_fn.next_functions[0][0].next_functions[0][0]
    net.zero_grad()
    loss.backward()
    bias_grad = net.conv1.bias.grad.clone()
    learning_rate = LEARNING_RATE
    for f in net.parameters():
        f.data.sub_(f.grad.data * learning_rate)
    optimizer = optim.SGD(net.parameters(), lr=LEARNING_RATE)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = criterion(net(input), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {
        "first_loss": repr(nn.MSELoss()(output, target)),
        "third": third,
        "third_is_fc3_bias": third.variable is net.fc3.bias,
        "bias_grad": bias_grad,
        "losses": losses,
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("demo") / "out"
    stream = io.StringIO()
    run_demo(out, stream=stream, steps=12)
    return stream.getvalue(), out


def test_demo_follows_the_tutorial(demo: tuple[str, Path]) -> None:
    text, _ = demo
    oracle = tutorial(12)
    assert oracle["third_is_fc3_bias"]
    assert f"print(loss)  ->  {oracle['first_loss']}" in text
    assert type(oracle["third"]).__name__ == "AccumulateGrad"
    assert re.search(r"next_functions\[0\]\[0\]\s+AccumulateGrad -> writes fc3\.bias\.grad", text)
    assert re.search(r"loss\.grad_fn\s+MseLossBackward0", text)
    assert "AddmmBackward0 (uses fc3.bias, fc3.weight)" in text
    assert "MseLossBackward0 -> AddmmBackward0 -> AccumulateGrad[fc3.bias]" in text
    assert "before backward: None" in text
    after = "[" + ", ".join(f"{v:+.4f}" for v in oracle["bias_grad"].tolist()) + "]"
    assert f"after backward:  {after}" in text
    assert re.search(r"update rule \(parameters only\):\s+ok", text)
    assert re.search(r"1\s+of\s+10\s+parameters\s+FAILED\s+fc1\.weight, off by 2\.00 steps", text)
    losses = oracle["losses"]
    assert f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over 12 steps" in text
    assert losses[-1] < losses[0]
    chain = (
        "input -> conv2d [conv1] -> relu -> maxpool2d -> conv2d [conv2] -> relu -> maxpool2d "
        "-> flatten -> linear [fc1] -> relu -> linear [fc2] -> relu -> linear [fc3] -> MSELoss "
        "-> loss"
    )
    assert chain in " ".join(text.split())
    steps = [int(s) for s in re.findall(r"^Step (\d+)\.", text, flags=re.M)]
    assert steps == sorted(steps) and steps[0] == 1


def test_demo_ends_with_a_diagnosis_naming_both_mistakes(demo: tuple[str, Path]) -> None:
    text, _ = demo
    section = text[text.index("Step 8. Why a model does not learn") :]
    # the detached features: no gradient for conv1 and conv2, cut at the detach() line
    assert "1. error no_gradient: conv1.weight, conv1.bias, conv2.weight, conv2.bias" in section
    assert "torch.Tensor.detach" in section
    assert "demo.py:" in section and "x = torch.flatten(x, 1).detach()" in section
    # the learning rate 100x the tutorial's: the update-to-weight ratio far above 1e-3
    assert "2. warning update_ratio:" in section
    assert "the learning rate (lr 1) is probably too high" in section
    assert "It names both mistakes: the cut path" in section


def test_demo_files(demo: tuple[str, Path]) -> None:
    text, out = demo
    assert sorted(p.name for p in out.iterdir()) == [
        "backward-graph.svg",
        "report.html",
        "summary.txt",
    ]
    root = ET.parse(out / "backward-graph.svg").getroot()
    labels = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    assert "fc3.bias" in labels and "MseLossBackward0" in labels and "|g|" in labels
    summary = (out / "summary.txt").read_text()
    assert summary.startswith(text.splitlines()[0])
    assert "gradscope: backward pass 12, 10 parameters" in summary
    report = (out / "report.html").read_text()
    assert_valid_html(report)
    assert "12 recorded backward passes" in report
    assert '<div class="graph" id="graph-view"><svg' in report and "AddmmBackward0" in report
    assert not list(out.parent.glob(".*partial"))


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(watch: object, path: object, graph: object = None) -> None:
        Path(str(path)).write_text("half")
        raise GradscopeError("disk full while writing the report")

    monkeypatch.setattr(gradscope._cli.demo, "write_report", broken)
    with pytest.raises(GradscopeError, match="disk full"):
        run_demo(tmp_path / "out", stream=io.StringIO(), steps=2)
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_keeps_other_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "report.html").write_text("old")
    files = run_demo(out, stream=io.StringIO(), steps=2)
    assert sorted(p.name for p in files) == ["backward-graph.svg", "report.html", "summary.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unwritable_out_fails_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    stream = io.StringIO()
    with pytest.raises(GradscopeError, match="is a file, not a folder"):
        run_demo(blocker, stream=stream, steps=2)
    with pytest.raises(GradscopeError, match="cannot write into"):
        run_demo(blocker / "sub", stream=stream, steps=2)
    assert stream.getvalue() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_progress_only_on_terminals() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet, loud = io.StringIO(), Tty()
    for stream in (quiet, loud):
        progress = Progress(stream)
        for i in range(3):
            progress.update(i + 1, 3, "training")
        progress.done()
    assert quiet.getvalue() == ""
    assert "\rtraining 3/3" in loud.getvalue()
    assert loud.getvalue().endswith("\r")


def test_without_a_graphviz_renderer_the_demo_keeps_going(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_renderer(self: object, **options: object) -> str:
        raise GradscopeError("no Graphviz renderer found: pip install graphviz-pure")

    monkeypatch.setattr(gradscope.Graph, "to_svg", no_renderer)
    stream = io.StringIO()
    run_demo(tmp_path / "out", stream=stream, steps=2)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "backward-graph.dot",
        "report.html",
        "summary.txt",
    ]
    assert (out / "backward-graph.dot").read_text().startswith("digraph")
    assert "could not be drawn here: no Graphviz renderer found" in " ".join(
        stream.getvalue().split()
    )
    assert "captured but could not be drawn" in (out / "report.html").read_text()


def test_demo_text_agrees_with_the_svg_title(demo: tuple[str, Path]) -> None:
    """What step 5 says the picture holds is what the picture's own title says."""
    text, out = demo
    root = ET.parse(out / "backward-graph.svg").getroot()
    texts = [t.text or "" for t in root.iter() if t.tag.endswith("text")]
    title = next(t for t in texts if t.startswith("backward graph:"))
    found = re.match(r"backward graph: (\d+) nodes, \d+ edges \((\d+) drawn\)", title)
    assert found, title
    nodes, drawn = found.groups()
    flat = " ".join(text.split())
    assert f"backward-graph.svg draws its {nodes} nodes as {drawn} boxes" in flat
    # the same words for what the graph shows, in step 5 and in the file list
    assert flat.count(GRAPH_SHOWS) == 2
    assert "on every edge" not in flat and "on every node" not in flat


def test_every_file_is_listed_once_and_in_help(demo: tuple[str, Path]) -> None:
    text, out = demo
    written = sorted(p.name for p in out.iterdir())
    assert sorted(FILES) == written
    listing = text[text.index("Files in ") :]
    for name in written:
        assert re.search(rf"^  {re.escape(name)}\s", listing, flags=re.M), name
    demo_help = build_parser()._subparsers._group_actions[0].choices["demo"].format_help()  # type: ignore[union-attr]
    for name in written:
        assert name in demo_help, f"gradscope demo --help leaves out {name}"
    summary = (out / "summary.txt").read_text()
    assert not re.search(r"^  summary\.txt\s", summary, flags=re.M), "summary.txt lists itself"
    assert re.search(r"^  report\.html\s", summary, flags=re.M)
