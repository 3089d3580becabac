"""Embedding row lookup, leading rows of a table, and affine maps."""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol
from sympy.printing.precedence import PRECEDENCE

from .base import MatrixOp, i, j, k, m, matmul, n, ops, p


class Embed(MatrixOp):
    """Row lookup: row i of W[t] is row t_i of the table W (a one-hot vector times W)."""

    summary_latex = r"Row lookup: row $i$ of $W[t]$ is row $t_i$ of the table $W$ (a one-hot vector times $W$)."

    @property
    def table(self):
        return self.args[0]

    @property
    def tokens(self):
        return self.args[1]

    @property
    def shape(self):
        return (self.tokens.shape[0], self.table.shape[1])

    def _latex(self, printer):
        return rf"{printer._print(self.table)}\left[{printer._print(self.tokens)}\right]"

    def _numpycode(self, printer):
        return f"{printer._print(self.table)}[{printer._print(self.tokens)}]"

    def vjp(self, grad, output):
        """W̄ = onehot(t)ᵀ G: each row of G added to the table row it looked up (the ids get none)."""
        from .backward import ScatterAdd

        return [(self.table, ScatterAdd(grad, self.tokens, self.table.shape[0]))]

    def explicit(self, ev):
        """Known ids (positions) select rows; unknown tokens are one-hot rows [n, n_vocab] times W."""
        index, table = ev.value(self.tokens), ev.value(self.table)
        if index.cols == 1 and all(entry.is_Integer for entry in index):
            return sp.Matrix([list(table.row(int(entry))) for entry in index])
        return matmul(index, table)

    def cost(self, ev):
        if ev.is_known(self.tokens):  # a lookup at known rows is no arithmetic
            return ops()
        rows, vocab = ev.size(self.tokens)[0], ev.size(self.table)[0]
        return ops(mul=vocab, add=vocab - 1) * (rows * ev.size(self)[1])  # one-hot row times W

    @classmethod
    def definition(cls):
        W, t = MatrixSymbol("W", m, n), MatrixSymbol("t", n, 1)
        token = sp.IndexedBase("t")[i]
        return [(cls(W, t)[i, j], W[token, j])]


class FirstRows(MatrixOp):
    """The first n rows of a table: the position embeddings of positions 1 to n."""

    summary_latex = r"The first $n$ rows of a table: the position embeddings of positions $1$ to $n$."

    @property
    def table(self):
        return self.args[0]

    @property
    def count(self):
        return self.args[1]

    @property
    def shape(self):
        return (self.count, self.table.shape[1])

    def _latex(self, printer):
        return rf"{printer._print(self.table)}\left[1{{:}}{printer._print(self.count)}\right]"

    def _numpycode(self, printer):
        return f"{printer._print(self.table)}[:{printer._print(self.count)}]"

    def explicit(self, ev):
        return ev.value(self.table)[:ev.number(self.count), :]

    def cost(self, ev):
        return ops()

    @classmethod
    def definition(cls):
        W = MatrixSymbol("W", m, n)
        return [(cls(W, n)[i, j], W[i, j])]


class Linear(MatrixOp):
    """Affine map X W + 1 b: the row vector b is added to every row (no b: X W)."""

    summary_latex = r"Affine map $X W + \mathbf{1} b$: the row vector $b$ is added to every row (no $b$: $X W$)."

    @property
    def weight(self):
        return self.args[1]

    @property
    def bias(self):
        return self.args[2] if len(self.args) > 2 else None

    @property
    def shape(self):
        return (self.arg.shape[0], self.weight.shape[1])

    @property
    def precedence(self):
        """How tightly it binds when printed inside other expressions: a sum with a bias, else a product."""
        return PRECEDENCE["Add"] if self.bias is not None else PRECEDENCE["Mul"]

    def _latex(self, printer):
        product = printer._print(sp.MatMul(self.arg, self.weight))
        if self.bias is None:
            return product
        return rf"{product} + \mathbf{{1}} {printer._print(self.bias)}"

    def _numpycode(self, printer):
        product = f"{printer._print(self.arg)} @ {printer._print(self.weight)}"
        return product if self.bias is None else f"{product} + {printer._print(self.bias)}"

    def vjp(self, grad, output):
        """X̄ = G Wᵀ, W̄ = Xᵀ G, b̄ = 1ᵀ G."""
        from .backward import ColumnSum

        pairs = [(self.arg, sp.MatMul(grad, self.weight.T)), (self.weight, sp.MatMul(self.arg.T, grad))]
        return pairs + ([] if self.bias is None else [(self.bias, ColumnSum(grad))])

    def explicit(self, ev):
        bias = None if self.bias is None else ev.value(self.bias)
        return matmul(ev.shared(self.arg), ev.value(self.weight), bias)

    def cost(self, ev):
        rows, inner = ev.size(self.arg)
        cols = ev.size(self.weight)[1]
        adds = inner if self.bias is not None else inner - 1
        return ev.cost(self.arg) + ev.cost(self.weight) + ops(mul=inner, add=adds) * (rows * cols)

    @classmethod
    def definition(cls):
        X, W, b = MatrixSymbol("X", n, m), MatrixSymbol("W", m, p), MatrixSymbol("b", 1, p)
        bias = sp.IndexedBase("b")[j]
        return [(cls(X, W, b)[i, j], sp.Add(sp.Sum(X[i, k] * W[k, j], (k, 1, m)), bias, evaluate=False))]

