"""The pieces of multi-head attention: head split/concat, causal mask, row softmax.

A block states attention for one generic head h, ``softmax(mask(Q_h K_h^T / sqrt(d_head))) V_h``,
and concatenates the heads. The numpy meaning of ``SplitHeads`` is a reshape to
``[n_head, n, d_head]``, so the same printed expression runs all heads at once with no loop.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .base import MatrixOp, add, i, j, k, m, mul, n, operator, ops, subscripted

head = sp.Symbol("h", integer=True, positive=True)
n_head = sp.Symbol("n_head", integer=True, positive=True)
d_head = sp.Symbol("d_head", integer=True, positive=True)


def softmax(s):  # [..., n, m] -> [..., n, m], over the last axis (m keys)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def causal_mask(s):  # [..., n, m]: query i (the last n of m positions) attends to keys j <= i
    n, m = s.shape[-2:]
    future = np.arange(m) > np.arange(m - n, m)[:, None]  # [n, m]: key j comes after query i
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

    def explicit(self, ev):  # masked (-oo) entries have probability 0 and cost nothing
        scores = ev.value(self.arg)
        out = sp.zeros(scores.rows, scores.cols)
        for r in range(scores.rows):
            visible = [c for c in range(scores.cols) if scores[r, c] != -sp.oo]
            exps = {c: ev.name("e", sp.exp(scores[r, c], evaluate=False), r, c) for c in visible}
            total = ev.name("D", add(*exps.values()), r)
            for c in visible:
                out[r, c] = mul(exps[c], sp.Pow(total, -1, evaluate=False))
        return out

    def cost(self, ev):
        rows, cols = ev.size(self.arg)
        visible = self.arg.kept(ev) if hasattr(self.arg, "kept") else rows * cols
        return ev.cost(self.arg) + ops(exp=visible, add=visible - rows, div=visible)

    @classmethod
    def definition(cls):
        S = MatrixSymbol("S", m, n)
        return [(cls(S)[i, j], sp.exp(S[i, j]) / sp.Sum(sp.exp(S[i, k]), (k, 1, n)))]


class CausalMask(MatrixOp):
    """Causal mask: position i sees positions j up to i; later scores become minus infinity."""

    summary_latex = r"Causal mask: position $i$ sees positions $j$ up to $i$; later scores become $-\infty$."

    numpy_functions = (causal_mask,)

    def _latex(self, printer):
        return operator(printer, "mask", self.arg)

    def _numpycode(self, printer):
        return self._call(printer, "causal_mask", self.arg)

    @staticmethod
    def visible(rows: int, cols: int) -> int:
        """How many (i, j) with j <= i: the entries the mask keeps (row i keeps min(cols, i + 1))."""
        full = min(rows, cols)  # rows 0 .. full-1 keep 1 .. full entries; later rows keep all cols
        return full * (full + 1) // 2 + (rows - full) * cols

    def explicit(self, ev):
        scores = ev.value(self.arg)
        return sp.Matrix(scores.rows, scores.cols, lambda r, c: scores[r, c] if c <= r else -sp.oo)

    def kept(self, ev) -> int:
        return self.visible(*ev.size(self))

    def cost(self, ev):
        return kept_cost(self, ev)

    @classmethod
    def definition(cls):
        S = MatrixSymbol("S", n, n)
        return [(cls(S)[i, j], sp.Piecewise((S[i, j], sp.Le(j, i)), (-sp.oo, True)))]


class SplitHeads(MatrixOp):
    """Head h's block of columns: d_head columns starting after (h - 1) d_head."""

    summary_latex = r"Head $h$'s block of columns: $d_{\mathrm{head}}$ columns starting after $(h - 1)\, d_{\mathrm{head}}$."

    numpy_functions = (split_heads,)

    @property
    def heads(self):
        return self.args[1]

    @property
    def shape(self):
        return (self.arg.shape[0], self.arg.shape[1] / self.heads)

    def _latex(self, printer):
        return subscripted(printer, self.arg, head)

    def _numpycode(self, printer):
        return self._call(printer, "split_heads", self.arg, self.heads)

    def explicit(self, ev):
        width = ev.size(self)[1]
        return ev.value(self.arg)[:, ev.head * width:(ev.head + 1) * width]

    def cost(self, ev):
        if not isinstance(self.arg, MatrixSymbol):
            raise NotImplementedError("heads are split from named matrices only")
        return ops()

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

    def explicit(self, ev):
        return sp.Matrix.hstack(*ev.each_head(self.arg))

    def cost(self, ev):
        return ev.cost(self.arg) * ev.number(self.heads)

    @classmethod
    def definition(cls):
        Y = MatrixSymbol("Y", n, d_head)
        return [(cls(Y, n_head)[i, (head - 1) * d_head + j], SplitHeads(Y, 1)[i, j])]


def kept_cost(mask, ev):
    """A mask's cost: masked scores are never computed, so only the kept ones count."""
    rows, cols = ev.size(mask.arg)
    return ops(**{kind: count * mask.kept(ev) // (rows * cols) for kind, count in ev.cost(mask.arg).items()})


def is_per_head(expr) -> bool:
    """True for an expression stated for one generic head h (it splits heads, does not merge)."""
    return expr.has(SplitHeads) and not isinstance(expr, MergeHeads)


def padding_mask(s, mask):  # [..., n, n] with mask [1, n]: key j is seen only where mask_j = 1
    return np.where(mask > 0, s, -np.inf)


class PaddingMask(MatrixOp):
    """Padding mask: no position attends to a padded key j (mask m_j = 0); its score becomes minus infinity."""

    summary_latex = r"Padding mask: no position attends to a padded key $j$ (mask $m_j = 0$); its score becomes $-\infty$."

    numpy_functions = (padding_mask,)

    @property
    def mask(self):
        return self.args[1]

    def _latex(self, printer):
        return rf"\operatorname{{mask}}_{{{printer._print(self.mask)}}}\left({printer._print(self.arg)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "padding_mask", self.arg, self.mask)

    def explicit(self, ev):
        """Scores of padded keys become minus infinity; the mask is known (``Program.input_defaults``)."""
        scores, mask = ev.value(self.arg), ev.value(self.mask)
        if not all(entry.is_Integer for entry in mask):
            raise NotImplementedError("a padding mask is expanded for a known mask only")
        return sp.Matrix(scores.rows, scores.cols, lambda r, c: scores[r, c] if mask[0, c] != 0 else -sp.oo)

    def cost(self, ev):  # counted for an input without padding: every score is kept, none is changed
        return ev.cost(self.arg)

    @classmethod
    def definition(cls):
        S, mask = MatrixSymbol("S", n, n), MatrixSymbol("m", 1, n)
        return [(cls(S, mask)[i, j], sp.Piecewise((S[i, j], sp.Eq(sp.IndexedBase("m")[j], 1)), (-sp.oo, True)))]
