"""Names made safe to draw: any string can reach DOT, SVG, HTML or matplotlib.

Parameter and module names are user strings. A NUL byte makes DOT unparsable and XML invalid, a
lone surrogate cannot be encoded as UTF-8 (so it cannot be piped to Graphviz or written to a
file), and matplotlib's font code rejects both. :func:`printable` shows such characters as
Python escapes instead, so the name stays recognisable and no render fails because of it.

>>> printable("fc1.weight")
'fc1.weight'
>>> printable("w\\x00\\ud800")
'w\\\\x00\\\\ud800'
"""

from __future__ import annotations

import re

__all__ = ["printable"]

# control characters other than tab and line breaks (XML 1.0 forbids most of them, DOT stops at
# NUL) and UTF-16 surrogates (not encodable on their own)
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates written as ``\\x00``/``\\ud800``."""
    return _UNSAFE.sub(_escape, text)
