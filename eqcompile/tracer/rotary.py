"""RoPE scaling as transformers reads it from a config (``rope_parameters``, formerly ``rope_scaling``):
the frequencies each rope_type makes, in numpy (to recognise the traced graph's cos and sin tables)
and as the equation of θ the Program states. "linear" and "llama3" are stated with the hand-written
Llama family's ops, "yarn" with its own (ops/yarn.py) and its attention factor on the rotated
features. "dynamic" and "longrope" choose their frequencies by the sequence length: refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import sympy as sp

from ..errors import UnsupportedArchitecture
from ..ops import Llama3Frequencies, RotaryFrequencies, YarnFrequencies
from ..ops.rope import (high_freq_factor, llama3_frequencies, low_freq_factor, original_context, rope_factor,
                        rope_frequencies)
from ..ops.per_layer import LayerValue
from ..ops.yarn import ramp_end, ramp_start, yarn_frequencies, yarn_ramp, yarn_scale

BY_LENGTH = ("dynamic", "longrope")  # frequencies chosen by the sequence length


def rope_parameters(config) -> dict:
    """The config's RoPE parameters (those of the full-attention layers where they differ by layer kind)."""
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params, dict) and "full_attention" in params:
        params = params["full_attention"]
    return params if isinstance(params, dict) else {}


def rope_type(config) -> str:
    """The config's RoPE scaling ("default": none; "linear", "llama3", "yarn", ...)."""
    return str(rope_parameters(config).get("rope_type", "default"))


@dataclass(frozen=True)
class RotaryScaling:
    """One rope_type and its parameters, as transformers' ``ROPE_INIT_FUNCTIONS`` use them."""

    kind: str = "default"
    factor: float = 1.0  # s
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_context: int = 0  # llama3, yarn: the context the model was trained on
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    truncate: bool = True  # yarn: the ramp's ends rounded to whole indices
    amplitude: float = 1.0  # yarn's attention_factor: cos and sin multiplied by it

    def frequencies(self, base: float, width: int) -> np.ndarray:
        """θ [1, width/2] of ``width`` rotated features, in float32 as transformers computes its inv_freq."""
        theta = rope_frequencies(base, width)
        if self.kind == "linear":
            return theta / np.float32(self.factor)
        if self.kind == "llama3":
            return llama3_frequencies(theta, self.factor, self.low_freq_factor, self.high_freq_factor,
                                      self.original_context)
        if self.kind == "yarn":
            return yarn_frequencies(theta, self.factor, *self.ramp(base, width))
        return theta

    def ramp(self, base: float, width: int) -> tuple:
        return yarn_ramp(base, width, self.original_context, self.beta_fast, self.beta_slow, self.truncate)

    def expression(self, constant, base_expr, base: float | None, size, width: int) -> sp.Expr:
        """θ's right-hand side; ``constant(symbol, value)`` names each parameter (Context.constant)."""
        theta = RotaryFrequencies(base_expr, size)
        if self.kind == "default":
            return theta
        factor = constant(rope_factor, self.factor)
        if self.kind == "linear":
            return theta / factor
        if self.kind == "llama3":
            return Llama3Frequencies(theta, factor, constant(low_freq_factor, self.low_freq_factor),
                                     constant(high_freq_factor, self.high_freq_factor),
                                     constant(original_context, self.original_context))
        if base is None or base_expr.has(LayerValue):
            raise UnsupportedArchitecture("the tracer lowers YaRN scaling for one rotary base only")
        low, high = self.ramp(base, width)
        return YarnFrequencies(theta, factor, constant(ramp_start, low), constant(ramp_end, high))

    def scaled(self, rotated: sp.Expr, whole: bool, constant) -> sp.Expr:
        """The rotated features times the attention factor (YaRN), which scales cos and sin alike."""
        if self.amplitude == 1:
            return rotated
        if not whole:
            raise UnsupportedArchitecture("the tracer does not lower YaRN's attention factor on a partial rotary "
                                          "embedding (it scales the rotated features only)")
        return constant(yarn_scale, self.amplitude) * rotated


def refuse_length_dependent(config):
    """Before the export, which would stop at their branch on the sequence length with torch's own words."""
    if rope_type(config) in BY_LENGTH:
        read_scaling(config)


def read_scaling(config) -> RotaryScaling:
    """The config's RoPE scaling, its defaults as transformers fills them in; a refusal naming the
    rope_type the tracer does not lower."""
    params, kind = rope_parameters(config), rope_type(config)
    if kind == "default":
        return RotaryScaling()
    nested = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in nested and any(isinstance(p, dict) and p.get("rope_type", "default") != kind
                                          for p in nested.values()):
        raise UnsupportedArchitecture(f"the tracer does not lower RoPE scaling {kind!r} on some layer kinds only")
    if kind in BY_LENGTH:
        raise UnsupportedArchitecture(f"the tracer does not lower RoPE scaling {kind!r}: its frequencies depend "
                                      "on the sequence length")
    if kind not in ("linear", "llama3", "yarn"):
        raise UnsupportedArchitecture(f"the tracer does not lower RoPE scaling {kind!r}")
    original = params.get("original_max_position_embeddings") or getattr(config, "max_position_embeddings", 0)
    factor = params.get("factor")
    if factor is None and kind == "yarn":  # transformers' DeepSeek-V3 rule
        factor = config.max_position_embeddings / original
    scaling = RotaryScaling(kind, float(factor), float(params.get("low_freq_factor") or 1.0),
                            float(params.get("high_freq_factor") or 4.0), int(original),
                            float(params.get("beta_fast") or 32), float(params.get("beta_slow") or 1),
                            bool(params.get("truncate", True)))
    return scaling if kind != "yarn" else _with_attention_factor(scaling, params)


def _with_attention_factor(scaling: RotaryScaling, params: dict) -> RotaryScaling:
    """YaRN's attention factor: given, or 0.1 ln s + 1 (a ratio of two such with mscale, mscale_all_dim)."""
    def mscale(scale, weight=1.0):
        return 1.0 if scale <= 1 else 0.1 * weight * math.log(scale) + 1.0

    factor = params.get("attention_factor")
    if factor is None:
        given, all_dim = params.get("mscale"), params.get("mscale_all_dim")
        factor = mscale(scaling.factor, given) / mscale(scaling.factor, all_dim) if given and all_dim \
            else mscale(scaling.factor)
    return replace(scaling, amplitude=float(factor))
