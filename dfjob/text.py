"""Text that comes from flows (errors, backtraces, results, logs) made safe to store and to show.

`storable` is what goes into the database: valid UTF-8 without NUL on both databases, whatever
the flow produced (a lone surrogate from `os.fsdecode`, a NUL byte, bytes that are not UTF-8);
what cannot be stored is written as a visible escape, so nothing is silently lost.
`printable` is what goes to a terminal: control characters shown escaped, never sent raw.
"""

from __future__ import annotations

import re
from typing import Any

_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
# Everything a terminal acts on: C0 controls but tab and newline, DEL, C1 controls (ESC sequences,
# BEL, CSI…), and the bidirectional overrides that can make text read differently from what it is.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def storable(text: str) -> str:
    """`text` as valid UTF-8 without NUL: lone surrogates and NUL become visible escapes."""
    return _UNSTORABLE.sub(_escape, text)


def storable_json(value: Any) -> Any:
    """A JSON value with every string in it (keys included) made storable."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(str(key)): storable_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable_json(item) for item in value]
    return value


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` safe to print on a terminal: control characters escaped (newlines kept if asked)."""
    if keep_newlines:
        return "\n".join(_CONTROL.sub(_escape, line) for line in text.split("\n"))
    return _CONTROL.sub(_escape, text.replace("\n", "\\n"))


def decode(data: bytes) -> str:
    """Bytes a flow wrote, as storable text: invalid UTF-8 is escaped, not dropped."""
    return storable(data.decode("utf-8", errors="backslashreplace"))
