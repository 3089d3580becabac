"""Sliding-window causal mask (Mistral, Qwen2): position i sees only the last w positions up to i.

transformers builds it as ``kv_idx > q_idx - sliding_window`` and ``kv_idx <= q_idx``.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .attention import kept_cost
from .base import MatrixOp, i, j, n

window = sp.Symbol("w", integer=True, positive=True)


def sliding_window_mask(s, window):  # [..., n, m]: query i (the last n of m) sees keys i - window < j <= i
    n, m = s.shape[-2:]
    behind = np.arange(m - n, m)[:, None] - np.arange(m)[None, :]  # i - j
    return np.where((behind < 0) | (behind >= window), -np.inf, s)


def _width(ev, window) -> int | float:
    """The window's value; infinite on a global layer of a model whose layers alternate (Gemma)."""
    value = ev.number(window)
    return math.inf if value == sp.oo else int(value)


class SlidingWindowMask(MatrixOp):
    """Sliding-window causal mask: position i sees positions j with i - w < j <= i."""

    summary_latex = r"Sliding-window causal mask: position $i$ sees positions $j$ with $i - w < j \le i$."

    numpy_functions = (sliding_window_mask,)

    @property
    def window(self):
        return self.args[1]

    def _latex(self, printer):
        return rf"\operatorname{{mask}}_{{{printer._print(self.window)}}}\left({printer._print(self.arg)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "sliding_window_mask", self.arg, self.window)

    def vjp(self, grad, output):
        """S̄ = G, as for the causal mask: the softmax after it gives masked scores a zero gradient."""
        return [(self.arg, grad)]

    def explicit(self, ev):  # scores outside the window are never computed: they are minus infinity
        scores, width = ev.value(self.arg), _width(ev, self.window)
        offset = scores.cols - scores.rows  # the queries are the last rows of the keys
        return sp.Matrix(scores.rows, scores.cols, lambda r, c: scores[r, c]
                         if 0 <= r + offset - c < width else -sp.oo)

    def kept(self, ev) -> int:  # the last rows of the keys are the queries
        rows, cols = ev.size(self)
        width = _width(ev, self.window)
        return sum(min(width, cols - rows + r + 1) for r in range(rows))

    def cost(self, ev):
        return kept_cost(self, ev)

    @classmethod
    def definition(cls):
        S = MatrixSymbol("S", n, n)
        visible = sp.And(sp.Le(j, i), sp.Gt(j, i - window))
        return [(cls(S, window)[i, j], sp.Piecewise((S[i, j], visible), (-sp.oo, True)))]
