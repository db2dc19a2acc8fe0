"""Progress lines for long work, on stderr and only when stderr is a terminal."""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``update(i, n, what)`` redraws one status line; ``done()`` clears it.

    Silent when the stream is not a terminal (CI logs, pipes, tests), unless ``enabled=True``.
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = enabled if enabled is not None else bool(isatty and isatty())
        self._width = 0

    def update(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        line = f"{what} {done}/{total}"
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = max(self._width, len(line))

    def note(self, text: str) -> None:
        """A one-off status line (for work that cannot report steps, like a graph layout)."""
        if self.enabled:
            self.done()
            self.stream.write(text + "\n")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
