"""The one way a number is written in LaTeX: dimensions, statistics and a diff's measurements."""

from __future__ import annotations

import math


def latex_number(value, digits: int = 3, positional: tuple[int, int] = (-3, 6), trim: bool = False) -> str:
    r"""``value`` as math: an integer as it is; a float to ``digits`` significant digits, written out
    when its power of ten (after rounding) lies in ``positional`` and as ``m \times 10^{e}`` otherwise.

    ``trim`` drops trailing zeros (``1.50`` -> ``1.5``), as Python's ``g`` format does: with
    ``digits=6, positional=(-4, 6), trim=True`` the result is ``f"{value:.6g}"`` typeset.
    """
    if value is None:
        return r"\text{--}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not math.isfinite(value):
        return r"\mathrm{NaN}" if math.isnan(value) else (r"\infty" if value > 0 else r"-\infty")
    if value == 0:
        return "0"
    mantissa, _, power = f"{value:.{digits - 1}e}".partition("e")
    exponent = int(power)
    if positional[0] <= exponent < positional[1]:
        text = f"{value:.{max(digits - 1 - exponent, 0)}f}"
        return _trimmed(text) if trim else text
    return rf"{_trimmed(mantissa) if trim else mantissa} \times 10^{{{exponent}}}"


def _trimmed(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text
