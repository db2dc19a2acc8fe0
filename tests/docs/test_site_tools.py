"""The documentation tooling: the site check finds what it should, the Sphinx extension fails
the build on an undocumented public name or a broken reference, and the CLI reference holds
every option argparse knows."""

from __future__ import annotations

import argparse
import base64
import sys
import zlib
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
sys.path.insert(0, str(DOCS))
sys.path.insert(0, str(DOCS / "_ext"))

import _chromium  # noqa: E402
import check_site  # noqa: E402
import gradscope_docs  # noqa: E402

from gradscope._cli.main import build_parser  # noqa: E402

needs_chromium = pytest.mark.skipif(_chromium.chromium() is None, reason="no chromium")


def png(width: int, height: int, pixel: bytes) -> bytes:
    """A PNG of one flat colour, written by hand (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    rows = b"".join(b"\0" + pixel * width for _ in range(height))
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


DRAWN = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="80">'
    '<rect width="120" height="80" fill="#fff"/><circle cx="60" cy="40" r="30" fill="#08519c"/>'
    "</svg>"
)


def page(body: str) -> str:
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"</head><body><h1>a page</h1><p>with text on it</p>{body}</body></html>"
    )


@needs_chromium
def test_a_sound_site_passes(tmp_path: Path) -> None:
    (tmp_path / "drawn.svg").write_text(DRAWN)
    (tmp_path / "other.html").write_text(page('<h2 id="part">part</h2>'))
    (tmp_path / "index.html").write_text(
        page(
            '<a href="other.html#part">a part</a> <a href="https://example.org/">elsewhere</a>'
            '<img src="drawn.svg" alt="a circle"><iframe src="other.html"></iframe>'
        )
    )
    report = check_site.check_site(tmp_path)
    assert report.problems == []
    assert (report.pages, report.images) == (2, 1)


@needs_chromium
def test_every_kind_of_problem_is_reported(tmp_path: Path) -> None:
    (tmp_path / "blank.png").write_bytes(png(40, 30, b"\xff\xff\xff"))
    (tmp_path / "other.html").write_text(page(""))
    (tmp_path / "index.html").write_text(
        page(
            '<a href="missing.html">gone</a> <a href="other.html#nowhere">no anchor</a>'
            '<img src="blank.png" alt="white"><img src="absent.png" alt="absent">'
            '<img src="http://127.0.0.1:9/x.png" alt="outside">'
            '<iframe src="no-such-frame.html"></iframe>'
            "<script>console.error('boom');</script>"
        )
    )
    (tmp_path / "empty.html").write_text("<!DOCTYPE html><html><body></body></html>")
    problems = "\n".join(check_site.check_site(tmp_path, timeout=60).problems)
    for expected in (
        "index.html: broken link file://",
        "missing.html",
        "other.html#nowhere has no #nowhere in other.html",
        "image blank.png looks blank: one flat colour",
        "image absent.png did not load",
        "requested http://127.0.0.1:9/x.png (outside the site)",
        "console.error: boom",
        "no-such-frame.html",
        "empty.html: the page looks blank",
    ):
        assert expected in problems, f"{expected!r} not reported:\n{problems}"


def test_blank_tells_flat_from_drawn() -> None:
    assert check_site.blank(png(20, 20, b"\x10\x20\x30")) == "one flat colour"
    drawn = base64.b64decode(
        # a 2x1 PNG: one black and one white pixel
        "iVBORw0KGgoAAAANSUhEUgAAAAIAAAABCAIAAAB7QOjdAAAAEElEQVR4nGNgYGD4DwQMDAAn+AP9TUHVuwAAAABJRU5ErkJggg=="
    )
    assert check_site.blank(drawn) is None


def test_cli_reference_has_every_option_of_every_command() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in [("gradscope", parser), *commands.choices.items()]:
        rst = "\n".join(gradscope_docs._parser_rst(sub, name, "-"))
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings or [action.metavar or action.dest]:
                assert f".. option:: {option}" in rst or f", {option}" in rst, (name, option)
            assert action.help is not None
            first_words = " ".join(action.help.split()[:3]).replace("`", "")
            assert first_words.replace("%(default)s", "") in rst.replace("``", ""), first_words
        assert sub.format_usage().strip().splitlines()[0] in rst


FAKE_MODULE = '''
"""A fake public module."""

__all__ = ["documented", "undocumented", "Thing"]


def documented():
    """Has a docstring; refers to :func:`fakepkg.{target}`."""


def undocumented():
    pass


class Thing:
    """A class."""

    def method(self):
        pass
'''


def build(tmp_path: Path, target: str) -> tuple[int, str]:
    from sphinx.cmd.build import build_main

    (tmp_path / "fakepkg.py").write_text(FAKE_MODULE.replace("{target}", target))
    sys.modules.pop("fakepkg", None)  # another test's fakepkg must not be reused
    (tmp_path / "conf.py").write_text(
        "import sys\n"
        f"sys.path[:0] = [{str(tmp_path)!r}, {str(DOCS / '_ext')!r}]\n"
        "extensions = ['sphinx.ext.autodoc', 'gradscope_docs']\n"
        "gradscope_public_modules = ('fakepkg',)\n"
        "nitpicky = True\n"
    )
    (tmp_path / "index.rst").write_text(
        "Fake\n====\n\n.. automodule:: fakepkg\n   :members:\n\n.. gradscope-cli::\n"
    )
    log = tmp_path / "warnings.txt"
    status = build_main(
        [
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-w",
            str(log),
            str(tmp_path),
            str(tmp_path / "out"),
        ]
    )
    sys.modules.pop("fakepkg", None)
    return status, log.read_text()


def test_the_build_fails_on_undocumented_public_names(tmp_path: Path) -> None:
    status, warnings = build(tmp_path, "documented")
    assert status != 0
    assert "public name fakepkg.undocumented is missing from the API reference" in warnings
    assert "fakepkg.Thing.method" in warnings
    assert "fakepkg.documented" not in warnings
    assert "reference target not found" not in warnings
    assert (tmp_path / "out" / "index.html").exists()  # the CLI reference rendered too
    assert "gradscope graph" in (tmp_path / "out" / "index.html").read_text()


def test_the_build_fails_on_a_broken_reference(tmp_path: Path) -> None:
    status, warnings = build(tmp_path, "no_such_function")
    assert status != 0
    assert "py:func reference target not found: fakepkg.no_such_function" in warnings
