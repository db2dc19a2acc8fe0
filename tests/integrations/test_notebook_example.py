"""examples/notebook.ipynb runs top to bottom in a real Jupyter kernel (nbclient, headless),
and shows the tables and the backward graph's SVG."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebook.ipynb"


def _outputs(cell: nbformat.NotebookNode) -> dict[str, str]:
    found: dict[str, str] = {}
    for output in cell.get("outputs", []):
        for mime, value in output.get("data", {}).items():
            found[mime] = found.get(mime, "") + (
                value if isinstance(value, str) else "".join(value)
            )
        if output.get("output_type") == "stream":
            found["stream"] = found.get("stream", "") + output["text"]
    return found


def test_the_notebook_runs_and_shows_tables_and_the_graph(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
        "commit the notebook without outputs; the test runs it"
    )
    NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    code = [c for c in notebook.cells if c.cell_type == "code"]
    shown = [_outputs(c) for c in code]
    by_source = {c.source.splitlines()[-1]: out for c, out in zip(code, shown, strict=True)}
    assert not any("Traceback" in out.get("stream", "") for out in shown)

    watch_html = by_source["w"]["text/html"]
    assert "<gradscope.Watch of LeNet" not in watch_html  # the repr is escaped, not raw tags
    assert "&lt;gradscope.Watch of LeNet: 10 hooked parameters, 3 records, open&gt;" in watch_html
    assert watch_html.count('<svg class="spark"') == 10  # a norm line per parameter
    assert len(re.findall(r"<tr[ >]", watch_html)) == 11  # header + 10 parameters

    record_html = by_source["w.last"]["text/html"]
    assert "backward pass 3: 10 parameters" in record_html
    assert "conv1.bias" in record_html

    graph = by_source["g"]
    assert graph["image/svg+xml"].lstrip().startswith(("<?xml", "<svg", "<!DOCTYPE"))
    assert "AccumulateGrad" in graph["image/svg+xml"] or "conv1" in graph["image/svg+xml"]

    assert "backward pass 4: 10 parameters" in by_source["w.summary()"]["text/html"]
    step_ok = by_source["report"]["text/html"]
    assert "checked against" in step_ok and ": ok</b>" in step_ok
    step_bad = by_source["wrong"]["text/html"]
    assert "10 of 10 parameters FAILED" in step_bad
    assert step_bad.count("<b>FAIL</b>") == 10
    assert (tmp_path / "report.html").exists()
