"""Text from outside (output names, error messages, lock notes, envelopes) made safe to print
on a terminal: control characters are shown escaped, never interpreted.

An ANSI escape in an output name must not clear the screen, and a newline in an error must
not forge a row of the ``status`` table. C0 and C1 controls, DEL, the Unicode line and
paragraph separators and the bidirectional overrides become ``\\x1b``, ``\\n``, ``\\u202e``...
"""

from __future__ import annotations

import re

__all__ = ["printable", "terminal_safe_json"]

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``str(text)`` with every control character escaped (one line, inert on a terminal)."""
    return _CONTROL.sub(_escape, str(text))


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def terminal_safe_json(text: str) -> str:
    """JSON text (``json.dumps(..., ensure_ascii=False)``) with the characters JSON leaves raw
    but a terminal acts on (DEL, C1 controls, bidi overrides) written as ``\\uXXXX``
    escapes: the same JSON value, inert on a terminal."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
