"""Pooling of a sequence's hidden states into one vector (sentence-embedding models)."""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .base import MatrixOp, add, i, j, m, mul, n, ops


def mean_pool(x, mask):  # [n, d] with mask [1, n] -> [1, d]
    return (mask @ x) / mask.sum()


class MeanPool(MatrixOp):
    """Mean pooling: the average of the rows of X whose mask m_i is 1 (padding left out)."""

    summary_latex = r"Mean pooling: the average of the rows of $X$ whose mask $m_i$ is $1$ (padding left out)."

    numpy_functions = (mean_pool,)

    @property
    def mask(self):
        return self.args[1]

    @property
    def shape(self):
        return (1, self.arg.shape[1])

    def _latex(self, printer):
        mask = printer._print(self.mask)
        return rf"\frac{{{mask} {printer._print(self.arg)}}}{{{mask} \mathbf{{1}}}}"

    def _numpycode(self, printer):
        return self._call(printer, "mean_pool", self.arg, self.mask)

    def explicit(self, ev):
        """Column sums over the unpadded rows, each divided by their number (the mask is known)."""
        x, mask = ev.value(self.arg), ev.value(self.mask)
        if not all(entry in (0, 1) for entry in mask):
            raise NotImplementedError("mean pooling is expanded for a known 0/1 mask only")
        kept = [r for r in range(x.rows) if mask[0, r] == 1]
        count = sp.Pow(sp.Integer(len(kept)), -1, evaluate=False)
        return sp.Matrix(1, x.cols, lambda _, c: mul(add(*(x[r, c] for r in kept)), count))

    def cost(self, ev):  # counted for an input without padding (m = 1): column sums, one division each
        rows, cols = ev.size(self.arg)
        return ev.cost(self.arg) + ops(add=(rows - 1) * cols, div=cols)

    @classmethod
    def definition(cls):
        X, mask = MatrixSymbol("X", n, m), MatrixSymbol("m", 1, n)
        weight = sp.IndexedBase("m")[i]
        entry = sp.IndexedBase(cls(X, mask))[j]  # entry j of the row vector
        return [(entry, sp.Sum(weight * X[i, j], (i, 1, n)) / sp.Sum(weight, (i, 1, n)))]
