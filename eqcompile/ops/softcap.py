"""Gemma-2's two elementwise pieces: soft-capping (scores and logits squashed smoothly into (-c, c)
by c tanh(x / c)) and the norm gain stored as its offset from 1 (the gain is 1 + γ)."""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .base import MatrixOp, add, i, j, m, mul, n, ops

cap = sp.Symbol("c", positive=True)  # in the definition
attention_cap = sp.Symbol("c_attn", positive=True)  # Gemma-2's attn_logit_softcapping
final_cap = sp.Symbol("c_final", positive=True)  # its final_logit_softcapping
CAP_LATEX = {attention_cap: r"c_{\mathrm{attn}}", final_cap: r"c_{\mathrm{final}}"}


def soft_cap(x, c):  # [..] -> [..] within (-c, c)
    return c * np.tanh(x / c)


def unit_offset(gamma):  # [1, d]: the gain 1 + γ
    return 1 + gamma


class SoftCap(MatrixOp):
    """Soft-capping: each entry x becomes c tanh(x / c), which stays within (-c, c)."""

    summary_latex = r"Soft-capping: each entry $x$ becomes $c \tanh(x / c)$, which stays within $(-c, c)$."
    numpy_functions = (soft_cap,)

    @property
    def cap(self):
        return self.args[1]

    def _latex(self, printer):
        return rf"\operatorname{{cap}}_{{{printer._print(self.cap)}}}\left({printer._print(self.arg)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "soft_cap", self.arg, self.cap)

    def explicit(self, ev):
        x, c = ev.value(self.arg), ev.number(self.cap)
        return x.applyfunc(lambda e: mul(c, sp.tanh(mul(e, sp.Pow(c, -1, evaluate=False)), evaluate=False)))

    def cost(self, ev):
        rows, cols = ev.size(self.arg)
        return ev.cost(self.arg) + ops(mul=rows * cols, div=rows * cols, tanh=rows * cols)

    @classmethod
    def definition(cls):
        S = MatrixSymbol("S", n, m)
        return [(cls(S, cap)[i, j], cap * sp.tanh(S[i, j] / cap))]


class UnitOffset(MatrixOp):
    """A gain stored as its offset from 1: the norm multiplies by 1 + γ (Gemma's RMSNorm)."""

    summary_latex = r"A gain stored as its offset from 1: the norm multiplies by $1 + \gamma$ (Gemma's RMSNorm)."
    numpy_functions = (unit_offset,)

    def _latex(self, printer):
        return rf"\left(1 + {printer._print(self.arg)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "unit_offset", self.arg)

    def explicit(self, ev):
        return ev.value(self.arg).applyfunc(lambda e: add(sp.Integer(1), e))

    def cost(self, ev):
        rows, cols = ev.size(self.arg)
        return ev.cost(self.arg) + ops(add=rows * cols)

    @classmethod
    def definition(cls):
        gamma = MatrixSymbol("gamma", 1, m)
        return [(cls(gamma)[0, j], 1 + gamma[0, j])]


__all__ = ["SoftCap", "UnitOffset", "attention_cap", "final_cap"]
