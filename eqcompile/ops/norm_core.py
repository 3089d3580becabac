"""The normalisations without their gains: what LayerNorm and RMSNorm leave once their gain (and
shift) are folded into the weights that read them (the circuit form, ``eqcompile.fold``)."""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .base import MatrixOp, add, i, j, k, m, mul, n, neg, ops
from .norm import epsilon, row_moments, row_standardiser


def standardise(x, eps):  # [n, d] -> [n, d]
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + eps)


def rms_scale(x, eps):  # [n, d] -> [n, d]
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)


class Standardise(MatrixOp):
    """LayerNorm without gain and shift: subtract each row's mean, divide by its deviation (epsilon inside)."""

    summary_latex = (r"LayerNorm without gain and shift: subtract each row's mean, divide by its deviation "
                     r"($\varepsilon$ inside the root).")
    numpy_functions = (standardise,)

    def _latex(self, printer):
        return rf"\operatorname{{norm}}_{{\mathrm{{LN}}}}\left({printer._print(self.arg)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "standardise", *self.args)

    def explicit(self, ev):
        x, eps, width = ev.shared(self.arg), ev.number(self.args[1]), ev.size(self.arg)[1]
        out = sp.zeros(x.rows, width)
        for r in range(x.rows):
            mean, scale = row_standardiser(ev, x, r, eps)
            for c in range(width):
                out[r, c] = mul(add(x[r, c], neg(mean)), scale)
        return out

    def cost(self, ev):
        rows, width = ev.size(self.arg)
        return ev.cost(self.arg) + ops(add=4 * width - 1, mul=2 * width + 2, neg=2 * width, sqrt=1, div=1) * rows

    @classmethod
    def definition(cls):
        X = MatrixSymbol("X", n, m)
        mu, sigma, moments = row_moments(X)
        return [(cls(X, epsilon)[i, j], sp.Add(X[i, j], -mu, evaluate=False) / sp.sqrt(sigma**2 + epsilon)), *moments]


class RMSScale(MatrixOp):
    """RMSNorm without its gain: divide each row by its root mean square (epsilon inside)."""

    summary_latex = r"RMSNorm without its gain: divide each row by its root mean square ($\varepsilon$ inside)."
    numpy_functions = (rms_scale,)

    def _latex(self, printer):
        return rf"\operatorname{{norm}}_{{\mathrm{{RMS}}}}\left({printer._print(self.arg)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "rms_scale", *self.args)

    def explicit(self, ev):
        x, eps, width = ev.shared(self.arg), ev.number(self.args[1]), ev.size(self.arg)[1]
        out = sp.zeros(x.rows, width)
        for r in range(x.rows):
            mean_square = ev.name("ms", mul(sp.Rational(1, width),
                                            add(*(sp.Pow(e, 2, evaluate=False) for e in x.row(r)))), r)
            scale = ev.name("r", sp.Pow(add(mean_square, eps), sp.Rational(-1, 2), evaluate=False), r)
            for c in range(width):
                out[r, c] = mul(x[r, c], scale)
        return out

    def cost(self, ev):
        rows, width = ev.size(self.arg)
        return ev.cost(self.arg) + ops(mul=2 * width + 1, add=width, sqrt=1, div=1) * rows

    @classmethod
    def definition(cls):
        X = MatrixSymbol("X", n, m)
        return [(cls(X, epsilon)[i, j], X[i, j] / sp.sqrt(sp.Sum(X[i, k] ** 2, (k, 1, m)) / m + epsilon))]


__all__ = ["Standardise", "RMSScale"]
