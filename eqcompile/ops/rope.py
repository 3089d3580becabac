"""Rotary position embedding (RoPE) as transformers applies it to Llama, Mistral and Qwen2.

Feature j of a head is paired with feature j + d_head/2 (transformers' ``rotate_half``), and the
pair at position i (0-based) is turned by the angle i θ_j. The frequencies θ_j come from the base
``rope_theta`` and are computed in float32 exactly as transformers computes its ``inv_freq``; RoPE
scaling rescales them: "linear" divides all by s, "llama3" divides the low frequencies by s and
blends smoothly between the two regimes.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .attention import d_head
from .base import Cost, MatrixOp, add, count_operations, i, j, k, mul, n, neg, ops

rope_theta = sp.Symbol("rope_theta", positive=True)  # the base, 10000 in the original RoPE
rope_factor = sp.Symbol("rope_factor", positive=True)  # s: how much the context was stretched
low_freq_factor = sp.Symbol("low_freq_factor", positive=True)  # α (llama3)
high_freq_factor = sp.Symbol("high_freq_factor", positive=True)  # β (llama3)
original_context = sp.Symbol("original_context", integer=True, positive=True)  # n_orig (llama3)


def rope_frequencies(rope_theta, d_head):  # -> [1, d_head / 2]: rope_theta^(-2k / d_head), k = 0, 1, ...
    return 1.0 / rope_theta ** (np.arange(0, d_head, 2, dtype=np.float32) / d_head)[None, :]


def llama3_frequencies(theta, factor, low_freq_factor, high_freq_factor, original_context):  # [1, d_head / 2]
    wavelength = 2 * math.pi / theta
    low = wavelength > original_context / low_freq_factor
    scaled = np.where(low, theta / factor, theta)
    smooth = (original_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    medium = ~(wavelength < original_context / high_freq_factor) & ~low
    return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def rope(x, theta, positions):  # [n, heads * d_head]: each head's features j, j + d_head/2 turned by p_i theta_j
    angles = positions.astype(np.float32)[:, None, None] * theta  # [n, 1, d_head / 2]
    cos, sin = np.cos(angles), np.sin(angles)
    half = theta.shape[-1]
    heads = x.reshape(x.shape[0], -1, 2 * half)  # [n, heads, d_head]
    first, second = heads[..., :half], heads[..., half:]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1).reshape(x.shape)


class RotaryFrequencies(MatrixOp):
    """RoPE frequencies: theta_k = base^(-2(k-1)/d_head), a row vector of d_head/2 entries."""

    summary_latex = r"RoPE frequencies: $\theta_k = \theta_{\mathrm{base}}^{-2(k-1)/d_{\mathrm{head}}}$, a row vector of $d_{\mathrm{head}}/2$ entries."

    numpy_functions = (rope_frequencies,)

    @property
    def base(self):
        return self.args[0]

    @property
    def width(self):
        return self.args[1]

    @property
    def shape(self):
        return (sp.Integer(1), self.width / 2)

    def _latex(self, printer):
        base, width = printer._print(self.base), printer._print(self.width)
        return rf"\left({base}^{{-2(k-1)/{width}}}\right)_{{k=1}}^{{{width}/2}}"

    def _numpycode(self, printer):
        return self._call(printer, "rope_frequencies", self.base, self.width)

    def entries(self, ev) -> list[sp.Expr]:
        """base^(-2k/d_head), k = 0, 1, ...: the exact exponents, the base from the config."""
        base, width = ev.number(self.base), int(ev.number(self.width))
        return [sp.Pow(base, sp.Rational(-2 * index, width), evaluate=False) for index in range(width // 2)]

    def explicit(self, ev):  # computed in exact arithmetic (transformers rounds them to float32)
        return sp.Matrix([self.entries(ev)])

    def cost(self, ev):  # one power per frequency (x^0 and x^(-1/2) counted as the expansion writes them)
        return sum((count_operations(entry) for entry in self.entries(ev)), Cost())

    @classmethod
    def definition(cls):
        theta = sp.IndexedBase("theta")[k]
        return [(theta, rope_theta ** sp.Mul(-2, k - 1, 1 / d_head, evaluate=False))]


class Llama3Frequencies(MatrixOp):
    """Llama 3 RoPE scaling: low frequencies divided by s, high ones kept, a smooth blend between."""

    summary_latex = r"Llama 3 RoPE scaling: low frequencies divided by $s$, high ones kept, a smooth blend between."

    numpy_functions = (llama3_frequencies,)

    @property
    def constants(self):
        return self.args[1:]

    def _latex(self, printer):
        constants = ", ".join(printer._print(c) for c in self.constants)
        return rf"\operatorname{{llama3}}_{{{constants}}}\left({printer._print(self.arg)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "llama3_frequencies", *self.args)

    def regimes(self, ev) -> list[str]:
        """Per frequency, which branch of the definition applies: "keep", "scale" or "blend".

        The branch depends on constants only, so the literal equation writes just that branch.
        """
        if not isinstance(self.arg, RotaryFrequencies):
            raise NotImplementedError("llama3 scaling is expanded for the RoPE frequencies only")
        _, low, high, original = (float(ev.number(c)) for c in self.constants)
        thetas = [float(sp.N(entry, 30)) for entry in self.arg.entries(ev)]
        return ["scale" if 2 * math.pi / theta > original / low else
                "keep" if 2 * math.pi / theta < original / high else "blend" for theta in thetas]

    def explicit(self, ev):
        """Per frequency θ: θ (high frequencies), θ / s (low ones), or the definition's blend with the
        wavelength λ = 2π / θ and γ = (n_orig / λ − α_low) / (α_high − α_low)."""
        thetas = ev.shared(self.arg)
        factor, low, original = (ev.number(c) for c in (self.args[1], self.args[2], self.args[4]))
        spread = ev.number(self.args[3] - self.args[2])  # α_high − α_low: a constant
        out = []
        for index, (theta, regime) in enumerate(zip(thetas, self.regimes(ev))):
            if regime == "keep":
                out.append(theta)
            elif regime == "scale":
                out.append(mul(theta, sp.Pow(factor, -1, evaluate=False)))
            else:
                wavelength = ev.name("lambda", mul(2, sp.pi, sp.Pow(theta, -1, evaluate=False)), index,
                                     latex=r"\lambda")
                ratio = add(mul(original, sp.Pow(wavelength, -1, evaluate=False)), neg(low))
                blend = ev.name("gamma", mul(ratio, sp.Pow(spread, -1, evaluate=False)), index,
                                latex=r"\gamma")
                out.append(add(mul(add(1, neg(blend)), theta, sp.Pow(factor, -1, evaluate=False)),
                               mul(blend, theta)))
        return sp.Matrix([out])

    def cost(self, ev):  # per frequency, its branch: none, a division, or wavelength, blend and sum
        per_regime = {"keep": ops(), "scale": ops(div=1), "blend": ops(div=4, mul=3, add=3, neg=2)}
        return ev.cost(self.arg) + sum((per_regime[regime] for regime in self.regimes(ev)), Cost())

    @classmethod
    def definition(cls):
        theta, wavelength, blend = (sp.IndexedBase(name)[k] for name in ("theta", "lambda", "gamma"))
        scaled = cls(MatrixSymbol("theta", 1, d_head / 2), rope_factor, low_freq_factor, high_freq_factor,
                     original_context)
        return [
            (scaled[0, k], sp.Piecewise(
                (theta, wavelength < original_context / high_freq_factor),
                (theta / rope_factor, wavelength > original_context / low_freq_factor),
                (sp.Add((1 - blend) * theta / rope_factor, blend * theta, evaluate=False), True))),
            (wavelength, 2 * sp.pi / theta),
            (blend, (original_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)),
        ]


def turned_pairs(ev, x, theta, positions, out, head_width: int):
    """``out`` with each head's pairs (x_j, x_{j+len θ}) turned by φ = p_i θ_j (RoPE's expansion; the
    angle, its cos and sin are named once per position and frequency, shared by every head)."""
    half = theta.cols
    for r in range(x.rows):
        for f in range(half):
            angle = ev.name("phi", mul(positions[r, 0], theta[0, f]), r, f, latex=r"\varphi")
            cos = ev.name("cos", sp.cos(angle, evaluate=False), r, f, latex=r"\cos\varphi")
            sin = ev.name("sin", sp.sin(angle, evaluate=False), r, f, latex=r"\sin\varphi")
            for start in range(0, x.cols, head_width):
                first, second = x[r, start + f], x[r, start + f + half]
                out[r, start + f] = add(mul(first, cos), neg(mul(second, sin)))
                out[r, start + f + half] = add(mul(second, cos), mul(first, sin))
    return out


class RotaryOp(MatrixOp):
    """What RoPE and PartialRoPE share: arguments (x, θ, p, ...) and the LaTeX RoPE_θ(x; p)."""

    @property
    def frequencies(self):
        return self.args[1]

    @property
    def positions(self):
        return self.args[2]

    def _latex(self, printer):
        frequencies, x, p = printer._print(self.frequencies), printer._print(self.arg), printer._print(self.positions)
        return rf"\operatorname{{RoPE}}_{{{frequencies}}}\left({x};\, {p}\right)"



class RoPE(RotaryOp):
    """Rotary position embedding: in each head, features j and j + d_head/2 at position p_i turned by p_i theta_j.

    It acts on all heads side by side (``[n, heads d_head]``), so keys are rotated once, before
    they are cached, and the positions p are an input: generation continues at p = (i, ...).
    """

    summary_latex = (r"Rotary position embedding: in each head, features $j$ and $j + d_{\mathrm{head}}/2$ at "
                     r"position $p_i$ turned by $p_i \theta_j$.")

    numpy_functions = (rope,)

    def _numpycode(self, printer):
        return self._call(printer, "rope", self.arg, self.frequencies, self.positions)

    def vjp(self, grad, output):
        """X̄ = RoPE_{−θ}(G; p): a rotation's transpose turns by the opposite angle."""
        return [(self.arg, RoPE(grad, -self.frequencies, self.positions))]

    def explicit(self, ev):
        """Per position i and frequency j the angle φ = p_i θ_j, its cos and sin (named once, shared by
        every head); then each head's pair (x_j, x_{j+d_head/2}) is turned by φ."""
        x, theta, positions = ev.shared(self.arg), ev.shared(self.frequencies), ev.value(self.positions)
        return turned_pairs(ev, x, theta, positions, sp.zeros(x.rows, x.cols), 2 * theta.cols)

    def cost(self, ev):
        """An angle, its cos and sin per position and frequency; two products and a sum per entry."""
        rows, cols = ev.size(self)
        half = ev.size(self.frequencies)[1]
        angles = rows * half
        return ev.cost(self.arg) + ops(mul=angles + 2 * rows * cols, add=rows * cols, neg=rows * cols // 2,
                                       cos=angles, sin=angles)

    @classmethod
    def definition(cls):  # one head's block of columns; every head is turned the same way
        X, half = MatrixSymbol("X", n, d_head), d_head / 2
        theta, p = sp.IndexedBase("theta"), sp.IndexedBase("p")
        rotated = cls(X, MatrixSymbol("theta", 1, half), MatrixSymbol("p", n, 1))[i, j]
        angle, partner_angle = p[i] * theta[j], p[i] * theta[j - half]
        first = sp.Add(X[i, j] * sp.cos(angle), -X[i, j + half] * sp.sin(angle), evaluate=False)
        second = sp.Add(X[i, j] * sp.cos(partner_angle), X[i, j - half] * sp.sin(partner_angle), evaluate=False)
        return [(rotated, sp.Piecewise((first, sp.Le(j, half)), (second, True)))]
