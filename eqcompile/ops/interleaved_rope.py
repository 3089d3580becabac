"""Interleaved rotary embedding (GPT-J, and GPT-NeoX-style code that calls ``rotate_every_two``):
RoPE on adjacent pairs of features.

Where RoPE pairs feature j with j + d_rot/2 (``rotate_half``), GPT-J pairs features 2k - 1 and 2k
(1-based) of the first d_rot = 2 len(θ) features of every head and turns the pair at position p_i
by p_i θ_k; the remaining d_head - d_rot features pass unchanged (GPT-J 6B: d_rot = 64 of 256).
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .attention import d_head
from .base import add, i, j, mul, n, neg
from .partial_rope import PartialRoPE, d_rot
from .rope import RotaryOp


def interleaved_rope(x, theta, positions, d_head):  # [n, heads * d_head]: pairs (2k, 2k+1) of each head turned
    heads = x.reshape(x.shape[0], -1, d_head)  # [n, heads, d_head]
    rotary = 2 * theta.shape[-1]
    angles = (positions.astype(np.float32)[:, None] * theta)[:, None, :]  # [n, 1, d_rot / 2]
    cos, sin = np.cos(angles), np.sin(angles)
    even, odd = heads[..., 0:rotary:2], heads[..., 1:rotary:2]
    turned = np.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1).reshape(*heads.shape[:2], rotary)
    return np.concatenate([turned, heads[..., rotary:]], axis=-1).reshape(x.shape)


class InterleavedRoPE(RotaryOp):
    """RoPE on adjacent pairs: in each head, features 2k-1 and 2k of the first d_rot turned by p_i theta_k."""

    summary_latex = (r"Interleaved rotary position embedding: in each head, features $2k-1$ and $2k$ of the first "
                     r"$d_{\mathrm{rot}}$ turned by $p_i \theta_k$; the others pass unchanged.")
    numpy_functions = (interleaved_rope,)

    @property
    def head_width(self):
        return self.args[3]

    def _latex(self, printer):
        frequencies, x, p = printer._print(self.frequencies), printer._print(self.arg), printer._print(self.positions)
        return rf"\operatorname{{RoPE}}^{{\mathrm{{pairs}}}}_{{{frequencies}}}\left({x};\, {p}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "interleaved_rope", self.arg, self.frequencies, self.positions, self.head_width)

    def vjp(self, grad, output):
        """X̄ = RoPE^pairs_{−θ}(G; p): each pair turned back, the other features passed through."""
        return [(self.arg, InterleavedRoPE(grad, -self.frequencies, self.positions, self.head_width))]

    def explicit(self, ev):
        """Per position i and frequency k the angle φ = p_i θ_k, its cos and sin (named once, shared
        by every head); each head's pair (x_{2k-1}, x_{2k}) turned by φ, the other features copied."""
        x, theta, positions = ev.shared(self.arg), ev.shared(self.frequencies), ev.value(self.positions)
        out, width = sp.Matrix(x), int(ev.number(self.head_width))
        for r in range(x.rows):
            for f in range(theta.cols):
                angle = ev.name("phi", mul(positions[r, 0], theta[0, f]), r, f, latex=r"\varphi")
                cos = ev.name("cos", sp.cos(angle, evaluate=False), r, f, latex=r"\cos\varphi")
                sin = ev.name("sin", sp.sin(angle, evaluate=False), r, f, latex=r"\sin\varphi")
                for start in range(0, x.cols, width):
                    first, second = x[r, start + 2 * f], x[r, start + 2 * f + 1]
                    out[r, start + 2 * f] = add(mul(first, cos), neg(mul(second, sin)))
                    out[r, start + 2 * f + 1] = add(mul(second, cos), mul(first, sin))
        return out

    cost = PartialRoPE.cost  # the same operations on the same features: 2 len(θ) of every head

    @classmethod
    def definition(cls):  # one head's block of columns; every head is turned the same way
        X = MatrixSymbol("X", n, d_head)
        theta, p = sp.IndexedBase("theta"), sp.IndexedBase("p")
        rotated = cls(X, MatrixSymbol("theta", 1, d_rot / 2), MatrixSymbol("p", n, 1), d_head)[i, j]
        odd_angle, even_angle = p[i] * theta[(j + 1) / 2], p[i] * theta[j / 2]
        first = sp.Add(X[i, j] * sp.cos(odd_angle), -X[i, j + 1] * sp.sin(odd_angle), evaluate=False)
        second = sp.Add(X[i, j] * sp.cos(even_angle), X[i, j - 1] * sp.sin(even_angle), evaluate=False)
        return [(rotated, sp.Piecewise((X[i, j], sp.Gt(j, d_rot)), (first, sp.Eq(sp.Mod(j, 2), 1)), (second, True)))]
