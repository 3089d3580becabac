"""Escaping of untrusted strings (tensor names, config values, paths) for TeX."""

from __future__ import annotations

_TEX_SPECIALS = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
    "^": r"\^{}", "_": r"\_", "~": r"\textasciitilde{}", "%": r"\%", "<": r"\textless{}",
    ">": r"\textgreater{}", "|": r"\textbar{}", '"': r"\textquotedbl{}",
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
