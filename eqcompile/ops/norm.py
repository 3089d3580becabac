"""Normalisations over the feature axis: LayerNorm and RMSNorm, with their gains."""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .base import MatrixOp, i, j, k, m, n

epsilon = sp.Symbol("epsilon", positive=True)


def layer_norm(x, gamma, beta, eps):  # [n, d] -> [n, d]
    mu = x.mean(axis=-1, keepdims=True)
    centred = x - mu
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + eps) * gamma + beta


def rms_norm(x, gamma, eps):  # [n, d] -> [n, d]
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * gamma


class LayerNorm(MatrixOp):
    """LayerNorm: normalise each row (epsilon inside the root), then apply gain and shift."""

    numpy_functions = (layer_norm,)

    def _latex(self, printer):
        x, gamma, beta, _ = self.args
        return rf"\operatorname{{LN}}\left({printer._print(x)};\, {printer._print(gamma)}, {printer._print(beta)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "layer_norm", *self.args)

    @classmethod
    def definition(cls):
        X = MatrixSymbol("X", n, m)
        mu, sigma = sp.IndexedBase("mu")[i], sp.IndexedBase("sigma")[i]
        gamma, beta = sp.IndexedBase("gamma")[j], sp.IndexedBase("beta")[j]
        ln = cls(X, MatrixSymbol("gamma", 1, m), MatrixSymbol("beta", 1, m), epsilon)
        return [
            (ln[i, j], sp.Add(gamma * sp.Add(X[i, j], -mu, evaluate=False) / sp.sqrt(sigma**2 + epsilon), beta,
                             evaluate=False)),
            (mu, sp.Sum(X[i, k], (k, 1, m)) / m),
            (sigma**2, sp.Sum(sp.Add(X[i, k], -mu, evaluate=False) ** 2, (k, 1, m)) / m),
        ]


class RMSNorm(MatrixOp):
    """RMSNorm: divide each row by its root mean square (epsilon inside), then apply the gain."""

    numpy_functions = (rms_norm,)

    def _latex(self, printer):
        x, gamma, _ = self.args
        return rf"\operatorname{{RMSNorm}}\left({printer._print(x)};\, {printer._print(gamma)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "rms_norm", *self.args)

    @classmethod
    def definition(cls):
        X = MatrixSymbol("X", n, m)
        gamma = sp.IndexedBase("gamma")[j]
        rms = cls(X, MatrixSymbol("gamma", 1, m), epsilon)
        return [(rms[i, j], gamma * X[i, j] / sp.sqrt(sp.Sum(X[i, k] ** 2, (k, 1, m)) / m + epsilon))]


__all__ = ["LayerNorm", "RMSNorm", "epsilon"]
