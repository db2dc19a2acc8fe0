"""The demo's voice: its text written to a stream as it runs, with a copy kept for summary.txt.

Prose is wrapped at 96 columns; code and aligned columns are written as they are.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import TextIO

__all__ = ["Narrator"]


@dataclass
class Narrator:
    """Writes the demo's text to a stream and keeps a copy for summary.txt."""

    stream: TextIO
    lines: list[str] = field(default_factory=list)

    def say(self, text: str = "", indent: int = 0) -> None:
        pad = " " * indent
        for line in text.split("\n") if text else [""]:
            wrapped = textwrap.wrap(line, 96, initial_indent=pad, subsequent_indent=pad + "  ")
            for out in wrapped or [""]:
                self.lines.append(out)
                self.stream.write(out + "\n")
        self.stream.flush()

    def raw(self, text: str, indent: int = 4) -> None:
        """Lines written as they are (code, aligned columns): never re-wrapped."""
        for line in text.strip("\n").split("\n"):
            self.lines.append(" " * indent + line)
            self.stream.write(" " * indent + line + "\n")
        self.stream.flush()

    def step(self, number: int, title: str) -> None:
        self.say()
        self.say(f"Step {number}. {title}")
