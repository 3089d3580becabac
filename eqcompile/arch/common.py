"""Pieces every family shares: dimension symbols, config checks, parameters, attention."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..errors import CheckpointError, ConfigError
from ..load import Checkpoint
from ..load.files import shown
from ..load.gguf import QUANTIZATION_MAPS
from ..ops import (GELU, CausalMask, GELUTanh, GroupedHeads, Linear, MergeHeads, QuickGELU, ReLU, Sigmoid, SiLU,
                   Softmax, SplitHeads, Tanh, d_head, epsilon, n_head, n_kv_head, window)
from ..ops.rope import high_freq_factor, low_freq_factor, original_context, rope_factor, rope_theta
from ..program import Equation, Param, Stage, TensorRef

seq = sp.Symbol("n", integer=True, positive=True)  # number of tokens, set by the input
d_model = sp.Symbol("d", integer=True, positive=True)
d_ff = sp.Symbol("d_ff", integer=True, positive=True)
n_vocab = sp.Symbol("n_vocab", integer=True, positive=True)
n_ctx = sp.Symbol("n_ctx", integer=True, positive=True)
layer = sp.Symbol("l", integer=True, positive=True)  # 1-based layer index
HEAD_DIM_GUESS = 64  # GPT-2's and BERT-base's head width, assumed when no config.json gives the head count

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
    """Typed, checked access to a config dict: every problem is a one-line ``ConfigError``.

    Each method is one kind of value (an integer in a range, a finite number in a range, a flag,
    one of a set of names, a list of names per layer); the message names the key, what it expected
    and, cut short, what it found. Values of any other JSON kind (a list, an object, a 40-digit
    integer where a float is needed) fail here, never later inside sympy or transformers.
    """

    def __init__(self, config: dict, family: str):
        self.config, self.family = config, family

    def integer(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.config.get(key, default)
        if value is None:
            raise ConfigError(f"{self.family} config: missing {key!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._wrong(key, f"an integer >= {minimum}", value)
        return value

    def number(self, key: str, default: float | None, low: float = 0.0, high: float = 1.0) -> float:
        value = self.config.get(key, default)
        number = _as_float(value)
        if number is None or not (math.isfinite(number) and low <= number < high):  # NaN fails the range too
            raise self._wrong(key, f"a number in [{low}, {high})", value)
        return number

    def flag(self, key: str, default: bool) -> bool:
        value = self.config.get(key, default)
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false", value)
        return value

    def choice(self, key: str, default: str | None, allowed) -> str:
        value = self.config.get(key, default)
        if not isinstance(value, str) or value not in allowed:  # a list or object is not a name (nor hashable)
            raise ConfigError(f"{self.family} config: unsupported {key} {shown(value)} "
                              f"(supported: {', '.join(sorted(allowed))})")
        return value

    def names(self, key: str, allowed, count: int) -> list[str]:
        """A list of exactly ``count`` names from ``allowed`` (one per layer, say)."""
        value = self.config.get(key)
        if (not isinstance(value, list) or len(value) != count
                or not all(isinstance(item, str) and item in allowed for item in value)):
            raise self._wrong(key, f"a list of {count} names from {', '.join(sorted(allowed))}", value)
        return value

    def _wrong(self, key: str, expected: str, value) -> ConfigError:
        return ConfigError(f"{self.family} config: {key} must be {expected}, got {shown(value)}")


def _as_float(value) -> float | None:
    """A JSON number as a float (an integer past float's range is infinite); None for any other kind."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def expect_layers(checkpoint: Checkpoint, key: str, count: int, first_tensor: str) -> None:
    """The config's layer count, checked against the tensors present before anything loops over it.

    ``first_tensor`` names a tensor every layer has, with ``{layer}`` for its index: the last
    layer's must exist (a config claiming 10^9 layers fails here at once).
    """
    last = first_tensor.format(layer=count - 1)
    if last not in checkpoint.tensors:
        raise CheckpointError(f"the config's {key} is {count:,}, but the checkpoint has no tensor {shown(last)}")


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


def self_attention(q, k, v, scale, mask, kv_heads=None, width=d_model) -> list[Equation]:
    """Multi-head attention, stated for one generic head h; ``mask`` maps scores to masked scores.

    ``A_h = softmax(mask(scale · Q_h K_hᵀ))`` and ``Z = concat_h(A_h V_h)``. With ``kv_heads``
    (grouped-query attention) each key/value head serves n_head / n_kv consecutive query heads;
    ``width`` is Z's (n_head · d_head, which is d unless the config sets head_dim).
    """
    q_h = SplitHeads(q, n_head)
    k_h, v_h = ((GroupedHeads(x, kv_heads, n_head) if kv_heads is not None else SplitHeads(x, n_head))
                for x in (k, v))
    a = MatrixSymbol("a", seq, seq)
    z = MatrixSymbol("z", seq, width)
    return [Equation(a, Softmax(mask(scale * q_h * k_h.T))), Equation(z, MergeHeads(a * v_h, n_head))]


def unembedding(norm, norm_params: list[Param], embedding: str, tied: bool) -> Stage:
    """The final norm and the logits ``Z = H W_U``; a tied model's W_U is W_Eᵀ, read from ``embedding``.

    ``norm`` maps the residual stream to the normed one (LayerNorm or RMSNorm with its gains).
    """
    if tied:  # the same tensor as the embedding: W_U = W_Eᵀ
        W_E = param("embedding", "W_E", n_vocab, d_model, "W_E", TensorRef(embedding))
        unembed, params = W_E.symbol.T, [*norm_params, W_E]
    else:
        W_U = param("unembedding", "W_U", d_model, n_vocab, "W_U", TensorRef("lm_head.weight", transpose=True))
        unembed, params = W_U.symbol, [*norm_params, W_U]
    x, h = MatrixSymbol("x", seq, d_model), MatrixSymbol("h", seq, d_model)
    logits = MatrixSymbol("logits", seq, n_vocab)
    return Stage("unembedding", "Unembedding", "U", x, [Equation(h, norm(x)), Equation(logits, Linear(h, unembed))],
                 params, {"x": "X^{(L)}", "h": "H^{(L)}", "logits": "Z"})


def guess_heads(width: int) -> int:
    """The head count of a file with no config: heads of width 64 (GPT-2's and BERT-base's), else one."""
    return width // HEAD_DIM_GUESS if width % HEAD_DIM_GUESS == 0 else 1


def load_reference(model, checkpoint: Checkpoint, state_names: dict[str, str], dtype: str, tied: bool = False,
                   zeroed: Iterable[str] = ()):
    """``model`` (a torch module) holding the checkpoint's tensors, in ``dtype``, in eval mode.

    ``state_names`` maps the model's state-dict names to the checkpoint's tensor names. Any tensor
    the model expects and does not get (except a tied ``lm_head.weight``, and the ``zeroed`` ones,
    set to zero: an attention-only checkpoint's absent MLP), or gets and does not expect, is a
    ConfigError: the reference must compute exactly the checkpoint's model.
    """
    import torch

    state = {name: torch.from_numpy(np.array(checkpoint.tensor(stored))) for name, stored in state_names.items()}
    state.update({name: torch.zeros_like(model.state_dict()[name]) for name in zeroed})
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" or not tied]
    if missing or unexpected:
        raise ConfigError(f"reference model did not take the checkpoint (missing {missing}, unexpected {unexpected})")
    return model.to(getattr(torch, dtype)).eval()


def logits_of(model):
    """A causal LM's forward as verify calls it: token ids ``[n]`` -> float32 logits ``[n, n_vocab]``."""
    import torch

    def forward(tokens: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(tokens, dtype=torch.long)[None]).logits[0].float().numpy()

    return forward


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
