"""Sphinx pieces for gradscope's site.

- ``.. gradscope-cli::`` writes the command-line reference from the argparse parser itself
  (``gradscope._cli.main.build_parser``), so it can never disagree with ``--help``.
- Every public name (each module's ``__all__``) and each public method or property of a public
  class must reach the page with a docstring: autodoc skips undocumented members silently, so
  this extension warns instead, and ``-W`` makes the warning an error.
- ``written_files_scraper``: a sphinx-gallery image scraper that shows the SVG/PNG files and
  HTML pages an example wrote (the backward graph, the report) under the block that wrote them.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import shutil
import time
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

LOG = logging.getLogger(__name__)

# The public modules: their __all__ is the public API.
PUBLIC_MODULES = (
    "gradscope",
    "gradscope.testing",
    "gradscope.strategies",
    "gradscope.integrations.lightning",
    "gradscope.integrations.transformers",
    "gradscope.integrations.tensorboard",
)
# Methods a framework calls, documented by the framework (Lightning's and Hugging Face's
# callback hooks): the class docstring says what the callback does.
FRAMEWORK_HOOKS = re.compile(r"^on_\w+$")


# --------------------------------------------------------------------------- CLI reference
def _rst_text(text: str) -> str:
    """argparse help as reST: `code` -> ``code``; stray asterisks escaped."""
    text = re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", text)
    return text.replace("*", r"\*")


def _option_rst(parser: argparse.ArgumentParser, action: argparse.Action) -> list[str]:
    formatter = parser._get_formatter()
    if action.option_strings:
        if action.nargs == 0:
            names = ", ".join(action.option_strings)
        else:
            metavar = formatter._format_args(action, action.dest.upper())
            names = ", ".join(f"{o} {metavar}" for o in action.option_strings)
    else:
        names = formatter._format_args(action, action.dest)
    help_text = formatter._expand_help(action) if action.help else ""
    return [f".. option:: {names}", "", f"   {_rst_text(help_text)}", ""]


def _parser_rst(parser: argparse.ArgumentParser, title: str, underline: str) -> list[str]:
    lines = [title, underline * len(title), ""]
    raw = parser.formatter_class is argparse.RawDescriptionHelpFormatter
    if parser.description:
        if raw:
            block = [f"   {line}" for line in parser.description.splitlines()]
            lines += [".. code-block:: text", "", *block, ""]
        else:
            lines += [_rst_text(parser.description), ""]
    usage = parser.format_usage().strip()
    lines += [".. code-block:: text", "", *[f"   {line}" for line in usage.splitlines()], ""]
    lines += [f".. program:: {parser.prog}", ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        lines += _option_rst(parser, action)
    if parser.epilog:
        lines += [_rst_text(parser.epilog), ""]
    return lines


class CliReference(SphinxDirective):
    """``.. gradscope-cli::``: one section per command, options from argparse."""

    def run(self) -> list[nodes.Node]:
        from gradscope._cli.main import build_parser

        parser = build_parser()
        lines = _parser_rst(parser, "gradscope", "-")
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, sub in commands.choices.items():
            lines += _parser_rst(sub, f"gradscope {name}", "-")
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, "gradscope-cli"), container)
        return list(container.children)


# --------------------------------------------------------------------------- docstrings
def _public_members(module_name: str) -> dict[str, Any]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        LOG.warning("%s has no __all__: its public names are unknown", module_name)
        return {}
    found: dict[str, Any] = {}
    for name in names:
        if name.startswith("__"):
            continue
        obj = getattr(module, name)
        found[f"{module_name}.{name}"] = obj
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_") or FRAMEWORK_HOOKS.match(attr):
                    continue
                if isinstance(value, property | staticmethod | classmethod) or callable(value):
                    found[f"{module_name}.{name}.{attr}"] = value
    return found


def _collect(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    documented: dict[str, bool] = app.env.gradscope_documented  # type: ignore[attr-defined]
    documented[name] = documented.get(name, False) or any(line.strip() for line in lines)


def _builder_inited(app: Sphinx) -> None:
    app.env.gradscope_documented = {}  # type: ignore[attr-defined]


def _merge(app: Sphinx, env: Any, docnames: Any, other: Any) -> None:
    env.gradscope_documented.update(other.gradscope_documented)


def _check_documented(app: Sphinx, env: Any) -> None:
    documented: dict[str, bool] = getattr(env, "gradscope_documented", {})
    if not documented:  # an incremental build that read no API page: nothing to compare
        return
    for module in app.config.gradscope_public_modules:
        for name, obj in _public_members(module).items():
            short = name.rsplit(".", 1)[-1]
            if name in documented:
                if not documented[name]:
                    LOG.warning("public name %s has no docstring", name, type="gradscope")
                continue
            has_doc = bool(inspect.getdoc(obj.fget if isinstance(obj, property) else obj))
            why = "it has no docstring" if not has_doc else "it is not on any page"
            LOG.warning(
                "public name %s is missing from the API reference: %s (%s)",
                name,
                why,
                short,
                type="gradscope",
            )


# --------------------------------------------------------------------------- gallery
_WRITTEN = (".svg", ".png", ".html")


def written_files_scraper(
    block: Any, block_vars: dict[str, Any], gallery_conf: dict[str, Any]
) -> str:
    """Show the pictures and pages a gallery block wrote: new or changed ``.svg``/``.png``
    files as images, ``.html`` pages in a frame. The files move into the site's folders, so
    building leaves nothing behind in ``docs/gallery/``."""
    from sphinx_gallery.scrapers import figure_rst

    example = Path(block_vars["src_file"])
    folder = example.parent
    seen: dict[str, float] = block_vars.setdefault("gradscope_seen", {})
    start = _EXAMPLE_STARTS.get(example.name, 0.0)
    new = []
    for path in sorted(folder.rglob("*")):
        if path.suffix not in _WRITTEN or not path.is_file():
            continue
        mtime = path.stat().st_mtime
        if mtime < start or seen.get(str(path)) == mtime:
            continue
        seen[str(path)] = mtime
        new.append(path)
    images, pages = [], []
    for path in new:
        if path.suffix == ".html":
            pages.append(path)
            for chart in _charts_of(path):  # the report's charts, as pictures of their own
                target = Path(next(block_vars["image_path_iterator"])).with_suffix(".svg")
                target.write_text(chart, encoding="utf-8")
                images.append(str(target))
            continue
        target = Path(next(block_vars["image_path_iterator"])).with_suffix(path.suffix)
        shutil.move(path, target)  # out of the sources: the example's output lives in the site
        images.append(str(target))
    rst = figure_rst(images, gallery_conf["src_dir"]) if images else ""
    for page in pages:
        rst += _frame_rst(page, example, gallery_conf)
    return rst


_CHART = re.compile(r'<div class="chart">(<svg\b.*?</svg>)\s*</div>', re.S)


def _charts_of(page: Path) -> list[str]:
    """The SVG charts a gradscope report page holds (inline, made by matplotlib)."""
    return _CHART.findall(page.read_text(encoding="utf-8"))


# When each example started (set before it runs): files older than that are not its own.
_EXAMPLE_STARTS: dict[str, float] = {}


def _frame_rst(page: Path, example: Path, gallery_conf: dict[str, Any]) -> str:
    """Copy a written HTML page into the site (html_extra_path) and show it in a frame."""
    src_dir = Path(gallery_conf["src_dir"])
    extra = src_dir / "generated" / "extra" / "gallery-files"
    extra.mkdir(parents=True, exist_ok=True)
    name = f"{example.stem}-{page.name}"
    shutil.move(page, extra / name)
    # the gallery page lives in generated/gallery/: the site root is two folders up
    src = f"../../gallery-files/{name}"
    return (
        "\n\n.. raw:: html\n\n"
        f'    <p class="gallery-frame-caption">{page.name}, as a browser shows it '
        f'(<a href="{src}">open it on its own</a>):</p>\n'
        f'    <iframe class="gallery-frame" src="{src}" title="{page.name}"></iframe>\n\n'
    )


def reset_seed(gallery_conf: dict[str, Any], fname: str) -> None:
    """Before each example: the same random numbers every build."""
    import torch

    torch.manual_seed(0)
    _EXAMPLE_STARTS[Path(fname).name] = time.time() - 1.0  # mtime resolution


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("gradscope_public_modules", PUBLIC_MODULES, "env")
    app.add_directive("gradscope-cli", CliReference)
    app.connect("builder-inited", _builder_inited)
    app.connect("autodoc-process-docstring", _collect)
    app.connect("env-merge-info", _merge)
    app.connect("env-check-consistency", _check_documented)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
