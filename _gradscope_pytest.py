"""gradscope's pytest plugin, loaded through the ``pytest11`` entry point named ``gradscope``.

- fixture ``gradscope_watch``: ``w = gradscope_watch(model, **watch_kwargs)``; closed at teardown.
- ``--gradscope-artifacts DIR``: when a test that used the fixture fails, each watch's summary
  table followed by its diagnosis (``w.diagnose()``: the findings, most severe first), and,
  where ``w.graph(...)`` captured one, the backward graph as SVG (or as DOT source when no
  Graphviz renderer is installed) are saved under ``DIR/<test id>-<hash>/`` and the path is
  printed in the failure report. Nothing is written on success. DIR is checked and made
  absolute when the session starts, so a test that changes the working directory does not
  move it, and a DIR that cannot be a folder is a usage error rather than a crash later.
- marker ``@pytest.mark.gradscope_finite`` (or ``gradscope_finite = true`` in the ini file): the
  test fails if any backward pass recorded by its watches left a NaN or Inf gradient.

Disable with ``-p no:gradscope``. This module lives outside the package and imports neither
torch nor gradscope when it loads (``import torch`` costs seconds); the fixture imports them.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gradscope import Graph, Watch

__all__ = ["gradscope_watch"]

_WATCHES = pytest.StashKey[list["Watch"]]()
_ARTIFACTS = pytest.StashKey["Path | None"]()
_MARKER = "gradscope_finite"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "gradscope",  # pragma: no mutate (a key; --help shows the description below)
        "gradient debugging with gradscope",
    )
    group.addoption(
        "--gradscope-artifacts",
        metavar="DIR",
        help="when a test using the gradscope_watch fixture fails, save each watch's summary "
        "and captured backward graph (SVG) under DIR/<test id>-<hash>/",
    )
    parser.addini(
        _MARKER,
        type="bool",
        default=False,  # pragma: no mutate (None reads as false too)
        help="fail every test using gradscope_watch whose recorded backward passes left a "
        "NaN/Inf gradient (as @pytest.mark.gradscope_finite does for one test)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}: fail the test if a backward pass recorded by a gradscope_watch watch left "
        "a NaN or Inf gradient",
    )
    config.stash[_ARTIFACTS] = _artifacts_folder(config.getoption("gradscope_artifacts"))


def _artifacts_folder(value: str | None) -> Path | None:
    """``--gradscope-artifacts``, absolute, once checked to be a folder that can be written."""
    if not value:
        return None
    path = Path(os.path.abspath(os.path.expanduser(value)))
    usage = f"--gradscope-artifacts {value}"
    if path.exists() and not path.is_dir():
        raise pytest.UsageError(
            f"{usage}: {path} is a file, not a folder; pass a folder (created when a test fails)"
        )
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise pytest.UsageError(
            f"{usage}: {existing} is a file, so the folder {path} cannot be created under it"
        )
    # the next two lines are tested only where the tests do not run as root (root may write
    # anywhere): the suite's read-only case skips under root, as on the mutation machine
    if not os.access(existing, os.W_OK | os.X_OK):  # pragma: no mutate (untestable as root)
        why = f"cannot write to {existing}, so {path} cannot be made"  # pragma: no mutate (same)
        raise pytest.UsageError(f"{usage}: {why}")  # pragma: no mutate (untestable as root)
    return path


@pytest.fixture
def gradscope_watch(request: pytest.FixtureRequest) -> Iterator[Callable[..., Watch]]:
    """A factory for ``gradscope.watch``: ``w = gradscope_watch(model)``, closed at teardown."""
    import gradscope

    watches: list[Watch] = []
    request.node.stash[_WATCHES] = watches

    def factory(module: Any, **kwargs: Any) -> Watch:
        w = gradscope.watch(module, **kwargs)
        watches.append(w)
        return w

    yield factory
    for w in watches:
        w.close()


def _wants_finite(item: pytest.Item) -> bool:
    if item.get_closest_marker(_MARKER) is not None:
        return True
    return bool(item.config.getini(_MARKER))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    result = yield  # a test that already failed raises here and is left alone
    watches = item.stash.get(_WATCHES, None)
    if watches and _wants_finite(item):
        from gradscope import GradientAssertionError
        from gradscope.testing import assert_watch_finite

        problems = []
        for i, w in enumerate(watches):
            try:
                assert_watch_finite(w, msg=f"watch {i} of {len(watches)} ({_MARKER})")
            except GradientAssertionError as error:
                problems.append(str(error))
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)
    return result


def _folder_name(nodeid: str) -> str:
    """A readable, filesystem-safe name that is unique per test id (``test_x[a/b]`` and
    ``test_x[a_b]`` read alike once made safe, so a hash of the id tells them apart)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_.")[:120] or "test"
    raw = nodeid.encode("utf-8", "surrogatepass")  # pragma: no mutate ("UTF-8" is the same)
    return f"{name}-{hashlib.sha1(raw).hexdigest()[:8]}"


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")  # pragma: no mutate
    # (encoding=None or "UTF-8" write the same bytes on a UTF-8 locale, as on the test machines)


def _save(directory: Path, item: pytest.Item, watches: list[Watch]) -> tuple[Path, list[str]]:
    from gradscope import GradscopeError

    folder = directory / _folder_name(item.nodeid)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, w in enumerate(watches):
        prefix = "" if len(watches) == 1 else f"watch{i}-"
        try:
            text = str(w.summary())  # the table, then the findings
        except GradscopeError as error:  # no backward recorded: say so, diagnose what there is
            text = f"no summary: {error}\n\n{w.diagnose()}"
        summary = folder / f"{prefix}summary.txt"
        _write(summary, text + "\n")
        written.append(summary.name)
        if w.last_graph is not None:
            written.append(_save_graph(w.last_graph, folder, prefix))
    return folder, written


def _save_graph(graph: Graph, folder: Path, prefix: str) -> str:
    """Write ``graph.svg``; ``graph.dot`` instead, saying why, when it cannot be rendered."""
    from gradscope import GradscopeError
    from gradscope._graph.render import INSTALL_HINT, find_renderers

    try:
        why = None if find_renderers() else f"no Graphviz renderer found; {INSTALL_HINT}"
        if why is None:
            try:
                svg = graph.to_svg()  # rendered first: a failure leaves no half-written file
            except GradscopeError as error:  # a renderer error or timeout
                why = str(error)
            else:
                path = folder / f"{prefix}graph.svg"
                _write(path, svg)
                return path.name
        path = folder / f"{prefix}graph.dot"
        _write(path, graph.to_dot())
        return f"{path.name} (DOT source, not SVG: {why})"
    except Exception as error:  # must not turn the test's own failure into an INTERNALERROR
        note = folder / f"{prefix}graph-error.txt"
        _write(note, f"could not save the backward graph: {error!r}\n")
        return f"{note.name} (could not save the backward graph: {error})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    directory = item.config.stash.get(_ARTIFACTS, None)
    watches = item.stash.get(_WATCHES, None)
    if report.when == "call" and report.failed and directory and watches:
        try:
            folder, written = _save(directory, item, watches)
        except OSError as error:  # the disk filled up, the folder vanished...: say so, go on
            text = f"could not save under {directory}: {error}"
        else:
            text = f"saved to {folder}: {', '.join(written)}"
        addsection = getattr(report.longrepr, "addsection", None)
        if callable(addsection):  # shown right under the traceback
            addsection("gradscope artifacts", text)
        else:  # pytest.fail(pytrace=False) leaves a plain string
            report.sections.append(("gradscope artifacts", text))
    return report
