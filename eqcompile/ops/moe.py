"""A mixture of experts (Mixtral): each token goes through the K experts its router ranks highest,
y = Σ_{k ≤ K} w_k(x) E_{i_k}(x) with (w, i) = topk(softmax(x W_r)), the K weights renormalised to
sum to 1, and E_e(x) = (SiLU(x W_gate,e) ⊙ x W_up,e) W_down,e."""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..errors import UnsupportedArchitecture
from .activation import SiLU, silu
from .attention import softmax
from .base import MatrixOp, count_operations, i, j, k, m, n, ops

top_k = sp.Symbol("K", integer=True, positive=True)  # experts per token
n_experts = sp.Symbol("n_experts", integer=True, positive=True)
MOE_LATEX = {top_k: "K", n_experts: r"n_{\mathrm{experts}}"}


def route(x, router, k):  # [n, d] -> the k experts each row chose [n, k] and their weights [n, k]
    probabilities = softmax(x @ router)  # [n, n_experts]
    chosen = np.argsort(-probabilities, axis=-1, stable=True)[:, :k]  # the k most probable, ties in order
    weights = np.take_along_axis(probabilities, chosen, axis=-1)
    return chosen, weights / weights.sum(axis=-1, keepdims=True)  # renormalised


def mixture_of_experts(x, router, k, experts):  # [n, d] -> [n, d]: each token through its k chosen experts only
    chosen, weights = route(x, router, k)
    y = np.zeros((x.shape[0], experts[0][2].shape[1]), dtype=x.dtype)
    for expert, (gate, up, down) in enumerate(experts):
        rows, slot = np.nonzero(chosen == expert)  # the tokens that chose this expert, and in which place
        if rows.size:
            h = x[rows]
            y[rows] += weights[rows, slot][:, None] * ((silu(h @ gate) * (h @ up)) @ down)
    return y


def mixture_of_experts_every_row(x, router, k, experts):  # the same sum with fixed shapes, as jax.jit needs:
    chosen, weights = route(x, router, k)  # every expert runs on every row, weighted 0 where not chosen
    y = np.zeros((x.shape[0], experts[0][2].shape[1]), dtype=x.dtype)
    for expert, (gate, up, down) in enumerate(experts):
        share = (weights * (chosen == expert)).sum(axis=-1, keepdims=True)  # [n, 1]
        y = y + share * ((silu(x @ gate) * (x @ up)) @ down)
    return y


class MixtureOfExperts(MatrixOp):
    """Mixture of experts: each row goes through the K experts its router ranks highest, weighted."""

    summary_latex = (r"Mixture of experts: each row $x$ goes through the $K$ experts its router ranks highest, "
                     r"$y = \sum_{k \le K} w_k(x) E_{i_k(x)}(x)$ with $(w, i) = \operatorname{topk}_K"
                     r"(\operatorname{softmax}(x W_r))$, $w$ renormalised to sum to 1, and expert $e$ "
                     r"$E_e(x) = (\operatorname{SiLU}(x W_{\mathrm{gate},e}) \odot x W_{\mathrm{up},e}) "
                     r"W_{\mathrm{down},e}$.")
    numpy_functions = (softmax, silu, route, mixture_of_experts)
    jax_functions = (softmax, silu, route, mixture_of_experts_every_row)

    @property
    def router(self):
        return self.args[1]

    @property
    def experts(self) -> tuple:
        return tuple(tuple(expert) for expert in self.args[3])

    @property
    def shape(self):
        return (self.arg.shape[0], self.experts[0][2].shape[1])

    def _latex(self, printer):
        count = len(self.experts)
        first, last = (r"E_{%d}" % e for e in (1, count))
        return (rf"\operatorname{{MoE}}_{{{printer._print(self.args[2])}}}\left({printer._print(self.arg)};\, "
                rf"{printer._print(self.router)}, {first}, \dots, {last}\right)")

    def _numpycode(self, printer, function: str = "mixture_of_experts"):
        experts = ", ".join("(" + ", ".join(printer._print(w) for w in expert) + ")" for expert in self.experts)
        return f"{function}({printer._print(self.arg)}, {printer._print(self.router)}, " \
               f"{printer._print(self.args[2])}, ({experts},))"

    def _jaxcode(self, printer):
        return self._numpycode(printer, "mixture_of_experts_every_row")

    def explicit(self, ev):
        raise UnsupportedArchitecture("--expand: a mixture of experts chooses its experts by their values, "
                                      "so it has no literal expansion")

    def cost(self, ev):  # per row: the router, the choice, K experts, their weighted sum
        rows, width = ev.size(self.arg)
        count, chosen = len(self.experts), int(ev.number(self.args[2]))
        inner = int(ev.number(self.experts[0][0].shape[1]))
        router = ops(mul=width * count, add=(width - 1) * count + count - 1 + chosen - 1, exp=count,
                     div=count + chosen, max=chosen * (count - 1))
        activation = count_operations(SiLU.scalar_form(sp.Symbol("x")))
        expert = ops(mul=2 * width * inner + inner + width * inner + width,
                     add=2 * (width - 1) * inner + (inner - 1) * width) + activation * inner
        return ev.cost(self.arg) + (router + expert * chosen + ops(add=(chosen - 1) * width)) * rows

    @classmethod
    def definition(cls):
        X, W_r = MatrixSymbol("X", n, m), MatrixSymbol("W_r", m, n_experts)
        w, p, chosen, E = (sp.IndexedBase(name) for name in ("w", "p", "i", "E"))
        e, f, u = sp.symbols("e f u", integer=True)
        gate, up, down = (sp.IndexedBase(rf"W_{{\mathrm{{{name}}}}}") for name in ("gate", "up", "down"))
        silu_of = sp.Function(r"\operatorname{SiLU}")
        return [
            (sp.IndexedBase("Y")[i, j], sp.Sum(w[i, k] * E[chosen[i, k], i, j], (k, 1, top_k))),
            (w[i, k], p[i, chosen[i, k]] / sp.Sum(p[i, chosen[i, u]], (u, 1, top_k))),
            (p[i, e], sp.exp(sp.Sum(X[i, k] * W_r[k, e], (k, 1, m)))
             / sp.Sum(sp.exp(sp.Sum(X[i, k] * W_r[k, u], (k, 1, m))), (u, 1, n_experts))),
            (E[e, i, j], sp.Sum(silu_of(sp.Sum(X[i, k] * gate[e, k, f], (k, 1, m)))
                                * sp.Sum(X[i, k] * up[e, k, f], (k, 1, m)) * down[e, f, j], (f, 1, sp.Symbol("F")))),
        ]


__all__ = ["MixtureOfExperts", "top_k", "n_experts"]
