"""GPT-2 (transformers ``GPT2LMHeadModel`` / ``GPT2Model`` checkpoints) as a Program.

Pre-norm blocks: ``X^(l+½) = X^(l) + Attn(LN_1(X^(l)))``, ``X^(l+1) = X^(l+½) + MLP(LN_2(X^(l+½)))``.
Conv1D stores weights ``[in, out]``, which is already the ``X W`` orientation; the fused ``c_attn``
is sliced into W_Q, W_K, W_V; a tied unembedding is ``W_Eᵀ`` (``lm_head.weight`` is then absent).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..errors import ConfigError
from ..load import Checkpoint
from ..ops import Embed, LayerNorm, Linear, d_head, epsilon, n_head
from ..program import Equation, Program, Stage, TensorRef
from . import Family
from .common import (ACTIVATIONS, DIM_LATEX, DIM_PYTHON, causal_self_attention, ConfigReader, d_ff, d_model, expect_layers, expect_shapes, guess_heads, layer, load_reference, logits_of, n_ctx, n_vocab, param, residual, seq, unembedding)

@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    n_positions: int  # context length: rows of W_P
    n_embd: int  # width d of the residual stream
    n_layer: int
    n_head: int
    n_inner: int  # MLP width, 4 d when the config leaves it null
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True  # divide scores by sqrt(d_head)
    scale_attn_by_inverse_layer_idx: bool = False  # and by the layer number l
    tie_word_embeddings: bool = True  # W_U = W_Eᵀ
    attention_only: bool = False  # the blocks have no MLP (no mlp.* tensors): X^(l+1) = X^(l) + Attn(LN_1(X^(l)))


def read_config(checkpoint: Checkpoint) -> tuple[GPT2Config, str, list[str]]:
    """The config, the tensor-name prefix ("" or "transformer."), and any stated assumptions."""
    prefix = "transformer." if "transformer.wte.weight" in checkpoint.tensors else ""
    notes: list[str] = []
    raw = checkpoint.config
    if raw is None:
        raw, notes = _infer_config(checkpoint, prefix)
    config = config_from_dict(raw)
    if f"{prefix}h.0.ln_1.weight" in checkpoint.tensors and f"{prefix}h.0.mlp.c_fc.weight" not in checkpoint.tensors:
        config = replace(config, attention_only=True)  # its ln_2, if stored, reads nothing
    return config, prefix, notes


def config_from_dict(raw: dict) -> GPT2Config:
    """config.json's values, checked, with transformers' defaults."""
    cfg = ConfigReader(raw, "gpt2")
    for flag in ("add_cross_attention",):
        if cfg.flag(flag, False):
            raise ConfigError(f"gpt2 config: {flag}=true is not supported (decoder-only GPT-2 only)")
    n_embd = cfg.integer("n_embd")
    heads = cfg.integer("n_head")
    if n_embd % heads:
        raise ConfigError(f"gpt2 config: n_embd={n_embd} is not divisible by n_head={heads}")
    inner = raw.get("n_inner")
    return GPT2Config(
        vocab_size=cfg.integer("vocab_size"),
        n_positions=cfg.integer("n_positions"),
        n_embd=n_embd,
        n_layer=cfg.integer("n_layer"),
        n_head=heads,
        n_inner=4 * n_embd if inner is None else cfg.integer("n_inner"),
        activation_function=cfg.choice("activation_function", "gelu_new", ACTIVATIONS),
        layer_norm_epsilon=cfg.number("layer_norm_epsilon", 1e-5),
        scale_attn_weights=cfg.flag("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=cfg.flag("scale_attn_by_inverse_layer_idx", False),
        tie_word_embeddings=cfg.flag("tie_word_embeddings", True),
    )


def _infer_config(checkpoint: Checkpoint, prefix: str) -> tuple[dict, list[str]]:
    """A config from tensor names and shapes, for a bare safetensors file."""
    vocab, width = checkpoint.shape(prefix + "wte.weight")
    layers = 0
    while f"{prefix}h.{layers}.ln_1.weight" in checkpoint.tensors:
        layers += 1
    heads = guess_heads(width)
    config = {
        "vocab_size": vocab, "n_positions": checkpoint.shape(prefix + "wpe.weight")[0],
        "n_embd": width, "n_layer": layers, "n_head": heads,
        "n_inner": checkpoint.shape(f"{prefix}h.0.mlp.c_fc.weight")[1]
        if f"{prefix}h.0.mlp.c_fc.weight" in checkpoint.tensors else None,
        "tie_word_embeddings": "lm_head.weight" not in checkpoint.tensors,
    }
    notes = [f"no config.json: inferred a GPT-2 with {layers} layers, d = {width}, "
             f"vocabulary {vocab}; assumed n_head = {heads} (head width {width // heads}), "
             "epsilon = 1e-5 and gelu_new. Put a config.json beside the file to state them."]
    return config, notes


def recognises(checkpoint: Checkpoint) -> bool:
    names = checkpoint.tensors
    return any(f"{p}wte.weight" in names and f"{p}wpe.weight" in names for p in ("", "transformer."))


def lower(checkpoint: Checkpoint) -> Program:
    config, prefix, notes = read_config(checkpoint)
    d, inner, vocab = config.n_embd, config.n_inner, config.vocab_size
    h = "{layer}"
    expect_layers(checkpoint, "n_layer", config.n_layer, prefix + "h.{layer}.ln_1.weight")
    expect_shapes(checkpoint, expected_tensors(config, prefix))

    stages = [_embedding(prefix), _block(config, prefix + f"h.{h}."), _unembedding(config, prefix)]
    dims = {d_model: d, d_ff: inner, n_vocab: vocab, n_ctx: config.n_positions,
            n_head: config.n_head, d_head: d // config.n_head, epsilon: config.layer_norm_epsilon}
    if config.attention_only:
        del dims[d_ff]
    return Program(
        family="gpt2", stages=stages, dims=dims,
        dim_latex=DIM_LATEX, dim_python=DIM_PYTHON,
        input_symbol=stages[0].input, positions=stages[0].extra_inputs[0], seq=seq, max_seq=config.n_positions, vocab=vocab,
        source=checkpoint.source, notes=notes, config=asdict(config),
    )


def expected_tensors(config: GPT2Config, prefix: str = ""):
    """(name, stored shape) of every tensor the lowering binds, layer by layer."""
    d, inner, vocab = config.n_embd, config.n_inner, config.vocab_size
    yield from [(f"{prefix}wte.weight", (vocab, d)), (f"{prefix}wpe.weight", (config.n_positions, d)),
                (f"{prefix}ln_f.weight", (d,)), (f"{prefix}ln_f.bias", (d,))]
    if not config.tie_word_embeddings:
        yield "lm_head.weight", (vocab, d)
    for index in range(config.n_layer):
        block = f"{prefix}h.{index}."
        yield from [
            (block + "ln_1.weight", (d,)), (block + "ln_1.bias", (d,)),
            (block + "attn.c_attn.weight", (d, 3 * d)), (block + "attn.c_attn.bias", (3 * d,)),
            (block + "attn.c_proj.weight", (d, d)), (block + "attn.c_proj.bias", (d,)),
        ]
        if config.attention_only:
            continue
        yield from [
            (block + "ln_2.weight", (d,)), (block + "ln_2.bias", (d,)),
            (block + "mlp.c_fc.weight", (d, inner)), (block + "mlp.c_fc.bias", (inner,)),
            (block + "mlp.c_proj.weight", (inner, d)), (block + "mlp.c_proj.bias", (d,)),
        ]


def _embedding(prefix: str) -> Stage:
    t, positions = MatrixSymbol("t", seq, 1), MatrixSymbol("p", seq, 1)
    W_E = param("embedding", "W_E", n_vocab, d_model, "W_E", TensorRef(prefix + "wte.weight"))
    W_P = param("embedding", "W_P", n_ctx, d_model, "W_P", TensorRef(prefix + "wpe.weight"))
    x0 = MatrixSymbol("x", seq, d_model)
    return Stage("embedding", "Embedding", "E", t,
                 [Equation(x0, residual(Embed(W_E.symbol, t), Embed(W_P.symbol, positions)))],
                 [W_E, W_P], {"t": "t", "p": "p", "x": "X^{(0)}"}, extra_inputs=(positions,))


def _block(config: GPT2Config, block: str) -> Stage:
    d, inner = d_model, d_ff

    def p(name, rows, cols, latex, tensor, columns=None):
        return param("block", name, rows, cols, latex + "^{($l)}", TensorRef(block + tensor, columns))

    width = config.n_embd
    gamma_1, beta_1 = p("gamma_1", 1, d, r"\gamma_1", "ln_1.weight"), p("beta_1", 1, d, r"\beta_1", "ln_1.bias")
    W_Q = p("W_Q", d, d, "W_Q", "attn.c_attn.weight", (0, width))
    W_K = p("W_K", d, d, "W_K", "attn.c_attn.weight", (width, 2 * width))
    W_V = p("W_V", d, d, "W_V", "attn.c_attn.weight", (2 * width, 3 * width))
    b_Q = p("b_Q", 1, d, "b_Q", "attn.c_attn.bias", (0, width))
    b_K = p("b_K", 1, d, "b_K", "attn.c_attn.bias", (width, 2 * width))
    b_V = p("b_V", 1, d, "b_V", "attn.c_attn.bias", (2 * width, 3 * width))
    W_O, b_O = p("W_O", d, d, "W_O", "attn.c_proj.weight"), p("b_O", 1, d, "b_O", "attn.c_proj.bias")
    gamma_2, beta_2 = p("gamma_2", 1, d, r"\gamma_2", "ln_2.weight"), p("beta_2", 1, d, r"\beta_2", "ln_2.bias")
    W_in = p("W_in", d, inner, r"W_{\mathrm{in}}", "mlp.c_fc.weight")
    b_in = p("b_in", 1, inner, r"b_{\mathrm{in}}", "mlp.c_fc.bias")
    W_out = p("W_out", inner, d, r"W_{\mathrm{out}}", "mlp.c_proj.weight")
    b_out = p("b_out", 1, d, r"b_{\mathrm{out}}", "mlp.c_proj.bias")
    params = [gamma_1, beta_1, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, gamma_2, beta_2, W_in, b_in, W_out, b_out]

    x, h, q, k, v, x_mid, h_mid, m, x_next = (
        MatrixSymbol(name, seq, cols) for name, cols in
        [("x", d), ("h", d), ("q", d), ("k", d), ("v", d), ("x_mid", d), ("h_mid", d), ("m", inner), ("x_next", d)])
    scale = sp.Integer(1)
    if config.scale_attn_weights:
        scale = scale / sp.sqrt(d_head)
    if config.scale_attn_by_inverse_layer_idx:
        scale = scale / layer
    activation = ACTIVATIONS[config.activation_function]
    attention = causal_self_attention(q, k, v, scale)
    z = attention[-1].lhs
    equations = [
        Equation(h, LayerNorm(x, gamma_1.symbol, beta_1.symbol, epsilon)),
        Equation(q, Linear(h, W_Q.symbol, b_Q.symbol)),
        Equation(k, Linear(h, W_K.symbol, b_K.symbol)),
        Equation(v, Linear(h, W_V.symbol, b_V.symbol)),
        *attention,
        Equation(x_mid, residual(x, Linear(z, W_O.symbol, b_O.symbol))),
        Equation(h_mid, LayerNorm(x_mid, gamma_2.symbol, beta_2.symbol, epsilon)),
        Equation(m, activation(Linear(h_mid, W_in.symbol, b_in.symbol))),
        Equation(x_next, residual(x_mid, Linear(m, W_out.symbol, b_out.symbol))),
    ]
    if config.attention_only:  # the attention's update is the block's
        equations = [*equations[:len(attention) + 4], Equation(x_next, residual(x, Linear(z, W_O.symbol, b_O.symbol)))]
        params = params[:10]
    names = {"x": "X^{($l)}", "h": "H^{($l)}", "q": "Q^{($l)}", "k": "K^{($l)}", "v": "V^{($l)}",
             "a": "A^{($l)}_h", "z": "Z^{($l)}", "x_mid": "X^{($half)}", "h_mid": r"\tilde{H}^{($l)}",
             "m": "M^{($l)}", "x_next": "X^{($next)}"}
    return Stage("block", "Transformer block", "B", x, equations, params, names,
                 layers=config.n_layer, cached=(k, v),
                 layer_symbols=(layer,) if config.scale_attn_by_inverse_layer_idx else ())


def _unembedding(config: GPT2Config, prefix: str) -> Stage:
    gamma_f = param("unembedding", "gamma_f", 1, d_model, r"\gamma_f", TensorRef(prefix + "ln_f.weight"))
    beta_f = param("unembedding", "beta_f", 1, d_model, r"\beta_f", TensorRef(prefix + "ln_f.bias"))
    return unembedding(lambda x: LayerNorm(x, gamma_f.symbol, beta_f.symbol, epsilon), [gamma_f, beta_f],
                       prefix + "wte.weight", config.tie_word_embeddings)


def reference(checkpoint: Checkpoint, dtype: str = "float32"):
    """transformers' GPT2LMHeadModel on the checkpoint's tensors, computing in ``dtype``."""
    import transformers
    from transformers import GPT2Config as HFConfig, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    config, prefix, _ = read_config(checkpoint)
    hf_config = HFConfig(**checkpoint.config) if checkpoint.config else HFConfig(
        **asdict(config), bos_token_id=None, eos_token_id=None)
    names = {"transformer." + name[len(prefix):]: name for name in checkpoint.tensors
             if name.startswith(prefix) and not name.startswith("lm_head")
             and not name.endswith((".attn.bias", ".attn.masked_bias"))}
    if "lm_head.weight" in checkpoint.tensors and not config.tie_word_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    model = GPT2LMHeadModel(hf_config)
    zeroed = [name for name in model.state_dict() if ".mlp." in name or ".ln_2." in name] if config.attention_only else []
    names = {key: name for key, name in names.items() if key not in zeroed}  # a stored ln_2 reads nothing
    return logits_of(load_reference(model, checkpoint, names, dtype, config.tie_word_embeddings, zeroed))


FAMILY = Family("gpt2", ("gpt2",), recognises, lower, reference,
                tensors=lambda config: expected_tensors(config_from_dict(config)))
