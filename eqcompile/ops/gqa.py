"""Grouped-query attention: several query heads share one key/value head.

With n_kv_head key/value heads for n_head query heads, query head h reads key/value head
g(h) = ⌈h / (n_head / n_kv_head)⌉ (transformers' ``repeat_kv``). The numpy meaning repeats each
key/value head for its group, so attention still runs all query heads at once.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .attention import d_head, head, n_head, split_heads
from .base import MatrixOp, i, j, n, ops, subscripted

n_kv_head = sp.Symbol("n_kv_head", integer=True, positive=True)
group = sp.Function("g")  # the key/value head that query head h reads


def grouped_heads(x, n_kv_head, n_head):  # [n, n_kv_head * d_head] -> [n_head, n, d_head]
    return np.repeat(split_heads(x, n_kv_head), n_head // n_kv_head, axis=0)


class GroupedHeads(MatrixOp):
    """Key/value head g(h) of query head h: the d_head columns of its group."""

    summary_latex = r"Key/value head $g(h)$ of query head $h$: the $d_{\mathrm{head}}$ columns of its group."

    numpy_functions = (split_heads, grouped_heads)

    @property
    def kv_heads(self):
        return self.args[1]

    @property
    def heads(self):
        return self.args[2]

    @property
    def shape(self):
        return (self.arg.shape[0], self.arg.shape[1] / self.kv_heads)

    def _latex(self, printer):
        return subscripted(printer, self.arg, group(head))

    def _numpycode(self, printer):
        return self._call(printer, "grouped_heads", *self.args)

    def vjp(self, grad, output):
        """X̄ = the gradients of the query heads that share each key/value head, summed."""
        from .backward import GroupSum

        return [(self.arg, GroupSum(grad, self.kv_heads, self.heads))]

    def explicit(self, ev):  # the columns of key/value head g(h) (0-based: h // group size)
        width = ev.size(self)[1]
        kv = ev.head // (int(ev.number(self.heads)) // int(ev.number(self.kv_heads)))
        return ev.value(self.arg)[:, kv * width:(kv + 1) * width]

    def cost(self, ev):  # re-indexing only
        if not isinstance(self.arg, MatrixSymbol):
            raise NotImplementedError("heads are grouped from named matrices only")
        return ops()

    @classmethod
    def definition(cls):
        X = MatrixSymbol("X", n, n_kv_head * d_head)
        return [(cls(X, n_kv_head, n_head)[i, j], X[i, (group(head) - 1) * d_head + j]),
                (group(head), sp.ceiling(head / sp.Mul(n_head, 1 / n_kv_head, evaluate=False)))]
