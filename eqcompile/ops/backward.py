"""The ops that only the backward pass uses: each forward op's ``vjp`` states its vector-Jacobian
product with these (and with sympy's own products, sums and transposes).

They follow the recipe of ``base.py``: LaTeX, numpy and a one-line statement of what they mean
(``summary_latex``) on one class. An activation's derivative is not written here at all: it is
``sympy.diff`` of the scalar definition the LaTeX prints, printed by the NumPy printer.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from .activation import ActivationDerivative
from .base import MatrixOp, operator, ops
from .softcap import SoftCapGrad


def head_rms_norm_grad(x, gamma, eps, d_head, g):  # [n, heads * d_head]: rms_norm_grad within each head
    return rms_norm_grad(x.reshape(-1, d_head), gamma, eps, g.reshape(-1, d_head)).reshape(x.shape)


def head_rms_norm_gain_grad(x, eps, d_head, g):  # [1, d_head]: rms_norm_gain_grad over every row of every head
    return rms_norm_gain_grad(x.reshape(-1, d_head), eps, g.reshape(-1, d_head))


def softmax_grad(a, g):  # [..., n, m]: the VJP of a = softmax(s) over the last axis
    return a * (g - (g * a).sum(axis=-1, keepdims=True))


def column_sum(g):  # [n, d] -> [1, d]: 1ᵀ G
    return g.sum(axis=0, keepdims=True)


def scatter_add(g, ids, rows):  # [n, d] -> [rows, d]: row i of g added to row ids_i
    out = np.zeros((rows, g.shape[-1]), dtype=g.dtype)
    np.add.at(out, np.asarray(ids).reshape(-1), g)
    return out


def group_sum(g, n_kv_head):  # [n_head, n, d_head] -> [n, n_kv_head * d_head]: each group's heads summed
    summed = g.reshape(n_kv_head, -1, *g.shape[1:]).sum(axis=1)  # [n_kv_head, n, d_head]
    return summed.swapaxes(0, 1).reshape(summed.shape[1], -1)


def layer_norm_grad(x, gamma, eps, g):  # [n, d]: the VJP of layer_norm for x
    centred = x - x.mean(axis=-1, keepdims=True)
    r = 1.0 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + eps)
    normed, g_normed = centred * r, g * gamma
    return r * (g_normed - g_normed.mean(axis=-1, keepdims=True)
                - normed * (g_normed * normed).mean(axis=-1, keepdims=True))


def layer_norm_gain_grad(x, eps, g):  # [1, d]: the VJP of layer_norm for gamma
    centred = x - x.mean(axis=-1, keepdims=True)
    return (g * centred / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + eps)).sum(axis=0, keepdims=True)


def rms_norm_grad(x, gamma, eps, g):  # [n, d]: the VJP of rms_norm for x
    r = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    g_normed = g * gamma
    return r * g_normed - x * (r * r * r) * (g_normed * x).mean(axis=-1, keepdims=True)


def rms_norm_gain_grad(x, eps, g):  # [1, d]: the VJP of rms_norm for gamma
    return (g * x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)).sum(axis=0, keepdims=True)


class SoftmaxGrad(MatrixOp):
    """Softmax's VJP from its output A: each row's G minus its A-weighted mean, times A."""

    summary_latex = (r"Softmax's VJP from its output $A$: $\bar S = A \odot (G - (G \odot A)\mathbf{1}"
                     r"\mathbf{1}^{\top})$, row by row.")
    numpy_functions = (softmax_grad,)

    def _latex(self, printer):
        a, g = (printer._print(x) for x in self.args)
        return rf"{a} \odot \left({g} - \left({g} \odot {a}\right) \mathbf{{1}} \mathbf{{1}}^{{\top}}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "softmax_grad", *self.args)

    def cost(self, ev):  # per row of m: G ⊙ A, its sum, G minus the sum, times A
        rows, cols = ev.size(self)
        return ev.cost(self.args[1]) + ops(mul=2 * rows * cols, add=rows * cols + rows * (cols - 1),
                                           neg=rows * cols)


class ColumnSum(MatrixOp):
    """The sum of the rows, 1ᵀ G: the VJP of a row vector added to every row."""

    summary_latex = r"The sum of the rows, $\mathbf{1}^{\top} G$: the VJP of a row vector added to every row."
    numpy_functions = (column_sum,)

    @property
    def shape(self):
        return (sp.Integer(1), self.arg.shape[1])

    def _latex(self, printer):
        return rf"\mathbf{{1}}^{{\top}} {printer.parenthesize(self.arg, 50)}"

    def _numpycode(self, printer):
        return self._call(printer, "column_sum", self.arg)

    def cost(self, ev):
        rows, cols = ev.size(self.arg)
        return ev.cost(self.arg) + ops(add=(rows - 1) * cols)


class ScatterAdd(MatrixOp):
    """Row lookup's VJP: row i of G added to row t_i of a table of zeros (one-hot(t)ᵀ G)."""

    summary_latex = (r"Row lookup's VJP: row $i$ of $G$ added to row $t_i$ of a table of zeros, "
                     r"$\operatorname{onehot}(t)^{\top} G$.")
    numpy_functions = (scatter_add,)

    @property
    def shape(self):
        return (self.args[2], self.arg.shape[1])

    def _latex(self, printer):
        g, ids = printer._print(self.args[0]), printer._print(self.args[1])
        return rf"\operatorname{{onehot}}\left({ids}\right)^{{\top}} {g}"

    def _numpycode(self, printer):
        return self._call(printer, "scatter_add", *self.args)

    def cost(self, ev):
        """As the lookup is counted: rows at known ids are placed (no arithmetic), at tokens it is
        onehot(t)ᵀ G, a product [rows, n] x [n, d]."""
        if ev.is_known(self.args[1]):
            return ev.cost(self.arg)
        (count, width), rows = ev.size(self.arg), int(ev.number(self.args[2]))
        return ev.cost(self.arg) + ops(mul=count, add=count - 1) * (rows * width)


class GroupSum(MatrixOp):
    """Grouped heads' VJP: the query heads that share key/value head g summed, the groups side by side
    (arguments: G, n_kv_head, n_head)."""

    summary_latex = (r"Grouped heads' VJP: $\bar X_{g} = \sum_{h : g(h) = g} G_h$ for each key/value head $g$, "
                     r"side by side.")
    numpy_functions = (group_sum,)

    @property
    def shape(self):
        return (self.arg.shape[0], self.arg.shape[1] * self.args[1])

    def _latex(self, printer):
        kv = printer._print(self.args[1])
        return (rf"\operatorname{{concat}}_{{g=1}}^{{{kv}}}\left(\sum_{{h : g(h) = g}} "
                rf"{printer._print(self.arg)}\right)")

    def _numpycode(self, printer):
        return self._call(printer, "group_sum", self.arg, self.args[1])

    def cost(self, ev):  # the argument is per query head; the heads beyond one per group are added
        kv_heads, heads = int(ev.number(self.args[1])), int(ev.number(self.args[2]))
        rows, cols = ev.size(self.arg)
        return ev.cost(self.arg) * heads + ops(add=(heads - kv_heads) * rows * cols)


class NormGrad(MatrixOp):
    """A normalisation's VJP for its input or gain (arguments: X, [γ,] ε, G)."""

    latex_name: str = ""
    function: str = ""

    @property
    def shape(self):
        return self.args[-1].shape if len(self.args) == 4 else (sp.Integer(1), self.args[-1].shape[1])

    def _latex(self, printer):
        *inputs, g = self.args
        applied = operator(printer, self.latex_name, *inputs, sep=r";\, ")
        return rf"{applied}^{{\top}} \left[{printer._print(g)}\right]"

    def _numpycode(self, printer):
        return self._call(printer, self.function, *self.args)

    def cost(self, ev):
        """Per row of width d, as the numpy function computes it (the row's statistics again); a gain's
        gradient then sums the rows."""
        rows, width = ev.size(self.args[-1])
        total = ev.cost(self.args[-1]) + self.per_row(width) * rows
        return total + (ops(add=(rows - 1) * width) if len(self.args) == 3 else ops())


class LayerNormGrad(NormGrad):
    """LayerNorm's VJP for X, row by row: (G ⊙ γ minus its mean, minus X̂ times the mean of G ⊙ γ ⊙ X̂) / σ."""

    summary_latex = (r"LayerNorm's VJP for $X$, row by row, with $\hat X = (X - \mu)/\sqrt{\sigma^2 + \varepsilon}$ "
                     r"and $\hat G = G \odot \gamma$: $\bar X = (\hat G - \overline{\hat G} - \hat X\, "
                     r"\overline{\hat G \odot \hat X}) / \sqrt{\sigma^2 + \varepsilon}$ (bars: means over the row).")
    latex_name, function, numpy_functions = r"\partial_X LN", "layer_norm_grad", (layer_norm_grad,)

    @staticmethod
    def per_row(d):
        return ops(add=7 * d - 3, neg=3 * d, mul=6 * d + 4, sqrt=1, div=1)


class LayerNormGainGrad(NormGrad):
    """LayerNorm's VJP for its gain γ: 1ᵀ (G ⊙ X̂)."""

    summary_latex = r"LayerNorm's VJP for its gain: $\bar\gamma = \mathbf{1}^{\top} (G \odot \hat X)$."
    latex_name, function, numpy_functions = r"\partial_\gamma LN", "layer_norm_gain_grad", (layer_norm_gain_grad,)

    @staticmethod
    def per_row(d):
        return ops(add=3 * d - 1, neg=d, mul=3 * d + 2, sqrt=1, div=1)


class RMSNormGrad(NormGrad):
    """RMSNorm's VJP for X, row by row: G ⊙ γ / r minus X times the mean of G ⊙ γ ⊙ X over r³."""

    summary_latex = (r"RMSNorm's VJP for $X$, row by row, with $r = \sqrt{\overline{X^2} + \varepsilon}$ and "
                     r"$\hat G = G \odot \gamma$: $\bar X = \hat G / r - X\, \overline{\hat G \odot X} / r^3$.")
    latex_name, function, numpy_functions = r"\partial_X RMSNorm", "rms_norm_grad", (rms_norm_grad,)

    @staticmethod
    def per_row(d):
        return ops(add=3 * d - 1, neg=d, mul=6 * d + 4, sqrt=1, div=1)


class RMSNormGainGrad(NormGrad):
    """RMSNorm's VJP for its gain γ: 1ᵀ (G ⊙ X / r)."""

    summary_latex = r"RMSNorm's VJP for its gain: $\bar\gamma = \mathbf{1}^{\top} (G \odot X / r)$."
    latex_name, function, numpy_functions = r"\partial_\gamma RMSNorm", "rms_norm_gain_grad", (rms_norm_gain_grad,)

    @staticmethod
    def per_row(d):
        return ops(add=d, mul=3 * d + 1, sqrt=1, div=1)


class HeadRMSNormGrad(RMSNormGrad):
    """HeadRMSNorm's VJP for X: RMSNorm's, within each head's d_head features."""

    summary_latex = r"HeadRMSNorm's VJP for $X$: RMSNorm's, within each head's $d_{\mathrm{head}}$ features."
    latex_name, function = r"\partial_X RMSNorm_h", "head_rms_norm_grad"
    numpy_functions = (rms_norm_grad, head_rms_norm_grad)

    @property
    def shape(self):
        return self.args[-1].shape

    def cost(self, ev):  # RMSNorm's per row, per head
        rows, cols = ev.size(self.args[-1])
        width = int(ev.number(self.args[-2]))
        return ev.cost(self.args[-1]) + self.per_row(width) * (rows * (cols // width))


class HeadRMSNormGainGrad(RMSNormGainGrad):
    """HeadRMSNorm's VJP for its gain γ [1, d_head]: RMSNorm's, summed over the rows and the heads."""

    summary_latex = (r"HeadRMSNorm's VJP for its gain: $\bar\gamma = \mathbf{1}^{\top} (G \odot X / r)$ over "
                     r"every row of every head.")
    latex_name, function = r"\partial_\gamma RMSNorm_h", "head_rms_norm_gain_grad"
    numpy_functions = (rms_norm_gain_grad, head_rms_norm_gain_grad)

    @property
    def shape(self):
        return (sp.Integer(1), self.args[-2])

    def cost(self, ev):  # per row and head, then the sum of those rows
        rows, cols = ev.size(self.args[-1])
        width = int(ev.number(self.args[-2]))
        units = rows * (cols // width)
        return ev.cost(self.args[-1]) + self.per_row(width) * units + ops(add=(units - 1) * width)


BACKWARD_OPS = (SoftmaxGrad, ColumnSum, ScatterAdd, GroupSum, LayerNormGrad, LayerNormGainGrad, RMSNormGrad,
                RMSNormGainGrad, HeadRMSNormGrad, HeadRMSNormGainGrad, SoftCapGrad, ActivationDerivative)
