"""Every code block of README.md and docs/*.rst runs in the test suite (sybil).

- ``python`` blocks run; a block that starts with ``>>>`` is a doctest, so its printed output
  is checked (ELLIPSIS and NORMALIZE_WHITESPACE on). A block that defines ``test_*`` functions
  taking no arguments has them called, so a documented test is a test.
- ``console`` blocks: each ``$ gradscope ...`` line runs through the command line's ``main``
  and must exit 0; the lines under it, if any, are its expected output (``...`` matches
  anything). ``$ pytest ...`` lines run pytest in a subprocess and must pass. ``$ make ...``
  lines (what the rest of CI runs) are only checked to name real make targets.
- README blocks run each in a fresh namespace, so every one works when pasted alone; the
  blocks of one docs page share a namespace, as the page reads top to bottom.
- Each document runs in its own temporary folder (files it writes land there), with this
  repository's ``examples/`` reachable as ``examples/``.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sybil import Document, Example, Region, Sybil
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers import markdown, rest
from sybil.parsers.abstract.doctest import DocTestStringParser

ROOT = Path(__file__).resolve().parent
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# Generated or executed-elsewhere parts of docs/: the gallery's scripts run when the site is
# built (`make docs`), conf.py and the extensions are Sphinx's.
collect_ignore_glob = [
    "docs/_build",
    "docs/generated",
    "docs/*.py",
    "docs/_ext",
    "docs/gallery",
]


def _run_tests_defined(evaluate: Callable[[Example], Any]) -> Callable[[Example], Any]:
    """After a block runs, call the argument-free ``test_*`` functions it defined."""

    def evaluator(example: Example) -> Any:
        before = set(example.namespace)
        result = evaluate(example)
        for name in sorted(set(example.namespace) - before):
            value = example.namespace[name]
            if name.startswith("test_") and callable(value):
                value()
        return result

    return evaluator


def _standalone(evaluate: Callable[[Example], Any]) -> Callable[[Example], Any]:
    """Run the block in an empty namespace: it must work when pasted on its own."""

    def evaluator(example: Example) -> Any:
        example.namespace.clear()
        example.namespace["__name__"] = "__main__"
        return evaluate(example)

    return evaluator


_CHECKER = doctest.OutputChecker()


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, flags=re.M))


def _run_console(example: Example) -> None:
    """``$ gradscope ...`` lines run; the lines under one are its expected output."""
    from gradscope._cli.main import main

    commands: list[tuple[str, list[str]]] = []
    for line in str(example.parsed).splitlines():
        if line.startswith("$ "):
            commands.append((line[2:].split("#")[0].strip(), []))
        elif commands:
            commands[-1][1].append(line)
    assert commands, f"console block without a `$ ` command at line {example.line}"
    for command, expected in commands:
        argv = shlex.split(command)
        if argv[0] == "make":
            assert set(argv[1:]) <= _make_targets(), f"{command!r}: no such make target"
            continue
        if argv[0] == "pytest":
            _run_pytest(command, argv[1:], "\n".join(expected))
            continue
        if argv[:3] == ["python", "-m", "gradscope"]:
            argv = ["gradscope", *argv[3:]]
        assert argv[0] == "gradscope", f"{command!r}: only gradscope, pytest and make run here"
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                status = main(argv[1:])
            except SystemExit as exit_:  # --help and --version exit through argparse
                status = exit_.code if isinstance(exit_.code, int) else 1
        assert status == 0, f"{command!r} exited {status}: {err.getvalue()}"
        want = "\n".join(expected).strip("\n")
        if want and not _CHECKER.check_output(want + "\n", out.getvalue(), FLAGS):
            raise AssertionError(f"{command!r} printed:\n{out.getvalue()}\nexpected:\n{want}")


def _run_pytest(command: str, args: list[str], want: str) -> None:
    """A documented pytest run, in a subprocess (the plugin loads as it would for a user)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"{command!r} exited {done.returncode}:\n{done.stdout}"
    want = want.strip("\n")
    if want and not _CHECKER.check_output(want + "\n", done.stdout, FLAGS):
        raise AssertionError(f"{command!r} printed:\n{done.stdout}\nexpected:\n{want}")


class _Folder:
    """Each document runs in a fresh temporary folder with ``examples/`` linked in."""

    def __init__(self) -> None:
        self.saved: list[tuple[str, str]] = []

    def setup(self, namespace: dict[str, Any]) -> None:
        folder = tempfile.mkdtemp(prefix="gradscope-docs-")
        os.symlink(ROOT / "examples", Path(folder) / "examples")
        self.saved.append((os.getcwd(), folder))
        os.chdir(folder)

    def teardown(self, namespace: dict[str, Any]) -> None:
        previous, folder = self.saved.pop()
        os.chdir(previous)
        shutil.rmtree(folder, ignore_errors=True)


class _PythonBlocks:
    """``python`` code blocks; one that starts with ``>>>`` is a doctest."""

    def __init__(self, module: Any, standalone: bool) -> None:
        evaluate = _run_tests_defined(PythonEvaluator())
        self.blocks = module.CodeBlockParser(
            "python", _standalone(evaluate) if standalone else evaluate
        )
        self.doctests = DocTestStringParser(DocTestEvaluator(FLAGS))
        self.standalone = standalone

    def __call__(self, document: Document) -> Iterator[Region]:
        for region in self.blocks(document):
            source = region.parsed
            if not str(source).startswith(">>>"):
                yield region
                continue
            for i, example in enumerate(self.doctests(source, document.path)):
                example.adjust(region, source)
                if i == 0 and self.standalone:
                    example.evaluator = _standalone(example.evaluator)
                yield example


_readme_folder, _docs_folder = _Folder(), _Folder()
readme = Sybil(
    parsers=[
        _PythonBlocks(markdown, standalone=True),
        markdown.CodeBlockParser("console", _run_console),
        markdown.SkipParser(),
    ],
    filenames=["README.md"],
    setup=_readme_folder.setup,
    teardown=_readme_folder.teardown,
    name="readme",
)
docs = Sybil(
    parsers=[
        _PythonBlocks(rest, standalone=False),
        rest.DocTestParser(FLAGS),
        rest.CodeBlockParser("console", _run_console),
        rest.SkipParser(),
    ],
    patterns=["docs/*.rst"],
    setup=_docs_folder.setup,
    teardown=_docs_folder.teardown,
    name="docs",
)
pytest_collect_file = (readme + docs).pytest()
