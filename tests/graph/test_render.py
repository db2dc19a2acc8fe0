"""Renderer discovery (dot, then graphviz-pure, then a clear error) and the timeout fallback."""

from __future__ import annotations

import os
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gradscope import GradscopeError
from gradscope._graph.render import find_renderers, render

SOURCE = "digraph { a -> b }"
SVG = "{http://www.w3.org/2000/svg}"


def _titles(svg: bytes) -> set[str]:
    root = ET.fromstring(svg)
    return {t.text or "" for t in root.iter(SVG + "title")}


def test_without_dot_on_path_graphviz_pure_is_found_beside_python(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if not (Path(sys.executable).parent / "graphviz-pure").is_file():
        pytest.skip("graphviz-pure (dev extra) is not installed beside this Python")
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot, no graphviz-pure on PATH
    (found,) = find_renderers()
    assert found.name == "graphviz-pure"
    result = render(SOURCE)
    assert result.renderer.name == "graphviz-pure" and result.engine == "dot"
    assert {"a", "b"} <= _titles(result.data)


def test_no_renderer_at_all_names_both_install_routes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert find_renderers() == []
    with pytest.raises(GradscopeError) as err:
        render(SOURCE)
    text = str(err.value)
    assert "pip install graphviz-pure" in text and "apt-get install graphviz" in text
    assert "to_dot()" in text


def _fake_dot(tmp_path: Path, script: str) -> None:
    dot = tmp_path / "dot"
    dot.write_text("#!/bin/sh\n" + script)
    dot.chmod(0o755)


def test_a_hanging_dot_layout_falls_back_to_sfdp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = shutil.which("dot") or str(Path(sys.executable).parent / "graphviz-pure")
    if not Path(real).is_file():
        pytest.skip("no renderer to delegate to")
    # a dot whose hierarchical layout hangs but whose sfdp works
    _fake_dot(tmp_path, f'case "$*" in *-Ksfdp*) exec "{real}" "$@";; *) sleep 30;; esac\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    result = render(SOURCE, timeout=1.0)
    assert result.renderer.path == str(tmp_path / "dot")
    assert result.engine == "sfdp"
    assert any("did not finish within 1 s" in n for n in result.notes)
    assert {"a", "b"} <= _titles(result.data)


def test_a_broken_dot_hands_over_to_graphviz_pure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if not (Path(sys.executable).parent / "graphviz-pure").is_file():
        pytest.skip("graphviz-pure is not installed")
    _fake_dot(tmp_path, "echo 'dot: cannot load plugins' >&2; exit 1\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    result = render(SOURCE)
    assert result.renderer.name == "graphviz-pure"


@pytest.mark.skipif(shutil.which("dot") is None, reason="system Graphviz `dot` not installed")
def test_system_dot_is_preferred_and_renders() -> None:
    assert find_renderers()[0].name == "dot"
    result = render(SOURCE)
    assert result.renderer.name == "dot"
    assert {"a", "b"} <= _titles(result.data)
    png = render(SOURCE, "png").data
    assert png.startswith(b"\x89PNG")
