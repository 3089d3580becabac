"""Partial rotary embedding (GPT-NeoX/Pythia, Phi, StableLM): RoPE on each head's first features only.

transformers' ``partial_rotary_factor`` (``rotary_pct``) rotates the first d_rot = 2 len(θ)
features of every head (half-split among them, as ``rotate_half`` does) and passes the remaining
d_head - d_rot features through unchanged.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .attention import d_head
from .base import i, j, n, ops
from .rope import RotaryOp, rope, turned_pairs

d_rot = sp.Symbol("d_rot", integer=True, positive=True)  # features of a head that are rotated


def partial_rope(x, theta, positions, d_head):  # [n, heads * d_head]: each head's first 2 len(theta) features turned
    heads = x.reshape(x.shape[0], -1, d_head)  # [n, heads, d_head]
    rotary = 2 * theta.shape[-1]
    turned = rope(heads[..., :rotary].reshape(x.shape[0], -1), theta, positions)  # reshape copies the slice
    return np.concatenate([turned.reshape(x.shape[0], -1, rotary), heads[..., rotary:]], axis=-1).reshape(x.shape)


class PartialRoPE(RotaryOp):
    """RoPE on the first d_rot features of each head (pairs j, j + d_rot/2); the others pass unchanged."""

    summary_latex = (r"Partial rotary position embedding: in each head, features $j$ and $j + d_{\mathrm{rot}}/2$ "
                     r"of the first $d_{\mathrm{rot}}$ turned by $p_i \theta_j$; the others pass unchanged.")
    numpy_functions = (rope, partial_rope)

    @property
    def head_width(self):
        return self.args[3]

    def _numpycode(self, printer):
        return self._call(printer, "partial_rope", self.arg, self.frequencies, self.positions, self.head_width)

    def vjp(self, grad, output):
        """X̄ = PartialRoPE_{−θ}(G; p): the rotated features turned back, the others passed through."""
        return [(self.arg, PartialRoPE(grad, -self.frequencies, self.positions, self.head_width))]

    def explicit(self, ev):
        """As RoPE's expansion, on the first d_rot features of each head; the others are copied."""
        x, theta, positions = ev.shared(self.arg), ev.shared(self.frequencies), ev.value(self.positions)
        return turned_pairs(ev, x, theta, positions, sp.Matrix(x), int(ev.number(self.head_width)))

    def cost(self, ev):
        """RoPE's cost on the rotated features only: 2 len(θ) of every head."""
        rows, cols = ev.size(self)
        half = ev.size(self.frequencies)[1]
        rotated = cols // int(ev.number(self.head_width)) * 2 * half
        angles = rows * half
        return ev.cost(self.arg) + ops(mul=angles + 2 * rows * rotated, add=rows * rotated, neg=rows * rotated // 2,
                                       cos=angles, sin=angles)

    @classmethod
    def definition(cls):  # one head's block of columns; every head is turned the same way
        X, half = MatrixSymbol("X", n, d_head), d_rot / 2
        theta, p = sp.IndexedBase("theta"), sp.IndexedBase("p")
        rotated = cls(X, MatrixSymbol("theta", 1, half), MatrixSymbol("p", n, 1), d_head)[i, j]
        angle, partner_angle = p[i] * theta[j], p[i] * theta[j - half]
        first = sp.Add(X[i, j] * sp.cos(angle), -X[i, j + half] * sp.sin(angle), evaluate=False)
        second = sp.Add(X[i, j] * sp.cos(partner_angle), X[i, j - half] * sp.sin(partner_angle), evaluate=False)
        return [(rotated, sp.Piecewise((first, sp.Le(j, half)), (second, sp.Le(j, d_rot)), (X[i, j], True)))]
