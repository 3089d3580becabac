"""The Llama family (transformers ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``).

Pre-norm blocks with RMSNorm: ``X^(l+½) = X^(l) + Attn(RMSNorm(X^(l)))`` and
``X^(l+1) = X^(l+½) + (SiLU(H W_gate) ⊙ (H W_up)) W_down`` with ``H = RMSNorm(X^(l+½))``. Queries
and keys are rotated by RoPE; with fewer key/value heads than query heads (grouped-query attention)
query head h reads key/value head g(h). Mistral and Qwen2 differ from Llama only in flags: a sliding
attention window, and Qwen2's biases on W_Q, W_K, W_V. ``nn.Linear`` stores ``[out, in]``, so every
weight is bound transposed into the ``X W`` orientation. GGUF files arrive here already mapped to
these names and this config (``load/gguf.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import sympy as sp
from sympy import HadamardProduct
from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..errors import ConfigError
from ..load import Checkpoint
from ..ops import (CausalMask, Embed, Linear, Llama3Frequencies, RMSNorm, RoPE, RotaryFrequencies, SiLU,
                   SlidingWindowMask, d_head, epsilon, n_head, n_kv_head, window)
from ..ops.rope import high_freq_factor, low_freq_factor, original_context, rope_factor, rope_theta
from ..program import Equation, Program, Stage, TensorRef
from . import Family
from .common import (DIM_LATEX, DIM_PYTHON, ConfigReader, d_ff, d_model, expect_shapes, load_reference, logits_of,
                     n_ctx, n_vocab, param, residual, self_attention, seq, storage_notes, unembedding)

ROPE_TYPES = ("default", "linear", "llama3")  # position-static RoPE types transformers has for Llama
ACTIVATIONS = {"silu": SiLU, "swish": SiLU}  # transformers' ACT2FN names for the SwiGLU gate


@dataclass(frozen=True)
class RopeConfig:
    rope_type: str = "default"  # default, linear or llama3
    rope_theta: float = 10000.0  # the base of the frequencies
    factor: float = 1.0  # s: linear divides every frequency by it, llama3 the low ones
    low_freq_factor: float | None = None  # llama3: wavelengths above n_orig / low_freq_factor are scaled
    high_freq_factor: float | None = None  # llama3: wavelengths below n_orig / high_freq_factor are kept
    original_max_position_embeddings: int | None = None  # llama3: n_orig, the pre-training context


@dataclass(frozen=True)
class LlamaConfig:
    model_type: str  # llama, mistral or qwen2
    vocab_size: int
    hidden_size: int  # width d of the residual stream
    intermediate_size: int  # SwiGLU width d_ff
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int  # fewer than num_attention_heads: grouped-query attention
    head_dim: int
    max_position_embeddings: int  # context length n_ctx
    rms_norm_eps: float
    rope: RopeConfig
    tie_word_embeddings: bool  # W_U = W_Eᵀ
    qkv_bias: bool  # b_Q, b_K, b_V (Llama's attention_bias; always on in Qwen2)
    output_bias: bool  # b_O (Llama's attention_bias)
    mlp_bias: bool  # b_gate, b_up, b_down (Llama's mlp_bias)
    sliding_window: int | None  # each position sees the last w positions (Mistral, Qwen2); None: all


def read_config(checkpoint: Checkpoint) -> LlamaConfig:
    raw = checkpoint.config
    if raw is None:
        raise ConfigError("a Llama-family checkpoint needs its config.json: RoPE base, epsilon and head "
                          "counts cannot be read from tensor shapes")
    return config_from_dict(raw)


def config_from_dict(raw: dict) -> LlamaConfig:
    """config.json's values, checked, read as transformers reads them."""
    model_type = raw.get("model_type", "llama")
    cfg = ConfigReader(raw, model_type)
    hidden, heads = cfg.integer("hidden_size"), cfg.integer("num_attention_heads")
    layers = cfg.integer("num_hidden_layers")
    kv_heads = heads if raw.get("num_key_value_heads") is None else cfg.integer("num_key_value_heads")
    if heads % kv_heads:
        raise ConfigError(f"{model_type} config: num_attention_heads={heads} is not a multiple of "
                          f"num_key_value_heads={kv_heads}")
    if raw.get("head_dim") is None and hidden % heads:
        raise ConfigError(f"{model_type} config: hidden_size={hidden} is not divisible by "
                          f"num_attention_heads={heads}")
    head_dim = hidden // heads if raw.get("head_dim") is None else cfg.integer("head_dim")
    if head_dim % 2:
        raise ConfigError(f"{model_type} config: head_dim={head_dim} is odd; RoPE rotates feature pairs")
    cfg.choice("hidden_act", "silu", ACTIVATIONS)
    context = cfg.integer("max_position_embeddings")
    qwen2, llama = model_type == "qwen2", model_type == "llama"
    attention_bias = llama and cfg.flag("attention_bias", False)
    return LlamaConfig(
        model_type=model_type,
        vocab_size=cfg.integer("vocab_size"),
        hidden_size=hidden,
        intermediate_size=cfg.integer("intermediate_size"),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=context,
        rms_norm_eps=cfg.number("rms_norm_eps", 1e-6),
        rope=_read_rope(raw, model_type, context),
        tie_word_embeddings=cfg.flag("tie_word_embeddings", False),
        qkv_bias=qwen2 or attention_bias,
        output_bias=attention_bias,
        mlp_bias=llama and cfg.flag("mlp_bias", False),
        sliding_window=_sliding_window(raw, cfg, model_type, layers, context),
    )


def _read_rope(raw: dict, model_type: str, context: int) -> RopeConfig:
    """``rope_scaling`` (older configs) or ``rope_parameters`` (transformers 5), as transformers reads them."""
    params = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{model_type} config: rope_parameters must be an object, got {params!r}")
    params = {**params, "rope_type": params.get("rope_type", params.get("type", "default")),
              "rope_theta": params.get("rope_theta", raw.get("rope_theta", 10000.0))}
    cfg = ConfigReader(params, f"{model_type} rope")
    rope_type = cfg.choice("rope_type", "default", ROPE_TYPES)
    partial = params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ConfigError(f"{model_type} config: partial_rotary_factor={partial!r} is not supported (only 1.0)")
    theta = cfg.number("rope_theta", 10000.0, low=1.0, high=math.inf)
    if rope_type == "default":
        return RopeConfig("default", theta)
    factor = cfg.number("factor", None, low=1.0, high=math.inf)
    if rope_type == "linear":
        return RopeConfig("linear", theta, factor)
    low, high = (cfg.number(key, None, low=0.0, high=math.inf) for key in ("low_freq_factor", "high_freq_factor"))
    if not 0 < low < high:
        raise ConfigError(f"{model_type} rope config: need 0 < low_freq_factor < high_freq_factor, "
                          f"got {low} and {high}")
    original = cfg.integer("original_max_position_embeddings", context)
    return RopeConfig("llama3", theta, factor, low, high, original)


def _sliding_window(raw: dict, cfg: ConfigReader, model_type: str, layers: int, context: int) -> int | None:
    """The window every layer uses, or None; a window as long as the context changes nothing."""
    if model_type == "mistral":
        size = 4096 if "sliding_window" not in raw else raw["sliding_window"]  # MistralConfig's default
        sliding = [size is not None] * layers
    elif model_type == "qwen2" and cfg.flag("use_sliding_window", False):
        size = raw.get("sliding_window", 4096)
        first = cfg.integer("max_window_layers", 28, minimum=0)
        types = raw.get("layer_types") or ["sliding_attention" if i >= first else "full_attention"
                                           for i in range(layers)]
        sliding = [kind == "sliding_attention" for kind in types]
    else:
        return None
    if size is None or not any(sliding):
        return None
    if not all(sliding):
        raise ConfigError(f"{model_type} config: a sliding window on only some layers is not supported")
    size = ConfigReader({"sliding_window": size}, model_type).integer("sliding_window")
    return size if size < context else None


def recognises(checkpoint: Checkpoint) -> bool:
    names = checkpoint.tensors
    return "model.embed_tokens.weight" in names and "model.layers.0.mlp.gate_proj.weight" in names


def expected_tensors(config: LlamaConfig):
    """(name, stored shape) of every tensor the lowering binds, layer by layer (lazily)."""
    d, inner, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    width_q = config.num_attention_heads * config.head_dim
    width_kv = config.num_key_value_heads * config.head_dim
    yield from [("model.embed_tokens.weight", (vocab, d)), ("model.norm.weight", (d,))]
    if not config.tie_word_embeddings:
        yield "lm_head.weight", (vocab, d)
    projections = {"self_attn.q_proj": (width_q, d, config.qkv_bias),
                   "self_attn.k_proj": (width_kv, d, config.qkv_bias),
                   "self_attn.v_proj": (width_kv, d, config.qkv_bias),
                   "self_attn.o_proj": (d, width_q, config.output_bias),
                   "mlp.gate_proj": (inner, d, config.mlp_bias), "mlp.up_proj": (inner, d, config.mlp_bias),
                   "mlp.down_proj": (d, inner, config.mlp_bias)}
    for index in range(config.num_hidden_layers):
        block = f"model.layers.{index}."
        yield from [(block + "input_layernorm.weight", (d,)), (block + "post_attention_layernorm.weight", (d,))]
        for name, (rows, cols, bias) in projections.items():
            yield block + name + ".weight", (rows, cols)
            if bias:
                yield block + name + ".bias", (rows,)


def lower(checkpoint: Checkpoint) -> Program:
    config = read_config(checkpoint)
    expect_shapes(checkpoint, expected_tensors(config))
    stages = [_embedding(), _block(config), _unembedding(config)]
    rope = config.rope
    dims = {d_model: config.hidden_size, d_ff: config.intermediate_size, n_vocab: config.vocab_size,
            n_ctx: config.max_position_embeddings, n_head: config.num_attention_heads,
            n_kv_head: config.num_key_value_heads, d_head: config.head_dim, epsilon: config.rms_norm_eps,
            rope_theta: rope.rope_theta}
    if rope.rope_type != "default":
        dims[rope_factor] = rope.factor
    if rope.rope_type == "llama3":
        dims.update({low_freq_factor: rope.low_freq_factor, high_freq_factor: rope.high_freq_factor,
                     original_context: rope.original_max_position_embeddings})
    if config.sliding_window:
        dims[window] = config.sliding_window
    return Program(
        family=config.model_type, stages=stages, dims=dims, dim_latex=DIM_LATEX, dim_python=DIM_PYTHON,
        input_symbol=stages[0].input, positions=stages[1].extra_inputs[0], seq=seq,
        max_seq=config.max_position_embeddings, vocab=config.vocab_size,
        source=checkpoint.source, notes=storage_notes(checkpoint, stages), config=asdict(config),
    )


def _embedding() -> Stage:
    t = MatrixSymbol("t", seq, 1)
    W_E = param("embedding", "W_E", n_vocab, d_model, "W_E", TensorRef("model.embed_tokens.weight"))
    x0 = MatrixSymbol("x", seq, d_model)
    return Stage("embedding", "Embedding", "E", t, [Equation(x0, Embed(W_E.symbol, t))], [W_E],
                 {"t": "t", "x": "X^{(0)}"})


def _frequencies(rope: RopeConfig):
    """The RoPE frequency vector θ (one entry per feature pair) with its scaling."""
    frequencies = RotaryFrequencies(rope_theta, d_head)
    if rope.rope_type == "linear":
        return frequencies / rope_factor
    if rope.rope_type == "llama3":
        return Llama3Frequencies(frequencies, rope_factor, low_freq_factor, high_freq_factor, original_context)
    return frequencies


def _block(config: LlamaConfig) -> Stage:
    d, inner = d_model, d_ff
    width_q, width_kv = n_head * d_head, n_kv_head * d_head

    def p(name, rows, cols, latex, tensor, transpose=True):
        return param("block", name, rows, cols, latex + "^{($l)}", TensorRef(f"model.layers.{{layer}}.{tensor}",
                                                                            transpose=transpose))

    def affine(x, name, latex, module, rows, cols, bias):
        """``x W (+ 1 b)`` for an nn.Linear ``module``, and the parameters it binds."""
        weight = p(f"W_{name}", rows, cols, f"W_{{{latex}}}", f"{module}.weight")
        if not bias:
            return Linear(x, weight.symbol), [weight]
        b = p(f"b_{name}", 1, cols, f"b_{{{latex}}}", f"{module}.bias", transpose=False)
        return Linear(x, weight.symbol, b.symbol), [weight, b]

    gamma_1 = p("gamma_1", 1, d, r"\gamma_1", "input_layernorm.weight", transpose=False)
    gamma_2 = p("gamma_2", 1, d, r"\gamma_2", "post_attention_layernorm.weight", transpose=False)
    theta = MatrixSymbol("theta", 1, d_head / 2)
    positions = MatrixSymbol("p", seq, 1)  # 0-based positions of the rows: RoPE turns by them
    x, h, q, k, v, z, x_mid, h_mid, m, x_next = (
        MatrixSymbol(name, seq, cols) for name, cols in
        [("x", d), ("h", d), ("q", width_q), ("k", width_kv), ("v", width_kv), ("z", width_q),
         ("x_mid", d), ("h_mid", d), ("m", inner), ("x_next", d)])
    query, query_params = affine(h, "Q", "Q", "self_attn.q_proj", d, width_q, config.qkv_bias)
    key, key_params = affine(h, "K", "K", "self_attn.k_proj", d, width_kv, config.qkv_bias)
    value, value_params = affine(h, "V", "V", "self_attn.v_proj", d, width_kv, config.qkv_bias)
    output, output_params = affine(z, "O", "O", "self_attn.o_proj", width_q, d, config.output_bias)
    gate, gate_params = affine(h_mid, "gate", r"\mathrm{gate}", "mlp.gate_proj", d, inner, config.mlp_bias)
    up, up_params = affine(h_mid, "up", r"\mathrm{up}", "mlp.up_proj", d, inner, config.mlp_bias)
    down, down_params = affine(m, "down", r"\mathrm{down}", "mlp.down_proj", inner, d, config.mlp_bias)

    grouped = config.num_key_value_heads != config.num_attention_heads
    mask = (lambda scores: SlidingWindowMask(scores, window)) if config.sliding_window else CausalMask
    attention = self_attention(q, k, v, sp.Integer(1) / sp.sqrt(d_head), mask, n_kv_head if grouped else None,
                               width_q)
    equations = [
        Equation(theta, _frequencies(config.rope)),
        Equation(h, RMSNorm(x, gamma_1.symbol, epsilon)),
        Equation(q, RoPE(query, theta, positions)), Equation(k, RoPE(key, theta, positions)), Equation(v, value),
        *attention,
        Equation(x_mid, residual(x, output)),
        Equation(h_mid, RMSNorm(x_mid, gamma_2.symbol, epsilon)),
        Equation(m, HadamardProduct(SiLU(gate), up)),
        Equation(x_next, residual(x_mid, down)),
    ]
    params = [gamma_1, *query_params, *key_params, *value_params, *output_params, gamma_2, *gate_params,
              *up_params, *down_params]
    names = {"theta": r"\theta", "p": "p", "x": "X^{($l)}", "h": "H^{($l)}", "q": "Q^{($l)}", "k": "K^{($l)}",
             "v": "V^{($l)}", "a": "A^{($l)}_h", "z": "Z^{($l)}", "x_mid": "X^{($half)}",
             "h_mid": r"\tilde{H}^{($l)}", "m": "M^{($l)}", "x_next": "X^{($next)}"}
    return Stage("block", "Transformer block", "B", x, equations, params, names, layers=config.num_hidden_layers,
                 extra_inputs=(positions,), cached=(k, v))


def _unembedding(config: LlamaConfig) -> Stage:
    gamma_f = param("unembedding", "gamma_f", 1, d_model, r"\gamma_f", TensorRef("model.norm.weight"))
    return unembedding(lambda x: RMSNorm(x, gamma_f.symbol, epsilon), [gamma_f], "model.embed_tokens.weight",
                       config.tie_word_embeddings)


MODEL_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def reference(checkpoint: Checkpoint, dtype: str = "float32"):
    """transformers' ``<Family>ForCausalLM`` on the checkpoint's tensors, computing in ``dtype``."""
    import transformers

    transformers.logging.set_verbosity_error()
    config = read_config(checkpoint)
    model = getattr(transformers, MODEL_CLASSES[config.model_type])(transformers.AutoConfig.for_model(**checkpoint.config))
    names = {name: name for name in checkpoint.tensors}
    return logits_of(load_reference(model, checkpoint, names, dtype, config.tie_word_embeddings))


FAMILY = Family("llama", ("llama", "mistral", "qwen2"), recognises, lower, reference,
                tensors=lambda config: expected_tensors(config_from_dict(config)))
