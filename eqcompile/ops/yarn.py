"""YaRN RoPE scaling (transformers' rope_type "yarn"): each frequency blended between itself and
itself divided by s, by a linear ramp over the frequency index.

The ramp runs from index k_low to k_high, found from how many turns each frequency makes over the
original context (β_fast and β_slow turns); frequencies before k_low turn fast and are kept,
those past k_high are divided by s, as in linear scaling. transformers also multiplies cos and
sin by an attention factor m_YaRN: the tracer states it as a factor on the rotated features.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .attention import d_head
from .base import Cost, MatrixOp, add, count_operations, k, mul
from .rope import original_context, rope_factor, rope_theta

ramp_start = sp.Symbol("yarn_low", nonnegative=True)  # k_low: the first index whose frequency is blended
ramp_end = sp.Symbol("yarn_high", nonnegative=True)  # k_high: from there on, divided by s
beta_fast = sp.Symbol("beta_fast", positive=True)  # turns over the original context: above, kept
beta_slow = sp.Symbol("beta_slow", positive=True)  # below, divided by s
yarn_scale = sp.Symbol("yarn_scale", positive=True)  # m_YaRN: transformers' attention_factor
YARN_LATEX = {ramp_start: r"k_{\mathrm{low}}", ramp_end: r"k_{\mathrm{high}}", beta_fast: r"\beta_{\mathrm{fast}}",
              beta_slow: r"\beta_{\mathrm{slow}}", yarn_scale: r"m_{\mathrm{YaRN}}"}


def yarn_frequencies(theta, factor, low, high):  # [1, d/2]: theta kept before index low, theta / s past high
    ramp = np.clip((np.arange(theta.shape[-1], dtype=np.float32) - low) / (high - low if high != low else 0.001),
                   0, 1).astype(np.float32)
    return theta / factor * ramp + theta * (1 - ramp)


def yarn_ramp(base: float, width: int, original: int, fast: float, slow: float, truncate: bool) -> tuple:
    """(k_low, k_high) as transformers finds them: the index where a frequency turns β times over
    the original context, floored and ceiled (``truncate``) and kept within 0 .. width - 1."""
    def index(turns):
        return width * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = index(fast), index(slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, width - 1)


class YarnFrequencies(MatrixOp):
    """YaRN RoPE scaling: frequencies kept before index k_low, divided by s past k_high, a linear blend between."""

    summary_latex = (r"YaRN RoPE scaling: frequencies kept before index $k_{\mathrm{low}}$, divided by $s$ past "
                     r"$k_{\mathrm{high}}$, a linear blend between.")

    numpy_functions = (yarn_frequencies,)

    @property
    def constants(self):
        return self.args[1:]

    def _latex(self, printer):
        constants = ", ".join(printer._print(c) for c in self.constants)
        return rf"\operatorname{{YaRN}}_{{{constants}}}\left({printer._print(self.arg)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "yarn_frequencies", *self.args)

    def blends(self, ev) -> list:
        """Per frequency its ramp r_k, exact where k_low and k_high are whole (transformers truncates)."""
        low, high = (ev.number(c) for c in self.constants[1:])
        spread = high - low if high != low else sp.Rational(1, 1000)
        return [sp.Min(1, sp.Max(0, (index - low) / spread)) for index in range(ev.size(self)[1])]

    def entries(self, thetas, factor, blends) -> list:
        """θ_k (r_k = 0), θ_k / s (r_k = 1), else θ_k (1 − r_k) + r_k θ_k / s."""
        over = sp.Pow(factor, -1, evaluate=False)
        return [theta if r == 0 else mul(theta, over) if r == 1 else add(mul(theta, 1 - r), mul(r, theta, over))
                for theta, r in zip(thetas, blends)]

    def explicit(self, ev):
        return sp.Matrix([self.entries(ev.shared(self.arg), ev.number(self.args[1]), self.blends(ev))])

    def cost(self, ev):  # the expansion's operations, counted on placeholders for θ (it depends on constants only)
        blends = self.blends(ev)
        thetas = sp.symbols(f"t:{len(blends)}")
        entries = self.entries(thetas, ev.number(self.args[1]), blends)
        return ev.cost(self.arg) + sum((count_operations(entry) for entry in entries), Cost())

    @classmethod
    def definition(cls):
        theta, ramp = sp.IndexedBase("theta")[k], sp.IndexedBase("r")[k]
        scaled = cls(MatrixSymbol("theta", 1, d_head / 2), rope_factor, ramp_start, ramp_end)
        turns = sp.Symbol("beta")
        index = sp.Lambda(turns, d_head * sp.log(original_context / (2 * sp.pi * turns)) / (2 * sp.log(rope_theta)))
        return [
            (scaled[0, k], sp.Add(theta * (1 - ramp), ramp * theta / rope_factor, evaluate=False)),
            (ramp, sp.Min(1, sp.Max(0, (k - 1 - ramp_start) / (ramp_end - ramp_start)))),
            (ramp_start, sp.Max(0, sp.floor(index(beta_fast)))),
            (ramp_end, sp.Min(d_head - 1, sp.ceiling(index(beta_slow)))),
        ]

