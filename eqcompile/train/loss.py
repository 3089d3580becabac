"""The losses, as ops: next-token cross-entropy (what transformers computes with ``labels=input_ids``)
and the mean squared error (torch's ``MSELoss``), each with its LaTeX, numpy and VJP."""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..ops.attention import softmax
from ..ops.base import MatrixOp, ops


def cross_entropy(z, t):  # logits [n, n_vocab], tokens [n] -> the mean of -log softmax(z_i)[t_{i+1}], i < n
    s = z[:-1] - z[:-1].max(axis=-1, keepdims=True)
    log_p = s - np.log(np.exp(s).sum(axis=-1, keepdims=True))
    return -log_p[np.arange(t.shape[0] - 1), t[1:]].mean()


def cross_entropy_grad(z, t):  # [n, n_vocab]: (softmax(z_i) - onehot(t_{i+1})) / (n - 1); the last row 0
    g = np.zeros_like(z)
    g[:-1] = softmax(z[:-1])
    g[np.arange(t.shape[0] - 1), t[1:]] -= 1
    return g / (t.shape[0] - 1)


def mean_squared_error(y, y_target):  # [d, 1] x 2 -> the mean of the squared differences
    return ((y - y_target) ** 2).mean()


class CrossEntropyGrad(MatrixOp):
    """Cross-entropy's gradient in the logits: row i < n is (softmax(Z_i) − onehot(t_{i+1})) / (n − 1), row n is 0."""

    summary_latex = (r"Cross-entropy's gradient in the logits: row $i < n$ is $(\operatorname{softmax}(Z_i) - "
                     r"\operatorname{onehot}(t_{i+1})) / (n - 1)$, row $n$ is $0$.")
    numpy_functions = (softmax, cross_entropy_grad)

    def _latex(self, printer):
        z, t = (printer._print(x) for x in self.args)
        return (rf"\frac{{1}}{{n - 1}} \begin{{bmatrix}} \operatorname{{softmax}}\left({z}_{{1:n-1}}\right) - "
                rf"\operatorname{{onehot}}\left({t}_{{2:n}}\right) \\ \mathbf{{0}} \end{{bmatrix}}")

    def _numpycode(self, printer):
        return self._call(printer, "cross_entropy_grad", *self.args)

    def cost(self, ev):  # softmax of n - 1 rows, one subtraction per row, the division by n - 1
        rows, vocab = ev.size(self)
        predicted = (rows - 1) * vocab
        return ops(exp=predicted, add=predicted - (rows - 1) + (rows - 1), div=predicted, neg=rows - 1,
                   mul=predicted)


class NextTokenCrossEntropy(MatrixOp):
    """The mean over positions i < n of −log softmax(Z_i) at the next token t_{i+1}."""

    summary_latex = (r"Next-token cross-entropy: the mean over positions $i < n$ of $-\log \operatorname{softmax}"
                     r"(Z_i)_{t_{i+1}}$.")
    numpy_functions = (cross_entropy,)

    @property
    def shape(self):
        return (sp.Integer(1), sp.Integer(1))

    def _latex(self, printer):
        z, t = (printer._print(x) for x in self.args)
        return (rf"-\frac{{1}}{{n - 1}} \sum_{{i=1}}^{{n-1}} \log \operatorname{{softmax}}\left({z}_{{i}}\right)"
                rf"_{{{t}_{{i+1}}}}")

    def _numpycode(self, printer):
        return self._call(printer, "cross_entropy", *self.args)

    def vjp(self, grad, output):
        return [(self.arg, CrossEntropyGrad(*self.args))]  # grad is 1: L is the output


class MeanSquaredError(MatrixOp):
    """The mean of the squared differences between the output y and the target y*."""

    summary_latex = r"Mean squared error: the mean of $(y_k - y^{*}_k)^2$ over the output's entries."
    numpy_functions = (mean_squared_error,)

    @property
    def shape(self):
        return (sp.Integer(1), sp.Integer(1))

    def _latex(self, printer):
        y, target = (printer._print(x) for x in self.args)
        rows = printer._print(self.arg.shape[0])
        return rf"\frac{{1}}{{{rows}}} \left\lVert {y} - {target} \right\rVert^{{2}}"

    def _numpycode(self, printer):
        return self._call(printer, "mean_squared_error", *self.args)

    def vjp(self, grad, output):  # ȳ = 2 (y − y*) / d: sympy's own sum and scalar product
        y, target = self.args
        size = y.shape[0] * y.shape[1]
        return [(y, sp.MatMul(2 / size, sp.MatAdd(y, sp.MatMul(-1, target), evaluate=False)))]


LOSS_OPS = (NextTokenCrossEntropy, CrossEntropyGrad, MeanSquaredError)
