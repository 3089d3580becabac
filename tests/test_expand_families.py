"""The literal equation (--expand) of tiny Llama-family and BERT models, as tests/test_expand.py
checks GPT-2's: the analytic counts (``operation_counts``, from the ops' ``cost``) equal the counts of
the actual expansion exactly, and the expansion, evaluated term by term and as the emitted pure-Python
module, computes what the emitted numpy module computes.

Tolerance: max |error| <= 1e-6 against the numpy module emitted in float64 (measured ~1e-7). The
literal equation is float64 arithmetic throughout, RoPE frequencies included; the numpy module
computes RoPE's frequencies and angles in float32 as transformers does, which is the ~1e-7 left
(against the float32 module the error is below 1e-6 too, ~8e-7). The inputs besides the tokens are
fixed: positions 0, ..., n - 1; bert's attention mask 1 (no padding) and token types 0.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import sympy as sp
from click.testing import CliRunner

import eqcompile
from eqcompile.cli import main
from eqcompile.emit.python import import_module
from eqcompile.errors import ConfigError
from eqcompile.expand import expand
from eqcompile.ops import GroupedHeads, Llama3Frequencies, MeanPool, PaddingMask, RoPE, SlidingWindowMask
from eqcompile.stats import operation_counts

from conftest import compile_tex, pdflatex_available
from llama_models import make_llama
from test_bert import make_bert

TOL = 1e-6
LLAMA = dict(vocab_size=8, hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=2, max_position_embeddings=4)
BERT = dict(vocab_size=8, hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=4, type_vocab_size=2)
# name -> (builder, config overrides, compile options, an op the model must use)
MODELS = {
    "llama-gqa-2-layers": (make_llama, dict(num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2),
                           {}, GroupedHeads),
    "mistral-window-2": (make_llama, dict(model_type="mistral", sliding_window=2), {}, SlidingWindowMask),
    "qwen2-one-kv-head-tied": (make_llama, dict(model_type="qwen2", num_key_value_heads=1, tie_word_embeddings=True),
                               {}, GroupedHeads),
    "llama-linear-rope": (make_llama, dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), {}, RoPE),
    # head_dim 6: three frequencies, one in each llama3 regime (kept, blended, divided by s)
    "llama3-rope": (make_llama, dict(hidden_size=12, head_dim=6, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256}), {}, Llama3Frequencies),
    "bert": (make_bert, {}, {}, PaddingMask),
    "bert-mean-pooling-2-layers": (make_bert, dict(num_hidden_layers=2, hidden_act="gelu_new"),
                                   dict(pooling="mean"), MeanPool),
}


@pytest.fixture(scope="module", params=list(MODELS))
def tiny(request, tmp_path_factory):
    """(name, compiled model, its expansion, the float64 numpy forward) of each tiny model."""
    builder, overrides, options, op = MODELS[request.param]
    base = LLAMA if builder is make_llama else BERT
    folder = builder(tmp_path_factory.mktemp(request.param) / "ckpt", **(base | overrides))
    model = eqcompile.compile(folder, **options)
    assert any(eq.rhs.atoms(op) for stage in model.program.stages for eq in stage.equations)
    numpy_dir = tmp_path_factory.mktemp(request.param) / "numpy"
    forward = import_module(model.to_python(numpy_dir, dtype="float64"), request.param.replace("-", "_")).forward
    return request.param, model, expand(model.program, model.checkpoint), forward


FUNCTIONS = {sp.exp: math.exp, sp.cos: math.cos, sp.sin: math.sin, sp.tanh: math.tanh, sp.erf: math.erf}


def interpret(expr, values: dict) -> float:
    """The value of a scalar term: sums, products, powers and the functions above, in float64.

    Independent of every printer (the emitted module prints the terms; lambdify would too).
    """
    if expr.is_Symbol:
        return values[expr]
    if expr.is_Number or expr.is_NumberSymbol:
        return float(expr)
    args = [interpret(a, values) for a in expr.args]
    if isinstance(expr, sp.Add):
        return math.fsum(args)
    if isinstance(expr, sp.Mul):
        return math.prod(args)
    if isinstance(expr, sp.Pow):
        return args[0] ** args[1]
    if isinstance(expr, sp.Max):
        return max(args)
    return FUNCTIONS[expr.func](*args)


def evaluate(expansion, tokens) -> np.ndarray:
    vocab = expansion.program.vocab
    values = {sp.Symbol(f"t_{i}_{v}"): float(t == v) for i, t in enumerate(tokens) for v in range(vocab)}
    for term in expansion.terms:
        values[term.symbol] = interpret(term.expr, values)
    return np.array([[interpret(e, values) for e in row] for row in expansion.outputs.tolist()])


def token_sequences(model, count=3):
    rng = np.random.default_rng(0)
    return [list(rng.integers(0, model.program.vocab, size=model.program.max_seq)) for _ in range(count)]


def test_expansion_counts_equal_the_analytic_counts(tiny):
    _, model, expansion, _ = tiny
    measured = expansion.operations()
    assert measured == operation_counts(model.program, model.program.max_seq)
    assert sum(measured.values()) > 4000  # a real expansion, not an empty one


def test_expansion_evaluates_to_the_forward(tiny):
    _, model, expansion, forward = tiny
    for tokens in token_sequences(model):
        np.testing.assert_allclose(evaluate(expansion, tokens), forward(tokens), atol=TOL, rtol=0)


def test_pure_python_module_matches_the_forward(tiny, tmp_path):
    name, model, _, forward = tiny
    path = model.to_python(tmp_path / "literal", expand=True)
    assert "import numpy" not in path.read_text()
    literal = import_module(path, name.replace("-", "_") + "_literal")
    for tokens in token_sequences(model):
        np.testing.assert_allclose(np.array(literal.forward(tokens)), forward(tokens), atol=TOL, rtol=0)


def test_expansion_fixes_bert_mask_and_token_types(tmp_path):
    """The pure module takes bert's other inputs only at the values the expansion fixed."""
    model = eqcompile.compile(make_bert(tmp_path / "ckpt", **BERT))
    literal = import_module(model.to_python(tmp_path / "literal", expand=True, seq=2), "bert_literal_defaults")
    numpy_forward = import_module(model.to_python(tmp_path / "numpy", dtype="float64"), "bert_numpy_defaults").forward
    tokens = [3, 5]
    unpadded = literal.forward(tokens, attention_mask=[1, 1], token_type_ids=[0, 0])
    np.testing.assert_allclose(np.array(unpadded), numpy_forward(tokens), atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="attention_mask"):
        literal.forward(tokens, attention_mask=[1, 0])
    with pytest.raises(ValueError, match="token_type_ids"):
        literal.forward(tokens, token_type_ids=[0, 1])
    # a program whose extra input has no fixed value is still refused, naming it
    program = dataclasses.replace(model.program, input_defaults={})
    with pytest.raises(ConfigError, match="token_type_ids, attention_mask"):
        expand(program, model.checkpoint)


def test_cli_expands_a_llama(tmp_path):
    folder = make_llama(tmp_path / "ckpt", **(LLAMA | dict(num_key_value_heads=1)))
    out = tmp_path / "literal.tex"
    result = CliRunner().invoke(main, [str(folder), "--latex", "--expand", "--seq", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert r"positions $p = 0, \dots, 1$" in text and r"{\cos\varphi}^{[" in text


@pytest.mark.skipif(not pdflatex_available(), reason="pdflatex is not installed (CI installs it)")
def test_literal_latex_compiles_for_llama3_and_bert(tmp_path):
    for name in ("llama3-rope", "bert"):
        builder, overrides, options, _ = MODELS[name]
        folder = builder(tmp_path / name, **((LLAMA if builder is make_llama else BERT) | overrides))
        tex = tmp_path / f"{name}.tex"
        tex.write_text(eqcompile.compile(folder, **options).latex(expand=True, standalone=True, seq=2))
        result = compile_tex(tex)
        assert result.returncode == 0, result.stdout[-2000:]
