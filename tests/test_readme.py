"""The README's quick start runs as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_runs() -> None:
    text = README.read_text()
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", text, re.DOTALL)
    assert block is not None, "README lost its quick start"
    out = io.StringIO()
    namespace: dict[str, object] = {}
    with contextlib.redirect_stdout(out):
        exec(compile(block.group(1), "README.md", "exec"), namespace)
    assert "gradscope: backward pass 3, 10 parameters" in out.getvalue()
    assert len(namespace["w"].records) == 3  # type: ignore[attr-defined]
