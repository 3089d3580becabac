"""Pieces every family shares: dimension symbols, config checks, parameters, attention."""

from __future__ import annotations

from typing import Iterable

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..errors import CheckpointError, ConfigError
from ..load import Checkpoint
from ..load.gguf import QUANTIZATION_MAPS
from ..ops import (GELU, CausalMask, GELUTanh, MergeHeads, QuickGELU, ReLU, Sigmoid, SiLU, Softmax, SplitHeads,
                   Tanh, d_head, epsilon, n_head, n_kv_head, window)
from ..ops.rope import high_freq_factor, low_freq_factor, original_context, rope_factor, rope_theta
from ..program import Equation, Param, Stage, TensorRef

seq = sp.Symbol("n", integer=True, positive=True)  # number of tokens, set by the input
d_model = sp.Symbol("d", integer=True, positive=True)
d_ff = sp.Symbol("d_ff", integer=True, positive=True)
n_vocab = sp.Symbol("n_vocab", integer=True, positive=True)
n_ctx = sp.Symbol("n_ctx", integer=True, positive=True)
layer = sp.Symbol("l", integer=True, positive=True)  # 1-based layer index

# transformers' ACT2FN names, and the op each one is
ACTIVATIONS = {
    "gelu_new": GELUTanh, "gelu_pytorch_tanh": GELUTanh, "gelu_python_tanh": GELUTanh, "gelu_fast": GELUTanh,
    "gelu": GELU, "gelu_python": GELU, "relu": ReLU, "silu": SiLU, "swish": SiLU,
    "tanh": Tanh, "sigmoid": Sigmoid, "quick_gelu": QuickGELU,
}

DIM_LATEX = {
    seq: "n", d_model: "d", d_ff: r"d_{\mathrm{ff}}", n_vocab: r"n_{\mathrm{vocab}}",
    n_ctx: r"n_{\mathrm{ctx}}", n_head: r"n_{\mathrm{head}}", d_head: r"d_{\mathrm{head}}",
    epsilon: r"\varepsilon", layer: "l", n_kv_head: r"n_{\mathrm{kv}}", rope_theta: r"\theta_{\mathrm{base}}",
    window: "w", rope_factor: "s", low_freq_factor: r"\alpha_{\mathrm{low}}",
    high_freq_factor: r"\alpha_{\mathrm{high}}", original_context: r"n_{\mathrm{orig}}",
}
DIM_PYTHON = {
    seq: "n", d_model: "d", d_ff: "d_ff", n_vocab: "n_vocab", n_ctx: "n_ctx", n_head: "n_head",
    d_head: "d_head", epsilon: "eps", layer: "l", n_kv_head: "n_kv_head", rope_theta: "rope_theta",
    window: "window", rope_factor: "rope_factor", low_freq_factor: "low_freq_factor",
    high_freq_factor: "high_freq_factor", original_context: "original_context",
}


class ConfigReader:
    """Typed, checked access to a config dict: every problem is a one-line ``ConfigError``."""

    def __init__(self, config: dict, family: str):
        self.config, self.family = config, family

    def integer(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.config.get(key, default)
        if value is None:
            raise ConfigError(f"{self.family} config: missing {key!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{self.family} config: {key} must be an integer >= {minimum}, got {value!r}")
        return value

    def number(self, key: str, default: float, low: float = 0.0, high: float = 1.0) -> float:
        value = self.config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
            raise ConfigError(f"{self.family} config: {key} must be a number in [{low}, {high}), got {value!r}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.config.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.family} config: {key} must be true or false, got {value!r}")
        return value

    def choice(self, key: str, default: str, allowed) -> str:
        value = self.config.get(key, default)
        if value not in allowed:
            raise ConfigError(f"{self.family} config: unsupported {key} {value!r} "
                              f"(supported: {', '.join(sorted(allowed))})")
        return value


def expect_shapes(checkpoint: Checkpoint, expected: Iterable[tuple[str, tuple[int, ...]]]) -> None:
    """Check that the tensors the lowering binds exist with the shapes the config implies.

    ``expected`` is consumed lazily, so a config claiming 10^12 layers fails at the first missing
    tensor instead of listing them all first.
    """
    for name, shape in expected:
        if name not in checkpoint.tensors:
            raise CheckpointError(f"missing tensor {name!r} (the config implies it)")
        found = checkpoint.shape(name)
        if found != shape:
            raise CheckpointError(f"tensor {name!r} has shape {list(found)}, the config implies {list(shape)}")


def param(stage: str, name: str, rows, cols, latex: str, source: TensorRef) -> Param:
    """A parameter of a stage; block parameters carry the layer in their key and LaTeX."""
    key = f"{stage}.{{layer}}.{name}" if "{layer}" in source.name else f"{stage}.{name}"
    return Param(MatrixSymbol(name, rows, cols), latex, source, key)


def residual(x, update):
    """``x + update``, kept in that order when printed (sympy would sort the terms)."""
    return sp.MatAdd(x, update, evaluate=False)


def causal_self_attention(q, k, v, scale) -> list[Equation]:
    """Multi-head attention in which position i sees positions j <= i only."""
    return self_attention(q, k, v, scale, CausalMask)


def self_attention(q, k, v, scale, mask) -> list[Equation]:
    """Multi-head attention, stated for one generic head h; ``mask`` maps scores to masked scores.

    ``A_h = softmax(mask(scale · Q_h K_hᵀ))`` and ``Z = concat_h(A_h V_h)``.
    """
    q_h, k_h, v_h = (SplitHeads(x, n_head) for x in (q, k, v))
    a = MatrixSymbol("a", seq, seq)
    z = MatrixSymbol("z", seq, d_model)
    return [Equation(a, Softmax(mask(scale * q_h * k_h.T))), Equation(z, MergeHeads(a * v_h, n_head))]


def storage_notes(checkpoint: Checkpoint, stages: list[Stage]) -> list[str]:
    """For weights stored quantized (GGUF): per format, which weights use it and how it maps back.

    The equations use the dequantized float32 numbers, so the document says where they came from.
    """
    stored: dict[str, dict[str, set[int]]] = {}  # format -> symbol -> the layers (0-based) stored so
    layer_count: dict[str, int] = {}
    for stage in stages:
        layers = range(stage.layers or 1)
        for p in stage.params:
            layer_count[p.name] = len(layers)
            for index in layers:
                storage = checkpoint.tensors[p.source.for_layer(index if stage.layers else None).name].dtype
                if storage in QUANTIZATION_MAPS:
                    stored.setdefault(storage, {}).setdefault(p.name, set()).add(index)
    notes = []
    for storage, symbols in stored.items():
        names = [name if len(found) == layer_count[name]
                 else f"{name} (layers {', '.join(str(i + 1) for i in sorted(found))})"
                 for name, found in symbols.items()]
        notes.append(f"Stored as {storage} in the GGUF file: {', '.join(names)}. {QUANTIZATION_MAPS[storage]}; "
                     "the equations use these dequantized float32 values.")
    return notes
