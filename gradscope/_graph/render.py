"""Find a Graphviz renderer and run it under a timeout, falling back rather than hanging.

Discovery order: ``dot`` on PATH (system Graphviz), then ``graphviz-pure`` (a static binary from
pip, on PATH or next to the running Python, where a virtualenv puts it even when that ``bin`` is
not on PATH). Both take the same ``-T``/``-K`` flags.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .._errors import GradscopeError

__all__ = ["INSTALL_HINT", "RenderResult", "Renderer", "find_renderers", "render"]

INSTALL_HINT = (
    "install a Graphviz renderer: `pip install graphviz-pure` (no system packages needed) "
    "or `apt-get install graphviz` (brew install graphviz on macOS)"
)


@dataclass(frozen=True)
class Renderer:
    name: str  # "dot" | "graphviz-pure"
    path: str


@dataclass(frozen=True)
class RenderResult:
    data: bytes
    renderer: Renderer
    engine: str
    notes: tuple[str, ...]  # what fell back, for the caller to show


def find_renderers() -> list[Renderer]:
    """Every renderer found, in the order they are tried; empty when there is none."""
    found: list[Renderer] = []
    dot = shutil.which("dot")
    if dot:
        found.append(Renderer("dot", dot))
    pure = shutil.which("graphviz-pure")
    if pure is None:
        beside = Path(sys.executable).parent / "graphviz-pure"
        if beside.is_file():
            pure = str(beside)
    if pure:
        found.append(Renderer("graphviz-pure", pure))
    return found


class RenderTimeout(GradscopeError):
    pass


def _run(renderer: Renderer, source: str, fmt: str, engine: str, timeout: float) -> bytes:
    try:
        done = subprocess.run(
            [renderer.path, f"-T{fmt}", f"-K{engine}"],
            input=source.encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RenderTimeout(
            f"{renderer.name} -K{engine} did not finish within {timeout:g} s"
        ) from None
    except OSError as err:
        raise GradscopeError(f"could not run {renderer.path}: {err}") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()[-500:]
        raise GradscopeError(
            f"{renderer.name} -T{fmt} -K{engine} failed (exit {done.returncode}): {message}"
        )
    return done.stdout


def render(
    source: str,
    fmt: str = "svg",
    *,
    timeout: float = 30.0,
    engines: tuple[str, ...] = ("dot", "sfdp"),
) -> RenderResult:
    """Render DOT ``source`` with the first of ``engines`` that finishes within ``timeout``
    (by default ``dot``, then ``sfdp``: fast, no layers).

    A renderer that fails outright (bad exit status) hands over to the next one found.
    """
    renderers = find_renderers()
    if not renderers:
        raise GradscopeError(
            f"no Graphviz renderer found (looked for `dot` on PATH and `graphviz-pure` on PATH "
            f"and in {Path(sys.executable).parent}); {INSTALL_HINT}. "
            f"The DOT source is always available: Graph.to_dot() or save('graph.dot')."
        )
    notes: list[str] = []
    errors: list[str] = []
    for renderer in renderers:
        for engine in engines:
            try:
                data = _run(renderer, source, fmt, engine, timeout)
            except RenderTimeout as err:
                notes.append(str(err))
                errors.append(str(err))
                continue  # try the faster engine
            except GradscopeError as err:
                errors.append(str(err))
                break  # try the next renderer
            return RenderResult(data, renderer, engine, tuple(notes))
    raise GradscopeError(
        "could not render the graph: "
        + "; ".join(errors)
        + ". Pass depth=... (or a smaller max_nodes) to collapse modules, or save('graph.dot')"
    )
