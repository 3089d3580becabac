"""The pieces of multi-head attention: head split/concat, causal mask, row softmax.

A block states attention for one generic head h, ``softmax(mask(Q_h K_h^T / sqrt(d_head))) V_h``,
and concatenates the heads. The numpy meaning of ``SplitHeads`` is a reshape to
``[n_head, n, d_head]``, so the same printed expression runs all heads at once with no loop.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .base import MatrixOp, i, j, k, m, n, operator

head = sp.Symbol("h", integer=True, positive=True)
n_head = sp.Symbol("n_head", integer=True, positive=True)
d_head = sp.Symbol("d_head", integer=True, positive=True)


def softmax(s):  # [..., n, n] -> [..., n, n], over the last axis
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def causal_mask(s):  # [..., n, n]: position i attends to j <= i only
    future = np.triu(np.ones(s.shape[-2:], dtype=bool), k=1)
    return np.where(future, -np.inf, s)


def split_heads(x, n_head):  # [n, n_head * d_head] -> [n_head, n, d_head]
    return x.reshape(x.shape[0], n_head, -1).swapaxes(0, 1)


def merge_heads(x):  # [n_head, n, d_head] -> [n, n_head * d_head]
    return x.swapaxes(0, 1).reshape(x.shape[1], -1)


class Softmax(MatrixOp):
    """Row-wise softmax: each row becomes a probability distribution."""

    numpy_functions = (softmax,)

    def _latex(self, printer):
        return operator(printer, "softmax", self.arg)

    def _numpycode(self, printer):
        return self._call(printer, "softmax", self.arg)

    @classmethod
    def definition(cls):
        S = MatrixSymbol("S", m, n)
        return [(cls(S)[i, j], sp.exp(S[i, j]) / sp.Sum(sp.exp(S[i, k]), (k, 1, n)))]


class CausalMask(MatrixOp):
    """Causal mask: position i sees positions j up to i; later scores become minus infinity."""

    numpy_functions = (causal_mask,)

    def _latex(self, printer):
        return operator(printer, "mask", self.arg)

    def _numpycode(self, printer):
        return self._call(printer, "causal_mask", self.arg)

    @classmethod
    def definition(cls):
        S = MatrixSymbol("S", n, n)
        return [(cls(S)[i, j], sp.Piecewise((S[i, j], sp.Le(j, i)), (-sp.oo, True)))]


class SplitHeads(MatrixOp):
    """Head h's block of columns: d_head columns starting after (h - 1) d_head."""

    numpy_functions = (split_heads,)

    @property
    def heads(self):
        return self.args[1]

    @property
    def shape(self):
        return (self.arg.shape[0], self.arg.shape[1] / self.heads)

    def _latex(self, printer):
        return rf"{{{printer._print(self.arg)}}}_{{{printer._print(head)}}}"

    def _numpycode(self, printer):
        return self._call(printer, "split_heads", self.arg, self.heads)

    @classmethod
    def definition(cls):
        X = MatrixSymbol("X", n, n_head * d_head)
        return [(cls(X, n_head)[i, j], X[i, (head - 1) * d_head + j])]


class MergeHeads(MatrixOp):
    """Concatenation of the heads' outputs side by side (the inverse of the head split)."""

    numpy_functions = (merge_heads,)

    @property
    def heads(self):
        return self.args[1]

    @property
    def shape(self):
        return (self.arg.shape[0], self.arg.shape[1] * self.heads)

    def _latex(self, printer):
        return (rf"\operatorname{{concat}}_{{{printer._print(head)}=1}}^{{{printer._print(self.heads)}}}"
                rf"\left({printer._print(self.arg)}\right)")

    def _numpycode(self, printer):
        return self._call(printer, "merge_heads", self.arg)

    @classmethod
    def definition(cls):
        Y = MatrixSymbol("Y", n, d_head)
        return [(cls(Y, n_head)[i, (head - 1) * d_head + j], SplitHeads(Y, 1)[i, j])]


def is_per_head(expr) -> bool:
    """True for an expression stated for one generic head h (it splits heads, does not merge)."""
    return expr.has(SplitHeads) and not isinstance(expr, MergeHeads)
