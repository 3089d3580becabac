"""Escaping of untrusted strings (tensor names, config values, paths) for TeX and for a terminal."""

from __future__ import annotations


_TEX_SPECIALS = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
    "^": r"\^{}", "_": r"\_", "~": r"\textasciitilde{}", "%": r"\%", "<": r"\textless{}",
    ">": r"\textgreater{}", "|": r"\textbar{}", '"': r"{\char34}",
}


def tex_escape(text: str) -> str:
    """Text mode TeX for any string: specials escaped, control and non-ASCII characters spelled."""
    out = []
    for ch in str(text):
        if ch in _TEX_SPECIALS:
            out.append(_TEX_SPECIALS[ch])
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"[U+{ord(ch):04X}]")
    return "".join(out)


_CODE_SEPARATORS = frozenset("./_-:, ")
_CODE_RUN = 12  # the longest run of characters kept unbroken when a name has no separator


def tex_code(text: str) -> str:
    r"""Any string in ``\texttt``, character for character, with places to break a long line.

    TeX's specials are typeset as the typewriter font's own ASCII glyphs (``{\char95}`` is a real
    ``_``, so a PDF's text layer holds the name as it is, unlike ``\_``). A line may break between a
    run of separators (``.``, ``_``, ``/``, ...) and what follows, before ``[``, and inside any run of
    more than twelve other characters, so a tensor name never runs into the margin.
    """
    out, run, previous = [], 0, ""
    for ch in str(text):
        after_separator = previous in _CODE_SEPARATORS and ch not in _CODE_SEPARATORS
        if previous and (ch == "[" or after_separator or run == _CODE_RUN):
            out.append(r"\allowbreak{}")
            run = 0
        if ch == " ":
            out.append(r"\ ")
        elif " " < ch <= "~":
            out.append(f"{{\\char{ord(ch)}}}" if ch in _TEX_SPECIALS else ch)
        else:
            out.append(f"[U+{ord(ch):04X}]")
        run = 0 if ch in _CODE_SEPARATORS else run + 1
        previous = ch
    return r"\texttt{" + "".join(out) + "}"


# C0 and C1 controls, DEL, line/paragraph separators, bidirectional overrides, lone surrogates
