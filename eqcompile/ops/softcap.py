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


def soft_cap_grad(x, c, g):  # [..]: the VJP of soft_cap for x, G (1 - tanh^2(x / c))
    return g * (1 - np.tanh(x / c) ** 2)


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

    def vjp(self, grad, output):
        """X̄ = G ⊙ (1 − tanh²(X / c)): the derivative of c tanh(x / c)."""
        return [(self.arg, SoftCapGrad(self.arg, self.cap, grad))]

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


class SoftCapGrad(MatrixOp):
    """Soft-capping's VJP: G times the derivative 1 - tanh^2(x / c), entry by entry."""

    summary_latex = r"Soft-capping's VJP: $G \odot (1 - \tanh^2(X / c))$, entry by entry."
    numpy_functions = (soft_cap_grad,)

    def _latex(self, printer):
        x, c, g = (printer._print(a) for a in self.args)
        return rf"{g} \odot \left(1 - \tanh^{{2}}\left({x} / {c}\right)\right)"

    def _numpycode(self, printer):
        return self._call(printer, "soft_cap_grad", *self.args)

    def cost(self, ev):  # per entry: a division, tanh, a square, a subtraction and the product with G
        rows, cols = ev.size(self.arg)
        return ev.cost(self.args[2]) + ops(div=rows * cols, tanh=rows * cols, mul=2 * rows * cols,
                                           add=rows * cols, neg=rows * cols)


class UnitOffset(MatrixOp):
    """A gain stored as its offset from 1: the norm multiplies by 1 + γ (Gemma's RMSNorm)."""

    summary_latex = r"A gain stored as its offset from 1: the norm multiplies by $1 + \gamma$ (Gemma's RMSNorm)."
    numpy_functions = (unit_offset,)

    def _latex(self, printer):
        return rf"\left(1 + {printer._print(self.arg)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "unit_offset", self.arg)

    def vjp(self, grad, output):
        """γ̄ = G: the offset's derivative is 1."""
        return [(self.arg, grad)]

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
