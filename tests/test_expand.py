"""The literal equation (--expand) and its analytic size (stats).

The analytic counts must equal the counts of the actual expansion exactly; evaluating the expansion
must reproduce the numpy forward to 1e-6.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import sympy as sp
from click.testing import CliRunner

import eqcompile
from eqcompile.cli import main
from eqcompile.emit.python import import_module
from eqcompile.expand import expand
from eqcompile.stats import CHARS_PER_OPERATION, operation_counts

from conftest import compile_tex, make_gpt2, make_sparse_gpt2, make_sparse_llama, pdflatex_available

TINY = dict(vocab_size=8, n_positions=4, n_embd=4, n_layer=1, n_head=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_gpt2(tmp_path_factory.mktemp("tiny") / "ckpt", **TINY)


def evaluate(expansion, inputs: dict) -> np.ndarray:
    """Evaluate the straight-line sympy program term by term with lambdify."""
    values = dict(inputs)
    for term in expansion.terms:
        free = sorted(term.expr.free_symbols, key=str)
        values[term.symbol] = sp.lambdify(free, term.expr, "math")(*(values[s] for s in free))
    out = expansion.outputs
    return np.array([[values[e] if e.is_Symbol else float(e) for e in out.row(r)] for r in range(out.rows)])


@pytest.mark.parametrize("overrides", [{}, dict(activation_function="gelu"), dict(n_layer=2, n_head=1),
                                       dict(scale_attn_by_inverse_layer_idx=True, n_layer=2)])
def test_expansion_counts_equal_the_analytic_counts(tmp_path, overrides):
    model = eqcompile.compile(make_gpt2(tmp_path / "m", **(TINY | overrides)))
    measured = expand(model.program, model.checkpoint).operations()
    assert measured == operation_counts(model.program, 4)
    assert sum(measured.values()) > 1000  # a real expansion, not an empty one


def test_expansion_evaluates_to_the_forward(tiny, tmp_path):
    model = eqcompile.compile(tiny)
    expansion = expand(model.program, model.checkpoint)
    forward = import_module(model.to_python(tmp_path / "numpy"), "tiny_numpy").forward
    for tokens in ([3, 1, 7, 0], [0, 0, 0, 0], [7, 6, 5, 4]):
        onehot = {sp.Symbol(f"t_{i}_{v}"): float(t == v) for i, t in enumerate(tokens) for v in range(8)}
        np.testing.assert_allclose(evaluate(expansion, onehot), forward(tokens), atol=1e-6, rtol=0)


def test_pure_python_module_matches_the_forward(tiny, tmp_path):
    model = eqcompile.compile(tiny)
    path = model.to_python(tmp_path / "literal", expand=True)
    source = path.read_text()
    assert "import numpy" not in source and "import math" in source
    literal = import_module(path, "tiny_literal")
    forward = import_module(model.to_python(tmp_path / "numpy"), "tiny_numpy2").forward
    tokens = [5, 2, 2, 1]
    np.testing.assert_allclose(np.array(literal.forward(tokens)), forward(tokens), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        literal.forward([1, 2])


@pytest.mark.skipif(not pdflatex_available(), reason="pdflatex is not installed (CI installs it)")
def test_literal_latex_compiles(tiny, tmp_path):
    text = eqcompile.compile(tiny).latex(expand=True, standalone=True)
    assert r"[t_{1} = 0]" in text and r"\begin{dmath*}" in text
    tex = tmp_path / "literal.tex"
    tex.write_text(text)
    result = compile_tex(tex)
    assert result.returncode == 0, result.stdout[-2000:]
    # the size estimate stats gives is within a factor 1.5 of the real thing
    measured = len(eqcompile.compile(tiny).latex(expand=True))
    estimated = eqcompile.compile(tiny).stats().operations_total * CHARS_PER_OPERATION
    assert 1 / 1.5 < measured / estimated < 1.5


def test_large_expansion_is_refused_with_its_size(tmp_path):
    folder = make_gpt2(tmp_path / "m", n_embd=48, n_positions=64)
    result = CliRunner().invoke(main, [str(folder), "--latex", "--expand", "-o", str(tmp_path / "x.tex")])
    assert result.exit_code == 2
    assert "scalar operations" in result.output and "--force" in result.output
    assert not (tmp_path / "x.tex").exists()


def test_force_expands_beyond_the_limit(tiny, monkeypatch, tmp_path):
    monkeypatch.setattr(eqcompile.api, "EXPANSION_LIMIT", 10)
    out = tmp_path / "x.tex"
    assert CliRunner().invoke(main, [str(tiny), "--latex", "--expand", "-o", str(out)]).exit_code == 2
    result = CliRunner().invoke(main, [str(tiny), "--latex", "--expand", "--force", "-o", str(out)])
    assert result.exit_code == 0 and out.exists()


def test_stats_cli_text_and_json(tiny):
    result = CliRunner().invoke(main, ["stats", str(tiny), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    block = 2 * 4 + (4 * 12 + 12) + (4 * 4 + 4) + 2 * 4 + (4 * 16 + 16) + (16 * 4 + 4)
    assert data["parameters"] == 8 * 4 + 4 * 4 + 2 * 4 + block
    assert data["operations_total"] == sum(operation_counts(eqcompile.compile(tiny).program, 4).values())
    assert data["weight_bytes_per_token"] < data["parameters"] * 4  # W_P: one row per token
    text = CliRunner().invoke(main, ["stats", str(tiny), "--seq", "2"])
    assert text.exit_code == 0 and "context length n            2" in text.output


def test_per_token_operations_are_the_last_rows_cost(tiny):
    program = eqcompile.compile(tiny).program
    four, three = (sum(operation_counts(program, n).values()) for n in (4, 3))
    assert eqcompile.compile(tiny).stats(4).operations_per_token == four - three


def test_given_tokens_make_the_embedding_a_lookup(tiny):
    """What a module run on given tokens multiplies (benchmarks' FLOPs): the literal equation's
    count less the one-hot embedding product, n d V multiplications and n d (V - 1) additions."""
    program = eqcompile.compile(tiny).program
    literal, given = operation_counts(program, 4), operation_counts(program, 4, tokens_known=True)
    n, d, vocab = 4, TINY["n_embd"], TINY["vocab_size"]
    assert literal - given == {"mul": n * d * vocab, "add": n * d * (vocab - 1)}


def test_stats_of_a_large_model_from_its_header(tmp_path):
    """GPT-2 XL shape (1.56B parameters): counted from shapes, the data never read."""
    model = eqcompile.compile(make_sparse_gpt2(tmp_path / "xl", n_layer=48, n_embd=1600))
    result = model.stats()
    assert result.parameters == 1_557_611_200
    assert result.operations_per_token > 2 * 1_500_000_000  # ~ 2 operations per weight, plus attention
    assert result.weight_bytes_per_token == 4 * (result.parameters - 1023 * 1600)


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "sigmoid", "silu"])
def test_mlp_4_16_4_expands_exactly(tmp_path, activation):
    """The issue's tiny MLP: counts equal, and the literal equation computes the network."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Identity(), torch.nn.Linear(16, 4))
    (tmp_path / "mlp").mkdir()
    save_file(net.state_dict(), tmp_path / "mlp" / "model.safetensors")
    (tmp_path / "mlp" / "config.json").write_text(json.dumps({"model_type": "mlp", "activation": activation}))
    model = eqcompile.compile(tmp_path / "mlp")
    expansion = expand(model.program, model.checkpoint)
    assert expansion.operations() == operation_counts(model.program, 1)
    x = [0.3, -1.2, 2.0, 0.7]
    numpy_forward = import_module(model.to_python(tmp_path / "numpy"), f"mlp_{activation}").forward(x)
    literal = evaluate(expansion, {sp.Symbol(f"x_{i}"): v for i, v in enumerate(x)})
    np.testing.assert_allclose(literal[:, 0], numpy_forward, atol=1e-6, rtol=0)
    pure = import_module(model.to_python(tmp_path / "pure", expand=True), f"mlp_pure_{activation}")
    np.testing.assert_allclose(pure.forward(x), numpy_forward, atol=1e-6, rtol=0)


def test_stats_of_a_llama_7b_header(tmp_path):
    """Llama-7B shape (bf16, 6.74B parameters): stats and the layer-level LaTeX from the header alone."""
    d, layers, vocab = 4096, 32, 32000
    folder = make_sparse_llama(tmp_path / "7b")
    model = eqcompile.compile(folder)
    result = model.stats(seq=2048)
    assert result.parameters == 6_738_415_616
    matmul_weights = result.parameters - vocab * d - (2 * layers + 1) * d  # no lookup table, no gains
    assert 2 * matmul_weights < result.operations_per_token < 2.2 * matmul_weights + 4 * layers * d * 2048
    assert result.weight_bytes_per_token == 2 * (result.parameters - (vocab - 1) * d)
    assert r"\operatorname{RoPE}" in model.latex()
