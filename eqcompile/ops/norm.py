"""Normalisations over the feature axis: LayerNorm and RMSNorm, with their gains."""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .base import MatrixOp, add, i, j, k, m, mul, n, neg, ops

epsilon = sp.Symbol("epsilon", positive=True)


def layer_norm(x, gamma, beta, eps):  # [n, d] -> [n, d]
    mu = x.mean(axis=-1, keepdims=True)
    centred = x - mu
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + eps) * gamma + beta


def rms_norm(x, gamma, eps):  # [n, d] -> [n, d]
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * gamma


def row_moments(X):
    """(μ_i, σ_i, their definitions): each row's mean and its deviation, as LayerNorm states them."""
    mu, sigma = sp.IndexedBase("mu")[i], sp.IndexedBase("sigma")[i]
    return mu, sigma, [(mu, sp.Sum(X[i, k], (k, 1, m)) / m),
                       (sigma**2, sp.Sum(sp.Add(X[i, k], -mu, evaluate=False) ** 2, (k, 1, m)) / m)]


def row_standardiser(ev, x, r: int, eps):
    """(μ, 1/√(σ² + ε)) of row r, named as the literal expansion writes them (LayerNorm, Standardise)."""
    width = x.cols
    mean = ev.name("mu", mul(sp.Rational(1, width), add(*x.row(r))), r)
    centred = [add(x[r, c], neg(mean)) for c in range(width)]
    var = ev.name("var", mul(sp.Rational(1, width), add(*(sp.Pow(e, 2, evaluate=False) for e in centred))), r)
    return mean, ev.name("r", sp.Pow(add(var, eps), sp.Rational(-1, 2), evaluate=False), r)


class LayerNorm(MatrixOp):
    """LayerNorm: normalise each row (epsilon inside the root), then apply gain and shift."""

    summary_latex = r"LayerNorm: normalise each row ($\varepsilon$ inside the root), then apply gain and shift."

    numpy_functions = (layer_norm,)

    def _latex(self, printer):
        x, gamma, beta, _ = self.args
        return rf"\operatorname{{LN}}\left({printer._print(x)};\, {printer._print(gamma)}, {printer._print(beta)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "layer_norm", *self.args)

    def vjp(self, grad, output):
        """X̄, γ̄ by LayerNorm's Jacobian (``backward.py``); β̄ = 1ᵀ G."""
        from .backward import ColumnSum, LayerNormGainGrad, LayerNormGrad

        x, gamma, beta, eps = self.args
        shift = [(beta, ColumnSum(grad))] if beta.is_Matrix else []  # a LayerNorm without shift (MPT): 0
        return [(x, LayerNormGrad(x, gamma, eps, grad)), (gamma, LayerNormGainGrad(x, eps, grad)), *shift]

    def explicit(self, ev):
        x, gamma, eps = ev.shared(self.arg), ev.value(self.args[1]), ev.number(self.args[3])
        beta = ev.value(self.args[2]) if self.args[2].is_Matrix else None  # None: no shift (MPT's LN(X; γ, 0))
        width = x.cols
        out = sp.zeros(x.rows, width)
        for r in range(x.rows):
            mean, scale = row_standardiser(ev, x, r, eps)
            for c in range(width):
                scaled = mul(gamma[0, c], add(x[r, c], neg(mean)), scale)
                out[r, c] = scaled if beta is None else add(scaled, beta[0, c])
        return out

    def cost(self, ev):
        rows, width = ev.size(self.arg)
        shifts = width if self.args[2].is_Matrix else 0
        per_row = ops(add=4 * width + shifts - 1, mul=3 * width + 2, neg=2 * width, sqrt=1, div=1)
        return ev.cost(self.arg) + per_row * rows

    @classmethod
    def definition(cls):
        X = MatrixSymbol("X", n, m)
        mu, sigma, moments = row_moments(X)
        gamma, beta = sp.IndexedBase("gamma")[j], sp.IndexedBase("beta")[j]
        ln = cls(X, MatrixSymbol("gamma", 1, m), MatrixSymbol("beta", 1, m), epsilon)
        return [
            (ln[i, j], sp.Add(gamma * sp.Add(X[i, j], -mu, evaluate=False) / sp.sqrt(sigma**2 + epsilon), beta,
                             evaluate=False)),
            *moments,
        ]


class RMSNorm(MatrixOp):
    """RMSNorm: divide each row by its root mean square (epsilon inside), then apply the gain."""

    summary_latex = r"RMSNorm: divide each row by its root mean square ($\varepsilon$ inside), then apply the gain."

    numpy_functions = (rms_norm,)

    def _latex(self, printer):
        x, gamma, _ = self.args
        return rf"\operatorname{{RMSNorm}}\left({printer._print(x)};\, {printer._print(gamma)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "rms_norm", *self.args)

    def vjp(self, grad, output):
        """X̄, γ̄ by RMSNorm's Jacobian (``backward.py``)."""
        from .backward import RMSNormGainGrad, RMSNormGrad

        x, gamma, eps = self.args
        return [(x, RMSNormGrad(x, gamma, eps, grad)), (gamma, RMSNormGainGrad(x, eps, grad))]

    def explicit(self, ev):
        x, gamma, eps = ev.shared(self.arg), ev.value(self.args[1]), ev.number(self.args[2])
        width = x.cols
        out = sp.zeros(x.rows, width)
        for r in range(x.rows):
            mean_square = ev.name("ms", mul(sp.Rational(1, width), add(*(sp.Pow(e, 2, evaluate=False) for e in x.row(r)))), r)
            scale = ev.name("r", sp.Pow(add(mean_square, eps), sp.Rational(-1, 2), evaluate=False), r)
            for c in range(width):
                out[r, c] = mul(gamma[0, c], x[r, c], scale)
        return out

    def cost(self, ev):
        rows, width = ev.size(self.arg)
        # a computed gain (1 + γ) is written out in every row
        return ev.cost(self.arg) + (ops(mul=3 * width + 1, add=width, sqrt=1, div=1) + ev.cost(self.args[1])) * rows

    @classmethod
    def definition(cls):
        X = MatrixSymbol("X", n, m)
        gamma = sp.IndexedBase("gamma")[j]
        rms = cls(X, MatrixSymbol("gamma", 1, m), epsilon)
        return [(rms[i, j], gamma * X[i, j] / sp.sqrt(sp.Sum(X[i, k] ** 2, (k, 1, m)) / m + epsilon))]


__all__ = ["LayerNorm", "RMSNorm", "epsilon"]
