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
from .base import MatrixOp, i, j, k, n, ops

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
    angles = (positions.astype(np.float32)[:, None] * theta)[:, None, :]  # [n, 1, d_head / 2]
    cos, sin = np.cos(angles), np.sin(angles)
    heads = x.reshape(x.shape[0], -1, 2 * theta.shape[-1])  # [n, heads, d_head]
    first, second = np.split(heads, 2, axis=-1)
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1).reshape(x.shape)


class RotaryFrequencies(MatrixOp):
    """RoPE frequencies: theta_k = base^(-2(k-1)/d_head), a row vector of d_head/2 entries."""

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

    def cost(self, ev):  # one power per frequency (the exponents are constants)
        return ops(pow=ev.size(self)[1])

    @classmethod
    def definition(cls):
        theta = sp.IndexedBase("theta")[k]
        return [(theta, rope_theta ** sp.Mul(-2, k - 1, 1 / d_head, evaluate=False))]


class Llama3Frequencies(MatrixOp):
    """Llama 3 RoPE scaling: low frequencies divided by s, high ones kept, a smooth blend between."""

    numpy_functions = (llama3_frequencies,)

    @property
    def constants(self):
        return self.args[1:]

    def _latex(self, printer):
        constants = ", ".join(printer._print(c) for c in self.constants)
        return rf"\operatorname{{llama3}}_{{{constants}}}\left({printer._print(self.arg)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "llama3_frequencies", *self.args)

    def cost(self, ev):  # per frequency: its wavelength, the scaled value, the blend (as the definition)
        return ev.cost(self.arg) + ops(div=4, mul=3, add=3, neg=2) * ev.size(self)[1]

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


class RoPE(MatrixOp):
    """Rotary position embedding: in each head, features j and j + d_head/2 at position p_i turned by p_i theta_j.

    It acts on all heads side by side (``[n, heads d_head]``), so keys are rotated once, before
    they are cached, and the positions p are an input: generation continues at p = (i, ...).
    """

    numpy_functions = (rope,)

    @property
    def frequencies(self):
        return self.args[1]

    @property
    def positions(self):
        return self.args[2]

    def _latex(self, printer):
        frequencies, x, p = printer._print(self.frequencies), printer._print(self.arg), printer._print(self.positions)
        return rf"\operatorname{{RoPE}}_{{{frequencies}}}\left({x};\, {p}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "rope", self.arg, self.frequencies, self.positions)

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
