"""BERT encoders (transformers ``BertModel`` checkpoints, e.g. MiniLM sentence encoders) as a Program.

Post-norm blocks: ``X^(l+½) = LN_1(X^(l) + Attn(X^(l)))``, ``X^(l+1) = LN_2(X^(l+½) + MLP(X^(l+½)))``.
The embedding adds word, token-type (segment) and position rows and normalises them. Attention is
bidirectional; padded keys (attention mask 0) are masked out. The output is the last hidden states,
or with the setting ``pooling="mean"`` (``--pooling mean``) their mean over the unpadded tokens
(sentence-transformers' pooling), in the equations, the emitted module and the reference alike.
``nn.Linear`` stores weights ``[out, in]``: they are transposed into the ``X W`` orientation. The
pooler (``pooler.dense``) feeds no output here and is not bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..errors import ConfigError
from ..load import Checkpoint
from ..ops import Embed, FirstRows, LayerNorm, Linear, MeanPool, PaddingMask, d_head, epsilon, n_head
from ..program import Equation, Interface, Program, Stage, TensorRef
from . import Family
from .common import (ACTIVATIONS, DIM_LATEX, DIM_PYTHON, ConfigReader, d_ff, d_model, expect_layers, expect_shapes,
                     guess_heads, load_reference, n_ctx, n_vocab, param, residual, self_attention, seq)

n_types = sp.Symbol("n_types", integer=True, positive=True)  # rows of the token-type table
POOLINGS = ("none", "mean")
# the extra inputs of the stages; templates/forward_encoder.py.j2 defines variables of these names
TOKEN_TYPES = MatrixSymbol("token_type_ids", seq, 1)
ATTENTION_MASK = MatrixSymbol("attention_mask", 1, seq)
# what the literal equation (--expand) fixes them at, as forward() defaults them: one unpadded
# sequence (mask 1 at every key) of the first segment (token type 0)
LITERAL_INPUTS = {ATTENTION_MASK: 1, TOKEN_TYPES: 0}


@dataclass(frozen=True)
class BertConfig:  # field names are transformers' BertConfig names, except eqcompile's pooling
    vocab_size: int
    hidden_size: int  # width d of the hidden states
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int  # MLP width d_ff
    max_position_embeddings: int  # rows of W_P: the longest input
    type_vocab_size: int = 2  # rows of W_S: token types (segments)
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    pooling: str = "none"  # "mean": end with the mean of the hidden states over the unpadded tokens


def read_config(checkpoint: Checkpoint) -> tuple[BertConfig, str, list[str]]:
    """The config, the tensor-name prefix ("" or "bert."), and any stated assumptions."""
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in checkpoint.tensors else ""
    notes: list[str] = []
    raw = checkpoint.config or {}
    if "model_type" not in raw:  # no config.json (at most command-line settings): infer the rest
        inferred, notes = _infer_config(checkpoint, prefix)
        raw = {**inferred, **raw}
    cfg = ConfigReader(raw, "bert")
    for flag in ("is_decoder", "add_cross_attention"):
        if cfg.flag(flag, False):
            raise ConfigError(f"bert config: {flag}=true is not supported (bidirectional encoders only)")
    cfg.choice("position_embedding_type", "absolute", ("absolute",))
    width, heads = cfg.integer("hidden_size"), cfg.integer("num_attention_heads")
    if width % heads:
        raise ConfigError(f"bert config: hidden_size={width} is not divisible by num_attention_heads={heads}")
    config = BertConfig(
        vocab_size=cfg.integer("vocab_size"),
        hidden_size=width,
        num_hidden_layers=cfg.integer("num_hidden_layers"),
        num_attention_heads=heads,
        intermediate_size=cfg.integer("intermediate_size"),
        max_position_embeddings=cfg.integer("max_position_embeddings"),
        type_vocab_size=cfg.integer("type_vocab_size", 2),
        hidden_act=cfg.choice("hidden_act", "gelu", ACTIVATIONS),
        layer_norm_eps=cfg.number("layer_norm_eps", 1e-12),
        pooling=cfg.choice("pooling", "none", POOLINGS),
    )
    return config, prefix, notes


def _infer_config(checkpoint: Checkpoint, prefix: str) -> tuple[dict, list[str]]:
    """A config from tensor names and shapes, for a bare safetensors file."""
    embeddings = prefix + "embeddings."
    vocab, width = checkpoint.shape(embeddings + "word_embeddings.weight")
    layers = 0
    while f"{prefix}encoder.layer.{layers}.output.dense.weight" in checkpoint.tensors:
        layers += 1
    heads = guess_heads(width)
    intermediate = f"{prefix}encoder.layer.0.intermediate.dense.weight"
    config = {  # a tensor missing here is reported by the shape check of lower()
        "vocab_size": vocab, "hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": heads,
        "max_position_embeddings": _rows(checkpoint, embeddings + "position_embeddings.weight", 1),
        "type_vocab_size": _rows(checkpoint, embeddings + "token_type_embeddings.weight", 1),
        "intermediate_size": _rows(checkpoint, intermediate, 4 * width),
    }
    notes = [f"no config.json: inferred a BERT encoder with {layers} layers, d = {width}, "
             f"vocabulary {vocab}; assumed {heads} heads (head width {width // heads}), "
             "epsilon = 1e-12 and exact GELU. Put a config.json beside the file to state them."]
    return config, notes


def _rows(checkpoint: Checkpoint, name: str, default: int) -> int:
    return checkpoint.shape(name)[0] if name in checkpoint.tensors else default


def recognises(checkpoint: Checkpoint) -> bool:
    return any(f"{p}embeddings.word_embeddings.weight" in checkpoint.tensors for p in ("", "bert."))


def lower(checkpoint: Checkpoint) -> Program:
    config, prefix, notes = read_config(checkpoint)
    d, inner, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    embeddings = prefix + "embeddings."
    expect_layers(checkpoint, "num_hidden_layers", config.num_hidden_layers,
                  prefix + "encoder.layer.{layer}.attention.self.query.weight")
    expect_shapes(checkpoint, _expected_tensors(config, prefix))

    notes.append("Inputs: token ids t, token type (segment) ids s, and the attention mask m, 1 for a token "
                 "and 0 for padding. A padded key's score is minus infinity; transformers adds the most "
                 "negative float32 or passes a boolean mask, the same softmax while one token is unmasked.")
    stages = [_embedding(embeddings), _block(config, f"{prefix}encoder.layer.{{layer}}.")]
    if config.pooling == "mean":
        stages.append(_mean_pooling())
    return Program(
        family="bert", stages=stages,
        dims={d_model: d, d_ff: inner, n_vocab: vocab, n_ctx: config.max_position_embeddings,
              n_types: config.type_vocab_size, n_head: config.num_attention_heads,
              d_head: d // config.num_attention_heads, epsilon: config.layer_norm_eps},
        dim_latex={**DIM_LATEX, n_types: r"n_{\mathrm{types}}"}, dim_python={**DIM_PYTHON, n_types: "n_types"},
        input_symbol=stages[0].input, seq=seq, max_seq=config.max_position_embeddings, vocab=vocab,
        interface=Interface.ENCODER, source=checkpoint.source, notes=notes, config=asdict(config),
        input_defaults=LITERAL_INPUTS,
    )


def _expected_tensors(config: BertConfig, prefix: str):
    """(name, stored shape) of every tensor the lowering binds, layer by layer (lazily)."""
    d, inner = config.hidden_size, config.intermediate_size
    embeddings = prefix + "embeddings."
    yield from [(embeddings + "word_embeddings.weight", (config.vocab_size, d)),
                (embeddings + "position_embeddings.weight", (config.max_position_embeddings, d)),
                (embeddings + "token_type_embeddings.weight", (config.type_vocab_size, d)),
                (embeddings + "LayerNorm.weight", (d,)), (embeddings + "LayerNorm.bias", (d,))]
    for index in range(config.num_hidden_layers):
        block = f"{prefix}encoder.layer.{index}."
        for linear, shape in [("attention.self.query", (d, d)), ("attention.self.key", (d, d)),
                              ("attention.self.value", (d, d)), ("attention.output.dense", (d, d)),
                              ("intermediate.dense", (inner, d)), ("output.dense", (d, inner))]:
            yield from [(f"{block}{linear}.weight", shape), (f"{block}{linear}.bias", shape[:1])]
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            yield from [(f"{block}{norm}.weight", (d,)), (f"{block}{norm}.bias", (d,))]


def _embedding(embeddings: str) -> Stage:
    def p(name, rows, cols, latex, tensor):
        return param("embedding", name, rows, cols, latex, TensorRef(embeddings + tensor))

    t = MatrixSymbol("t", seq, 1)
    W_E = p("W_E", n_vocab, d_model, "W_E", "word_embeddings.weight")
    W_S = p("W_S", n_types, d_model, "W_S", "token_type_embeddings.weight")
    W_P = p("W_P", n_ctx, d_model, "W_P", "position_embeddings.weight")
    gamma = p("gamma_E", 1, d_model, r"\gamma_E", "LayerNorm.weight")
    beta = p("beta_E", 1, d_model, r"\beta_E", "LayerNorm.bias")
    rows = sp.MatAdd(Embed(W_E.symbol, t), Embed(W_S.symbol, TOKEN_TYPES), FirstRows(W_P.symbol, seq), evaluate=False)
    x0 = MatrixSymbol("x", seq, d_model)
    return Stage("embedding", "Embedding", "E", t, [Equation(x0, LayerNorm(rows, gamma.symbol, beta.symbol, epsilon))],
                 [W_E, W_S, W_P, gamma, beta], {"t": "t", TOKEN_TYPES.name: "s", "x": "X^{(0)}"},
                 extra_inputs=(TOKEN_TYPES,))


def _block(config: BertConfig, block: str) -> Stage:
    d, inner = d_model, d_ff

    def p(name, rows, cols, latex, tensor, transpose=False):
        return param("block", name, rows, cols, latex + "^{($l)}", TensorRef(block + tensor, transpose=transpose))

    def linear(name, cols_in, cols_out, subscript, module):  # nn.Linear stores W as [out, in]
        return (p("W_" + name, cols_in, cols_out, "W_" + subscript, module + ".weight", transpose=True),
                p("b_" + name, 1, cols_out, "b_" + subscript, module + ".bias"))

    def norm(index, module):
        return (p(f"gamma_{index}", 1, d, rf"\gamma_{index}", module + ".weight"),
                p(f"beta_{index}", 1, d, rf"\beta_{index}", module + ".bias"))

    W_Q, b_Q = linear("Q", d, d, "Q", "attention.self.query")
    W_K, b_K = linear("K", d, d, "K", "attention.self.key")
    W_V, b_V = linear("V", d, d, "V", "attention.self.value")
    W_O, b_O = linear("O", d, d, "O", "attention.output.dense")
    gamma_1, beta_1 = norm(1, "attention.output.LayerNorm")
    W_in, b_in = linear("in", d, inner, r"{\mathrm{in}}", "intermediate.dense")
    W_out, b_out = linear("out", inner, d, r"{\mathrm{out}}", "output.dense")
    gamma_2, beta_2 = norm(2, "output.LayerNorm")
    params = [W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, gamma_1, beta_1, W_in, b_in, W_out, b_out, gamma_2, beta_2]

    x, q, k, v, x_mid, m, x_next = (
        MatrixSymbol(name, seq, cols) for name, cols in
        [("x", d), ("q", d), ("k", d), ("v", d), ("x_mid", d), ("m", inner), ("x_next", d)])
    attention = self_attention(q, k, v, 1 / sp.sqrt(d_head), lambda scores: PaddingMask(scores, ATTENTION_MASK))
    z = attention[-1].lhs
    activation = ACTIVATIONS[config.hidden_act]
    equations = [
        Equation(q, Linear(x, W_Q.symbol, b_Q.symbol)),
        Equation(k, Linear(x, W_K.symbol, b_K.symbol)),
        Equation(v, Linear(x, W_V.symbol, b_V.symbol)),
        *attention,
        Equation(x_mid, LayerNorm(residual(x, Linear(z, W_O.symbol, b_O.symbol)),
                                  gamma_1.symbol, beta_1.symbol, epsilon)),
        Equation(m, activation(Linear(x_mid, W_in.symbol, b_in.symbol))),
        Equation(x_next, LayerNorm(residual(x_mid, Linear(m, W_out.symbol, b_out.symbol)),
                                   gamma_2.symbol, beta_2.symbol, epsilon)),
    ]
    names = {"x": "X^{($l)}", "q": "Q^{($l)}", "k": "K^{($l)}", "v": "V^{($l)}", "a": "A^{($l)}_h",
             "z": "Z^{($l)}", "x_mid": "X^{($half)}", "m": "M^{($l)}", "x_next": "X^{($next)}",
             ATTENTION_MASK.name: "m"}
    return Stage("block", "Transformer block", "B", x, equations, params, names,
                 layers=config.num_hidden_layers, extra_inputs=(ATTENTION_MASK,))


def _mean_pooling() -> Stage:
    x, e = MatrixSymbol("x", seq, d_model), MatrixSymbol("e", 1, d_model)
    return Stage("pooling", "Mean pooling", "P", x, [Equation(e, MeanPool(x, ATTENTION_MASK))], [],
                 {"x": "X^{(L)}", "e": "e", ATTENTION_MASK.name: "m"}, extra_inputs=(ATTENTION_MASK,))


def reference(checkpoint: Checkpoint, dtype: str = "float32"):
    """transformers' BertModel on the checkpoint's tensors, computing in ``dtype``: the ground truth.

    Its output is the last hidden states, mean-pooled over the unpadded tokens when the program is.
    """
    import torch
    import transformers
    from transformers import BertConfig as HFConfig, BertModel

    transformers.logging.set_verbosity_error()
    config, prefix, _ = read_config(checkpoint)
    hf_config = HFConfig(**(checkpoint.config if "model_type" in (checkpoint.config or {}) else asdict(config)))
    skipped = ("pooler.", "embeddings.position_ids", "embeddings.token_type_ids")
    names = {name[len(prefix):]: name for name in checkpoint.tensors
             if name.startswith(prefix) and not name[len(prefix):].startswith(skipped)}
    model = load_reference(BertModel(hf_config, add_pooling_layer=False), checkpoint, names, dtype)

    def forward(tokens: np.ndarray, attention_mask=None, token_type_ids=None) -> np.ndarray:
        inputs = {name: torch.as_tensor(np.asarray(value), dtype=torch.long)[None] for name, value in
                  [("input_ids", tokens), ("attention_mask", attention_mask), ("token_type_ids", token_type_ids)]
                  if value is not None}
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state[0]
        if config.pooling == "mean":  # sentence-transformers' mean pooling
            weights = inputs.get("attention_mask", torch.ones(1, hidden.shape[0]))[0, :, None].to(hidden.dtype)
            hidden = (hidden * weights).sum(0, keepdim=True) / weights.sum()
        return hidden.float().numpy()

    return forward


FAMILY = Family("bert", ("bert",), recognises, lower, reference, settings=("pooling",))
