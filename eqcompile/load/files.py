"""Bounded reads of the small files a checkpoint brings (config, tokenizer, index, generation config).

Checkpoints come from strangers: every file is checked to be a regular file (symlinks resolved;
FIFOs and devices refused, since reading them hangs or never ends) and to fit a size limit before a
byte is read; JSON is parsed with a nesting and an integer-length limit, and strings holding lone
surrogates (which no encoder can write out) are refused. Each defect is one ``CheckpointError``
line naming the file.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
import stat
from pathlib import Path

from ..errors import CheckpointError

MAX_JSON_BYTES = 64 * 1024 * 1024  # tokenizer.json of a 256k vocabulary is ~20 MB; configs are KB
MAX_DEPTH = 64  # real configs and tokenizers nest fewer than 10 levels
MAX_INT_DIGITS = 40  # beyond 2**128: no size, id or count in a checkpoint is that long
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:)?|[\[\]{}]', re.DOTALL)  # a string (a key if a colon follows)
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 80


def regular_file(path: Path) -> os.stat_result:
    """``path``'s status, if it is a regular file (opening a FIFO waits for a writer; a device never ends)."""
    try:
        info = os.stat(path)  # follows symlinks: the target is what gets read
    except OSError as e:
        raise CheckpointError(f"{path.name}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path.name}: not a regular file (a FIFO, device or folder is never read)")
    return info


def read_bytes(path: Path, limit: int = MAX_JSON_BYTES) -> bytes:
    """The whole file, if it is a regular file of at most ``limit`` bytes."""
    info = regular_file(path)
    if info.st_size > limit:
        raise CheckpointError(f"{path.name}: {info.st_size:,} bytes, over the {limit:,}-byte limit for this file")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew while we looked
        raise CheckpointError(f"{path.name}: over the {limit:,}-byte limit for this file")
    return data


def read_text(path: Path, limit: int = MAX_JSON_BYTES) -> str:
    """The file as UTF-8 text, bounded as :func:`read_bytes`."""
    try:
        return read_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path.name}: not UTF-8 text (byte {e.start})") from None


def parse_json(text: str, what: str):
    """JSON with bounded nesting and integer length and no lone surrogate; ``what`` names the source
    in errors, which also name the key where the defect sits."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        raise CheckpointError(f"{what}: JSON nested {deepest} levels deep (the limit is {MAX_DEPTH}), "
                              f"{_too_deep_at(text)}")
    try:
        value = json.loads(text, parse_int=_bounded_int)
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{what}: invalid JSON ({_first_line(e)})") from None
    _refuse_unreadable(value, what)
    return value


def read_json(path: Path, limit: int = MAX_JSON_BYTES):
    """A bounded, checked JSON file (see the module docstring)."""
    return parse_json(read_text(path, limit), path.name)


def shown(value) -> str:
    """``repr(value)`` cut short: an error quotes what it found, not a megabyte of it."""
    return _SHOWN.repr(value)


class _LongInteger(str):
    """An integer too long to convert (Python refuses 4,300 digits; no count is 40): its digits,
    kept until the key holding it can be named."""


def _bounded_int(digits: str):
    return _LongInteger(digits) if len(digits.lstrip("-")) > MAX_INT_DIGITS else int(digits)


def _refuse_unreadable(value, what: str) -> None:
    """Refuse an over-long integer or a lone surrogate (no encoder writes it out), naming its key."""
    pending = [(value, ())]
    while pending:
        item, path = pending.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if _SURROGATE.search(key):
                    raise CheckpointError(f"{what}: the key {shown(_escaped(key))} under {_path(path)} holds a lone "
                                          "surrogate, which is not text")
                pending.append((inner, (*path, key)))
        elif isinstance(item, list):
            pending.extend((inner, (*path, index)) for index, inner in enumerate(item))
        elif isinstance(item, _LongInteger):
            raise CheckpointError(f"{what}: {_path(path)} is an integer of {len(item.lstrip('-'))} digits "
                                  f"(the limit is {MAX_INT_DIGITS})")
        elif isinstance(item, str) and _SURROGATE.search(item):
            raise CheckpointError(f"{what}: {_path(path)} holds a lone surrogate "
                                  f"(\\u{ord(_SURROGATE.search(item)[0]):04x}), which is not text")


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _path(path: tuple) -> str:
    """A place in a JSON value as a reader would write it: ``rope_scaling.factor``, ``merges[3]``."""
    if not path:
        return "the top level"
    text = ""
    for step in path:
        if isinstance(step, int):
            text += f"[{step}]"
        elif step.isidentifier():
            text += f".{step}" if text else step
        else:
            text += f"[{shown(step)}]"
    return text


def _too_deep_at(text: str) -> str:
    """Where the nesting passes the limit: under the last key opened before it."""
    depth, key = 0, None
    for token in _TOKEN.finditer(text):
        if token[0][0] == '"':
            key = token[1] if token[2] else key
        elif token[0] in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return f"under the key {shown(key)}" if key is not None else "at the top level"
        else:
            depth -= 1
    return "at the top level"


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
