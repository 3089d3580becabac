"""RMSNorm of each head on its own (Qwen3's, Gemma3's q_norm and k_norm): the d_head features of a
head are divided by their root mean square, then scaled by a gain shared by all heads."""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .attention import d_head, head
from .base import MatrixOp, i, j, k, n, operator
from .norm import epsilon, rms_norm


def head_rms_norm(x, gamma, eps, d_head):  # [n, heads * d_head] -> the same, each head normalised alone
    return rms_norm(x.reshape(x.shape[0], -1, d_head), gamma, eps).reshape(x.shape)


class HeadRMSNorm(MatrixOp):
    """RMSNorm over each head's d_head features (not over the whole row), with a gain [1, d_head]."""

    numpy_functions = (rms_norm, head_rms_norm)

    def _latex(self, printer):
        x, gamma = printer._print(self.arg), printer._print(self.args[1])
        return rf"\operatorname{{RMSNorm}}_{{{printer._print(head)}}}\left({x};\, {gamma}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "head_rms_norm", *self.args)

    @classmethod
    def definition(cls):  # column j of head h is column (h - 1) d_head + j of the row
        X = MatrixSymbol("X", n, d_head)
        gamma = sp.IndexedBase("gamma")[j]
        normed = cls(X, MatrixSymbol("gamma", 1, d_head), epsilon, d_head)
        return [(normed[i, j], gamma * X[i, j] / sp.sqrt(sp.Sum(X[i, k] ** 2, (k, 1, d_head)) / d_head + epsilon))]
