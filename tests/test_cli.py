"""The gradscope command line, run the way a person runs it: as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

import gradscope

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
    page = HTMLParser()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    page.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_help_on_every_subcommand() -> None:
    top = run("--help")
    assert top.returncode == 0
    commands = ["demo"]
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
