r"""The pre-tokenization regex: Oniguruma patterns rewritten for Python's ``re``, behind a gate.

The pre-tokenization regexes are Oniguruma patterns (``\p{L}``, ``\p{N}``), which Python's ``re``
cannot express. :func:`translate_pattern` spells each such class out as explicit code point ranges
from the Unicode database of the Python that builds the tokenizer (``unicodedata``); the result is
stored in the data, so an emitted module behaves the same on any Python. The reference
(``tokenizers``, Oniguruma) has its own, newer tables: characters assigned after Python's Unicode
version are letters or numbers there and "other" here. Measured with tokenizers 0.23 (Unicode 16)
against Python 3.11 (Unicode 14): 9,272 letters and 120 numbers, all unassigned in Python's tables;
on every character both know, ``\p{L}``, ``\p{N}``, ``\p{P}``, ``\p{S}``, ``\p{M}``, ``\d`` and
``\s`` agree exactly (tests/test_tokenizer.py shows one such character changing the ids).

A regex from a file is code the emitted tokenizer runs on every text: ``(a+)+$`` takes time
exponential in the length of a line of a's. :func:`split_step` lets through the known families'
patterns (:data:`KNOWN_PATTERNS`) and literal strings, and any other regex only when the user says
they trust it (``--trust-tokenizer-pattern``).
"""

from __future__ import annotations

import itertools
import unicodedata
from functools import cache

from ..errors import ConfigError, UntrustedInput
from .runtime import WHITE_SPACE

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                  r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                 r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
DIGIT_PATTERNS = {True: r"\p{N}", False: r"\p{N}+"}  # tokenizers' Digits(individual_digits)
# the regexes eqcompile runs without asking: each family's, the Digits step's (SmolLM2, StarCoder),
# and the empty pattern of character-level tokenizers; none backtracks more than linearly
KNOWN_PATTERNS = {
    GPT2_PATTERN: "GPT-2", LLAMA3_PATTERN: "Llama-3", QWEN2_PATTERN: "Qwen2",
    DIGIT_PATTERNS[True]: "Digits (SmolLM2, StarCoder)", DIGIT_PATTERNS[False]: "Digits", "": "characters",
}
SHOWN_CHARS = 80  # of an unknown pattern, in its error


def split_step(pattern: str, where: str, trust: bool = False) -> dict:
    """A pre-tokenizer step cutting at ``pattern``'s matches, if the pattern passes the gate
    (after translation, so that syntax eqcompile cannot run is reported as such)."""
    translated = translate_pattern(pattern)
    if pattern not in KNOWN_PATTERNS and not trust:
        shown = repr(pattern[:SHOWN_CHARS]) + ("..." if len(pattern) > SHOWN_CHARS else "")
        raise UntrustedInput(
            f"{where}: the regex {shown} is none of the known pre-tokenizer patterns "
            f"({', '.join(sorted(set(KNOWN_PATTERNS.values()) - {'characters'}))}); a regex from a file "
            "can take exponential time on some texts: pass --trust-tokenizer-pattern to run it anyway")
    return {"split": pattern, "re": translated}


def literal_step(text: str) -> dict:
    """A step cutting at a literal string (nothing to backtrack over: no gate needed)."""
    pattern = "".join(f"\\{c}" if not c.isalnum() and c != " " else c for c in text)
    return {"split": pattern, "re": translate_pattern(pattern)}


@cache
def category_ranges() -> dict[str, list[tuple[int, int]]]:
    """General category -> code point ranges, from this Python's ``unicodedata`` (one pass)."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    start = 0
    for category, run in itertools.groupby(map(unicodedata.category, map(chr, range(0x110000)))):
        length = sum(1 for _ in run)
        ranges.setdefault(category, []).append((start, start + length - 1))
        start += length
    return ranges


def _code(point: int) -> str:
    return f"\\u{point:04X}" if point <= 0xFFFF else f"\\U{point:08X}"


@cache
def _category_class(prefix: str) -> str:
    """The body of a ``re`` character class holding every category starting with ``prefix``."""
    spans = sorted(span for category, found in category_ranges().items() if category.startswith(prefix)
                   for span in found)
    if not spans:
        raise ConfigError(f"unknown Unicode general category \\p{{{prefix}}} in a pre-tokenizer regex")
    merged = [list(spans[0])]
    for start, stop in spans[1:]:
        if start == merged[-1][1] + 1:
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    return "".join(_code(a) if a == b else f"{_code(a)}-{_code(b)}" for a, b in merged)


def _escape_class(letter: str, name: str | None) -> tuple[str, bool]:
    """(class body, negated) for ``\\s``, ``\\d``, ``\\p{..}`` and their capitals."""
    negated = letter.isupper()
    if letter in "sS":
        return WHITE_SPACE, negated
    if letter in "dD":
        return _category_class("Nd"), negated
    if len(name) > 2 or not name.isalpha():
        raise ConfigError(f"pre-tokenizer regex: \\{letter}{{{name}}} is not a general category")
    return _category_class(name), negated


def translate_pattern(pattern: str) -> str:
    r"""An Oniguruma pattern, as tokenizers runs it, rewritten for Python's ``re``.

    ``\p{X}`` (X a general category such as L, N, Lu), ``\s`` (White_Space) and ``\d`` (Nd), and
    their negations, become explicit classes; everything else is the same syntax in both engines
    (alternation, ``(?i:...)``, ``{1,3}``, ``(?!...)``, backtracking order). The empty pattern
    isolates every character, as tokenizers' Split does with it.
    """
    if pattern == "":
        return "(?s:.)"
    out, i, in_class = [], 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            letter = pattern[i + 1]
            if letter in "wWbBZ":  # word characters and \Z mean other things in the two engines
                raise ConfigError(f"pre-tokenizer regex: \\{letter} is not supported")
            if letter in "sSdDpP":
                name, i = None, i + 2
                if letter in "pP":
                    close = pattern.find("}", i)
                    if pattern[i:i + 1] != "{" or close < 0:
                        raise ConfigError(f"pre-tokenizer regex: malformed \\{letter} at {i - 2}")
                    name, i = pattern[i + 1:close], close + 1
                body, negated = _escape_class(letter, name)
                if in_class and negated:
                    raise ConfigError(f"pre-tokenizer regex: \\{letter} inside [...] is not supported")
                out.append(body if in_class else f"[{'^' if negated else ''}{body}]")
                continue
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if char == "[" and in_class:
            raise ConfigError("pre-tokenizer regex: nested character classes are not supported")
        if char == "[":
            in_class = True
            opening = 2 if pattern[i + 1:i + 2] == "^" else 1
            if pattern[i + opening:i + opening + 1] == "]":  # a leading ] is a literal
                opening += 1
            out.append(pattern[i:i + opening])
            i += opening
            continue
        if char == "]" and in_class:
            in_class = False
        if char == "&" and in_class and pattern[i + 1:i + 2] == "&":
            raise ConfigError("pre-tokenizer regex: class intersection (&&) is not supported")
        out.append(char)
        i += 1
    return "".join(out)
