"""Strings from files shown on a terminal: errors, warnings, diff's report, progress bars."""

from __future__ import annotations

import re

_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_TERMINAL_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def terminal_text(text: str) -> str:
    r"""A string from a file made safe for one terminal line: ESC shown as ``\x1b``, a newline as ``\n``.

    A checkpoint's names reach errors, warnings and ``diff``'s report; raw, an escape sequence would
    drive the terminal (retitle it, hide text) and a newline would forge a line of output.
    """
    return _TERMINAL_UNSAFE.sub(_spelled, str(text))


def _spelled(match: re.Match) -> str:
    code = ord(match[0])
    return _SHORT_ESCAPES.get(match[0]) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
