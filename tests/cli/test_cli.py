"""The gradscope command line, run the way a person runs it: as a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from html_check import assert_valid_html

import gradscope
from gradscope._cli.main import main

SCRIPT = Path(sys.executable).with_name("gradscope")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "gradscope", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )


def test_version_through_the_console_script() -> None:
    assert SCRIPT.exists(), "pip install -e . should have created the gradscope script"
    done = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith(f"gradscope {gradscope.__version__} (torch ")


def test_demo_end_to_end(tmp_path: Path) -> None:
    done = run("demo", "--out", "result", "--steps", "6", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # not a terminal: no progress lines
    assert "Step 1." in done.stdout and "AccumulateGrad -> writes fc3.bias.grad" in done.stdout
    out = tmp_path / "result"
    names = sorted(p.name for p in out.iterdir())
    assert "report.html" in names and "summary.txt" in names
    for svg in out.glob("*.svg"):
        ET.parse(svg)
    assert_valid_html((out / "report.html").read_text(encoding="utf-8"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_help_on_every_subcommand() -> None:
    top = run("--help")
    assert top.returncode == 0
    commands = ["demo", "graph"]
    for command in commands:
        assert command in top.stdout
        done = run(command, "--help")
        assert done.returncode == 0, command
        assert f"usage: gradscope {command}" in done.stdout
        assert "--debug" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        ((), "choose a command"),
        (("demo", "--steps", "many"), "invalid int value: 'many'"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(args: tuple[str, ...], message: str) -> None:
    done = run(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert "Traceback" not in done.stderr


def test_unwritable_out_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    done = run("demo", "--out", "taken/sub", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("gradscope demo: error: cannot write into 'taken/sub'")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    debug = run("demo", "--out", "taken/sub", "--debug", cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def plain_walk_count(loss: torch.Tensor) -> int:
    """Nodes behind ``loss`` by a plain next_functions traversal: the oracle for node counts."""
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(child for child, _ in node.next_functions)
    return len(seen)


def test_graph_of_a_module_factory(tmp_path: Path) -> None:
    done = run(
        "graph",
        "gradscope:LeNet",
        "--input",
        "1,1,32,32",
        "--grads",
        "-o",
        "lenet.svg",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    torch.manual_seed(0)
    expected = plain_walk_count(gradscope.LeNet()(torch.randn(1, 1, 32, 32)).sum())
    assert f"backward graph of LeNet, {expected} nodes (" in done.stdout
    assert "drawn), gradient norms on the edges" in done.stdout
    root = ET.parse(tmp_path / "lenet.svg").getroot()
    text = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    for name in ("fc3.bias", "conv1.weight", "AddmmBackward0", "|g|"):
        assert name in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.svg"]


def test_graph_of_a_file_factory_with_two_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "two.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Two(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a = nn.Sequential(nn.Linear(3, 4), nn.Tanh())\n"
        "        self.b = nn.Linear(5, 4)\n"
        "    def forward(self, x, y):\n"
        "        return self.a(x) * self.b(y)\n\n"
        "def make():\n    return Two()\n"
    )
    monkeypatch.chdir(tmp_path)
    inputs = ["--input", "2,3", "--input", "2,5"]
    assert (
        main(
            [
                "graph",
                "two.py:make",
                *inputs,
                "--dtype",
                "float64",
                "--loss",
                "mse",
                "-o",
                "two.dot",
            ]
        )
        == 0
    )
    message = capsys.readouterr().out
    assert "wrote two.dot: backward graph of Two" in message
    dot = (tmp_path / "two.dot").read_text()
    assert re.search(r"\((\d+) drawn\)", dot).group(0) in message  # type: ignore[union-attr]
    assert dot.startswith("digraph") and "a.0.weight" in dot and "MseLossBackward0" in dot
    full = re.search(r"\((\d+) drawn\)", dot)
    assert full is not None
    assert main(["graph", "two.py:make", *inputs, "--depth", "1", "-o", "one.dot"]) == 0
    one = (tmp_path / "one.dot").read_text()
    assert "collapsed at depth 1" in one
    # the message says what the picture holds, the same count as the picture's own title
    drawn = re.search(r"\((\d+) drawn\)", one)
    assert drawn is not None
    message = capsys.readouterr().out
    assert f"({drawn.group(1)} drawn: modules collapsed at depth 1)" in message
    assert main(["graph", "two.py:make", "--input", "2,3", "-o", "x.dot"]) == 1
    assert "forward failed on input shape (2, 3)" in capsys.readouterr().err
    written = sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__")
    assert written == ["one.dot", "two.dot", "two.py"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("gradscope._lenet", "has no ':factory' part"),
        (
            "factories.py:broken",
            "the factory 'factories.py:broken' raised RuntimeError: no weights",
        ),
    ],
)
def test_graph_errors_through_a_subprocess(tmp_path: Path, target: str, message: str) -> None:
    (tmp_path / "factories.py").write_text("def broken():\n    raise RuntimeError('no weights')\n")
    done = run("graph", target, "--input", "1,1,32,32", "-o", "g.svg", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("gradscope graph: error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["factories.py"]


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (
            ["gradscope:LeNet", "--input", "1,1,28,28"],
            1,
            "forward failed on input shape (1, 1, 28, 28)",
        ),
        (["gradscope:LeNet"], 1, "--input is required"),
        (["gradscope:LeNet", "--input", "1,a"], 2, "argument --input: is not a shape"),
        (["gradscope:LeNet", "--input", "1,1,32,32", "-o", "g.pdf"], 1, "name the file .svg"),
        (["gradscope:LeNet", "--input", "1,1,32,32", "-o", "no/g.svg"], 1, "does not exist"),
        (["gradscope:LeNet", "--input", "1,1,32,32", "--depth", "0"], 1, "--depth 0"),
        (["gradscope:LeNet", "--input", "1,1,32,32", "--loss", "l1"], 2, "invalid choice: 'l1'"),
        (
            ["gradscope:LeNet", "--input", "99999999999999999999999,4"],
            2,
            "has 4e+23 elements, more than a tensor can hold",
        ),
        (
            ["gradscope:LeNet", "--input", "1000000,1000000,1000"],
            1,
            "needs 3.55 PiB for the inputs alone",
        ),
        ([":LeNet", "--input", "1,1,32,32"], 1, "has no module part before ':LeNet'"),
        (
            ["torch.nn:Embedding", "--input", "2,3"],
            1,
            "the factory 'torch.nn:Embedding' raised TypeError",
        ),
        (
            ["gradscope:LeNet", "--input", "1,1,32,32", "--input-dtype", "int64"],
            1,
            "integer inputs need --vocab N",
        ),
        (
            ["gradscope:LeNet", "--input", "2", "--input", "3"] + ["--input-dtype", "int64"] * 3,
            1,
            "--input-dtype was given 3 times for 2 --input shapes",
        ),
        (["gradscope:LeNet", "--input", "1,1,32,32", "--vocab", "0"], 2, "--vocab: '0' is not"),
    ],
)
def test_graph_bad_input(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    status: int,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["graph", *args])
    except SystemExit as exit:
        code = exit.code
    assert code == status
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_input_shape_with_x_is_documented_and_means_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--input 8x16` is read as 8,16 on purpose; --help says so, and both draw the same."""
    graph_help = run("graph", "--help").stdout
    assert "1x1x32x32" in " ".join(graph_help.split())
    (tmp_path / "mlp.py").write_text(
        "from torch import nn\n\ndef make():\n    return nn.Sequential(nn.Linear(16, 4))\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["graph", "mlp.py:make", "--input", "8x16", "-o", "x.dot"]) == 0
    assert main(["graph", "mlp.py:make", "--input", "8,16", "-o", "comma.dot"]) == 0
    assert (tmp_path / "x.dot").read_text() == (tmp_path / "comma.dot").read_text()
    x_line, comma_line = capsys.readouterr().out.splitlines()
    assert x_line.split(":", 1)[1] == comma_line.split(":", 1)[1]


def test_graph_exit_from_the_factory_is_a_message_not_a_silent_status(tmp_path: Path) -> None:
    (tmp_path / "quits.py").write_text("def make():\n    raise SystemExit(3)\n")
    done = run("graph", "quits.py:make", "--input", "1,3", "-o", "g.dot", cwd=tmp_path)
    assert done.returncode == 1
    assert "the factory 'quits.py:make' called sys.exit(3)" in done.stderr
    assert done.stderr.count("\n") == 1


def test_the_console_script_finds_modules_in_the_folder_it_runs_in(tmp_path: Path) -> None:
    (tmp_path / "mymodels.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Tagger(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.emb, self.head = nn.Embedding(11, 4), nn.Linear(4, 1)\n\n"
        "    def forward(self, tokens):\n"
        "        return self.head(self.emb(tokens))\n\n"
        "def make_net():\n    return Tagger()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(SCRIPT), "graph", "mymodels:make_net", "--input", "2,5", "-o", "g.dot"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1  # found, but float inputs for an embedding: say so
    assert "--input-dtype int64" in done.stderr and "no module named" not in done.stderr
    done = subprocess.run(
        [*args, "--input-dtype", "int64"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    dot = (tmp_path / "g.dot").read_text()
    assert "EmbeddingBackward0" in dot and "emb.weight" in dot


ATTENTION_MODEL = (
    "import torch\nfrom torch import nn\n\n"
    "def make():\n"
    "    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.1,\n"
    "                                       batch_first=True)\n"
    "    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)\n"
)


def test_graph_tags_modules_so_depth_leaves_no_op_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    (tmp_path / "enc.py").write_text(ATTENTION_MODEL)
    monkeypatch.chdir(tmp_path)
    assert main(["graph", "enc.py:make", "--input", "2,4,16", "-o", "full.dot"]) == 0
    full = (tmp_path / "full.dot").read_text()
    # attention internals sit in the self_attn cluster, dropout inside its layer
    clusters = re.findall(r'id="cluster-([^"]+)"', full)
    assert "layers.0.self_attn" in clusters and "layers.1" in clusters
    assert 'label="dropout1: MulBackward0' in full  # named, in its layer's box
    assert main(["graph", "enc.py:make", "--input", "2,4,16", "--depth", "1", "-o", "d1.dot"]) == 0
    d1 = (tmp_path / "d1.dot").read_text()
    # one node for `layers`; the only ops left outside ran outside every module (the loss)
    ops = re.findall(r"label=\"(\w+Backward\d*)", d1)
    assert ops == ["SumBackward0"], ops
    assert "layers (" in d1 and "modules collapsed at depth 1" in d1
    capsys.readouterr()


def test_graph_focus_on_a_module_and_on_the_nan_origin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "enc.py").write_text(
        ATTENTION_MODEL + "\nclass Bad(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(4, 4)\n"
        "    def forward(self, x):\n"
        "        return torch.sqrt(self.fc(x) * 0.0)\n\n"
        "def bad():\n    return nn.Sequential(nn.Linear(4, 4), Bad(), nn.Linear(4, 2))\n"
    )
    monkeypatch.chdir(tmp_path)
    args = ["graph", "enc.py:make", "--input", "2,4,16"]
    assert main([*args, "--focus", "layers.1.self_attn", "--radius", "1", "-o", "f.dot"]) == 0
    out = capsys.readouterr().out
    assert "around module 'layers.1.self_attn'" in out
    dot = (tmp_path / "f.dot").read_text()
    assert "within 1 edges of module 'layers.1.self_attn'" in dot
    assert "layers.0.linear1" not in dot  # the other layer is far away
    assert main([*args, "--focus", "nope", "-o", "g.dot"]) == 1
    assert "no node ran in that module" in capsys.readouterr().err
    bad = ["graph", "enc.py:bad", "--input", "3,4", "--grads"]
    assert main([*bad, "--focus", "nan", "-o", "nan.dot"]) == 0
    out = capsys.readouterr().out
    assert "first non-finite gradient: SqrtBackward0 in module '1'" in out
    assert "SqrtBackward0" in (tmp_path / "nan.dot").read_text()
    assert main(["graph", "enc.py:bad", "--input", "3,4", "--focus", "nan", "-o", "x.dot"]) == 1
    assert "--focus nan needs --grads" in capsys.readouterr().err
