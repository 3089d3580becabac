"""ALiBi (attention with linear biases; BLOOM, MPT): no position embedding, each head's scores
get a bias linear in how far back the key is, m_h (j - i), with one slope per head,
m_h = 2^(-8 h / n_head) (the paper's slopes for a power-of-two number of heads).

transformers adds m_h j (BLOOM) or m_h (j - n_ctx + 1) (MPT): each differs from m_h (j - i) by
a constant per row of scores, which the softmax after it cancels; the tracer checks the table it
evaluates against that, to float32's precision."""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .attention import head, n_head
from .base import MatrixOp, add, i, j, m, mul, n, ops

slope = sp.IndexedBase("m")


def alibi_slopes(heads: int) -> np.ndarray:  # [heads]: 2^(-8/heads), 2^(-16/heads), ..., 2^(-8)
    return 2.0 ** (-8.0 * np.arange(1, heads + 1) / heads)


def alibi(s, n_head):  # [..., n_head, n, m] -> the same, plus m_h (j - i); the queries are the last n of m keys
    n, m = s.shape[-2:]
    behind = np.arange(m)[None, :] - np.arange(m - n, m)[:, None]  # [n, m]: j - i
    return s + (alibi_slopes(n_head)[:, None, None] * behind).astype(s.dtype)


class ALiBi(MatrixOp):
    """ALiBi: head h's score of key j for query i gains m_h (j - i), m_h = 2^(-8 h / n_head)."""

    summary_latex = (r"ALiBi: head $h$'s score of key $j$ for query $i$ gains $m_h (j - i)$, with the slope "
                     r"$m_h = 2^{-8h/n_{\mathrm{head}}}$.")
    numpy_functions = (alibi_slopes, alibi)

    @property
    def heads(self):
        return self.args[1]

    def _latex(self, printer):
        return rf"\operatorname{{ALiBi}}\left({printer._print(self.arg)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "alibi", self.arg, self.heads)

    def vjp(self, grad, output):
        """S̄ = G: the bias is a constant."""
        return [(self.arg, grad)]

    def explicit(self, ev):  # head ev.head's scores; the queries are the last rows of the keys
        scores, heads = ev.value(self.arg), int(ev.number(self.heads))
        m_h = sp.Float(alibi_slopes(heads)[ev.head], 17)
        offset = scores.cols - scores.rows
        return sp.Matrix(scores.rows, scores.cols,
                         lambda r, c: scores[r, c] if c == r + offset else add(scores[r, c], mul(m_h, c - r - offset)))

    def cost(self, ev):
        rows, cols = ev.size(self.arg)
        return ev.cost(self.arg) + ops(add=rows * cols)  # the bias m_h (j - i) is a table of constants

    @classmethod
    def definition(cls):
        S = MatrixSymbol("S", n, m)
        return [(cls(S, n_head)[i, j], S[i, j] + slope[head] * (j - i)),
                (slope[head], sp.Integer(2) ** (-8 * head / n_head))]


__all__ = ["ALiBi", "alibi_slopes"]
