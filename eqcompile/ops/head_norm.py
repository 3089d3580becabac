"""RMSNorm (Qwen3's, Gemma3's q_norm and k_norm) and LayerNorm (Persimmon's) of each head on its own:
the d_head features of a head are normalised alone, then scaled (and shifted) by weights shared by all heads."""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .attention import d_head, head
from .base import MatrixOp, add, i, j, k, mul, n, neg, ops
from .norm import epsilon, layer_norm, rms_norm


def _named_input(ev, arg) -> sp.Matrix:
    """The input's compound entries named "v", not "u" as ev.shared would: RoPE, applied to this op
    in the same equation, names its own input's entries "u"."""
    value = ev.value(arg)
    return sp.Matrix(value.rows, value.cols, lambda r, c: value[r, c] if value[r, c].is_Symbol or
                     value[r, c].is_Number else ev.name("v", value[r, c], r, c))


def head_rms_norm(x, gamma, eps, d_head):  # [n, heads * d_head] -> the same, each head normalised alone
    return rms_norm(x.reshape(x.shape[0], -1, d_head), gamma, eps).reshape(x.shape)


class HeadRMSNorm(MatrixOp):
    """RMSNorm over each head's d_head features (not over the whole row), with a gain [1, d_head]."""

    summary_latex = (r"RMSNorm within each head: each head's $d_{\mathrm{head}}$ features divided by their root mean "
                     r"square, then the gain $[1, d_{\mathrm{head}}]$ shared by the heads.")
    numpy_functions = (rms_norm, head_rms_norm)

    def _latex(self, printer):
        x, gamma = printer._print(self.arg), printer._print(self.args[1])
        return rf"\operatorname{{RMSNorm}}_{{{printer._print(head)}}}\left({x};\, {gamma}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "head_rms_norm", *self.args)

    def vjp(self, grad, output):
        """X̄, γ̄ by RMSNorm's Jacobian within each head (``backward.py``)."""
        from .backward import HeadRMSNormGainGrad, HeadRMSNormGrad

        x, gamma, eps, width = self.args
        return [(x, HeadRMSNormGrad(x, gamma, eps, width, grad)), (gamma, HeadRMSNormGainGrad(x, eps, width, grad))]

    def explicit(self, ev):
        x, gamma, eps = _named_input(ev, self.arg), ev.value(self.args[1]), ev.number(self.args[2])
        width = int(ev.number(self.args[3]))
        out = sp.zeros(x.rows, x.cols)
        for r in range(x.rows):
            for start in range(0, x.cols, width):
                features = [x[r, c] for c in range(start, start + width)]
                squares = add(*(sp.Pow(e, 2, evaluate=False) for e in features))
                mean_square = ev.name("ms", mul(sp.Rational(1, width), squares), r, start // width)
                scale = ev.name("r", sp.Pow(add(mean_square, eps), sp.Rational(-1, 2), evaluate=False), r,
                                start // width)
                for c in range(width):
                    out[r, start + c] = mul(gamma[0, c], features[c], scale)
        return out

    def cost(self, ev):  # RMSNorm's cost per head
        rows, cols = ev.size(self.arg)
        width = int(ev.number(self.args[3]))
        per_head = ops(mul=3 * width + 1, add=width, sqrt=1, div=1) + ev.cost(self.args[1])  # a gain 1 + γ: per head
        return ev.cost(self.arg) + per_head * (rows * (cols // width))

    @classmethod
    def definition(cls):  # column j of head h is column (h - 1) d_head + j of the row
        X = MatrixSymbol("X", n, d_head)
        gamma = sp.IndexedBase("gamma")[j]
        normed = cls(X, MatrixSymbol("gamma", 1, d_head), epsilon, d_head)
        return [(normed[i, j], gamma * X[i, j] / sp.sqrt(sp.Sum(X[i, k] ** 2, (k, 1, d_head)) / d_head + epsilon))]


def head_layer_norm(x, gamma, beta, eps, d_head):  # [n, heads * d_head] -> the same, each head normalised alone
    return layer_norm(x.reshape(x.shape[0], -1, d_head), gamma, beta, eps).reshape(x.shape)


class HeadLayerNorm(MatrixOp):
    """LayerNorm over each head's d_head features (Persimmon's q and k norms), gain and shift [1, d_head]."""

    summary_latex = (r"LayerNorm within each head: each head's $d_{\mathrm{head}}$ features less their mean, divided "
                     r"by their deviation, then the gain and shift $[1, d_{\mathrm{head}}]$ shared by the heads.")
    numpy_functions = (layer_norm, head_layer_norm)

    def _latex(self, printer):
        x, gamma, beta = (printer._print(a) for a in self.args[:3])
        return rf"\operatorname{{LN}}_{{{printer._print(head)}}}\left({x};\, {gamma}, {beta}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "head_layer_norm", *self.args)

    def explicit(self, ev):
        x, gamma, beta = _named_input(ev, self.arg), ev.value(self.args[1]), ev.value(self.args[2])
        eps, width = ev.number(self.args[3]), int(ev.number(self.args[4]))
        out = sp.zeros(x.rows, x.cols)
        for r in range(x.rows):
            for start in range(0, x.cols, width):  # head start // width, its mean and scale named per head
                features = [x[r, c] for c in range(start, start + width)]
                mean = ev.name("mu", mul(sp.Rational(1, width), add(*features)), r, start // width)
                centred = [add(e, neg(mean)) for e in features]
                var = ev.name("var", mul(sp.Rational(1, width), add(*(sp.Pow(e, 2, evaluate=False) for e in centred))),
                              r, start // width)
                scale = ev.name("r", sp.Pow(add(var, eps), sp.Rational(-1, 2), evaluate=False), r, start // width)
                for c in range(width):
                    out[r, start + c] = add(mul(gamma[0, c], centred[c], scale), beta[0, c])
        return out

    def cost(self, ev):  # LayerNorm's cost per head
        rows, cols = ev.size(self.arg)
        width = int(ev.number(self.args[4]))
        per_head = ops(add=5 * width - 1, mul=3 * width + 2, neg=2 * width, sqrt=1, div=1)
        return ev.cost(self.arg) + per_head * (rows * (cols // width))

    @classmethod
    def definition(cls):  # column j of head h is column (h - 1) d_head + j of the row
        X = MatrixSymbol("X", n, d_head)
        mu, sigma = sp.IndexedBase("mu")[i], sp.IndexedBase("sigma")[i]
        gamma, beta = sp.IndexedBase("gamma")[j], sp.IndexedBase("beta")[j]
        normed = cls(X, MatrixSymbol("gamma", 1, d_head), MatrixSymbol("beta", 1, d_head), epsilon, d_head)
        return [(normed[i, j], sp.Add(gamma * sp.Add(X[i, j], -mu, evaluate=False) / sp.sqrt(sigma**2 + epsilon),
                                      beta, evaluate=False)),
                (mu, sp.Sum(X[i, k], (k, 1, d_head)) / d_head),
                (sigma**2, sp.Sum(sp.Add(X[i, k], -mu, evaluate=False) ** 2, (k, 1, d_head)) / d_head)]
