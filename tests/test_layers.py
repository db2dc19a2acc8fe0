"""The package layout is the architecture: imports point down the layers, never up or sideways.

Read statically (``ast``), because importing any ``gradscope`` submodule runs the package's
``__init__``, which imports every layer. ARCHITECTURE.md draws the same table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gradscope"

# unit -> layer; a module belongs to the longest unit its dotted name starts with.
LAYERS = {
    "gradscope._errors": 0,
    "gradscope._version": 0,
    "gradscope._naming": 1,
    "gradscope._files": 1,
    "gradscope._hooks": 1,
    "gradscope._lenet": 1,
    "gradscope._text": 1,
    "gradscope._graph": 2,
    "gradscope._distributed": 2,  # DDP/FSDP2 layouts, shard statistics, replica checks
    "gradscope._watch": 3,
    "gradscope._optim": 3,
    "gradscope._report": 4,
    "gradscope.testing": 4,
    "gradscope.strategies": 4,
    "gradscope._cli": 5,
    "gradscope.integrations": 5,  # Lightning, Hugging Face, TensorBoard: frameworks imported lazily
    "gradscope.__main__": 6,
    "gradscope": 6,  # the flat public API imports from every layer
}

# Imports of a higher layer allowed only where they do not run at import time (inside a function
# body, or under ``if TYPE_CHECKING:``), each for a stated reason.
LAZY_UPWARD = {
    # Watch.summary() and Watch.report() are doors into the report layer; the report layer
    # reads a watch through the Reportable protocol and never imports it.
    ("gradscope._watch.watch", "gradscope._report.summary"),
    ("gradscope._watch.watch", "gradscope._report.html"),
    # _repr_html_ (what Jupyter and VS Code show): the classes keep a thin method and the HTML
    # tables live in the report layer, imported only when a notebook asks for them.
    ("gradscope._watch.watch", "gradscope._report.notebook"),
    ("gradscope._watch.records", "gradscope._report.notebook"),
    ("gradscope._optim.step_report", "gradscope._report.notebook"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    return max((u for u in LAYERS if module == u or module.startswith(u + ".")), key=len)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported gradscope module, line, deferred) for every import in ``path``; deferred means
    inside a function body or an ``if TYPE_CHECKING:`` block, so not run at import time."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    in_function: set[int] = set()
    for node in ast.walk(tree):
        type_only = isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        if type_only or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(inner) for inner in ast.walk(node) if inner is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target]
            if not node.module:  # `from . import x` may import submodules
                targets = [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "gradscope" or target.startswith("gradscope."):
                found.append((target, node.lineno, id(node) in in_function))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_point_down_the_layers(path: Path) -> None:
    source = _module_name(path)
    unit = _unit(source)
    wrong = []
    for target, line, lazy in _imports(path):
        target_unit = _unit(target)
        if target_unit == unit:
            continue
        if LAYERS[target_unit] < LAYERS[unit]:
            continue
        if lazy and (source, target) in LAZY_UPWARD:
            continue
        direction = "up" if LAYERS[target_unit] > LAYERS[unit] else "sideways"
        wrong.append(f"{path.name}:{line} imports {target} ({direction}: {unit} -> {target_unit})")
    assert not wrong, "\n".join(wrong)


def test_every_module_has_a_layer() -> None:
    assert all(_unit(_module_name(p)) for p in MODULES)
    top = {p.name for p in PACKAGE.iterdir()} - {"py.typed", "__pycache__"}
    known = {u.split(".")[1] for u in LAYERS if "." in u}
    assert {n.removesuffix(".py") for n in top} - {"__init__"} <= known


def test_upward_imports_never_run_at_import_time() -> None:
    for source, target in LAZY_UPWARD:
        path = PACKAGE.parent / (source.replace(".", "/") + ".py")
        uses = [lazy for t, _, lazy in _imports(path) if t == target]
        assert uses and all(uses), f"{source} imports {target} at import time"


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        state[start] = 1
        path = [start]
        stack = [iter(sorted(graph[start]))]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return None


def test_find_cycle_finds_one() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"x": {"y"}, "y": {"y"}}) == ["y", "y"]


def test_no_import_cycle_at_module_level() -> None:
    graph: dict[str, set[str]] = {}
    names = {_module_name(p) for p in MODULES}
    for path in MODULES:
        source = _module_name(path)
        if source == "gradscope":
            continue
        edges = set()
        for target, _, deferred in _imports(path):
            while target not in names and "." in target:
                target = target.rpartition(".")[0]
            if not deferred and target in names and target not in {"gradscope", source}:
                edges.add(target)
        graph[source] = edges
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
