"""The JAX module for every family, its bfloat16 form and its donated decode.

Tolerances (float32): against transformers/torch and against the numpy module, max |error| <= 1e-4
and max |error| / max |reference| <= 1e-5. bfloat16 (8 significant bits, unit roundoff 2^-9 ~ 2e-3)
against the float32 JAX module: max |error| / max |reference| <= BF16_REL (4e-2, about 20 unit
roundoffs: every op rounds once and errors add over layers); measured 3e-3 (MLP) to 1.9e-2 (the
sample's logits).
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import eqcompile
from eqcompile.cli import main
from eqcompile.emit.python import import_module
from eqcompile.verify import compare

from conftest import SAMPLE, make_gpt2
from test_bert import (N_CTX, TYPES, VOCAB, make_bert, masked_mean, random_inputs, reference_hidden,
                       reference_model)

jax = pytest.importorskip("jax")
BF16_REL = 4e-2


def emit(compiled, out, dtype="float32"):
    """(model_jax, model) written from one compile."""
    path = compiled.to_jax(out, dtype=dtype)
    tag = abs(hash(str(out)))
    return import_module(path, f"jax_{tag}"), import_module(path.with_name("model.py"), f"np_{tag}")


def assert_close(output, *expected):
    assert output.dtype == np.float32
    for reference in expected:
        max_abs, max_rel, _ = compare(output, reference)
        assert output.shape == reference.shape and max_abs <= 1e-4 and max_rel <= 1e-5, (max_abs, max_rel)


@pytest.mark.parametrize("pooling", [None, "mean"])
def test_bert_matches_transformers_and_numpy(tmp_path, pooling):
    """Padded to a bucket of 8 (n = 5) and 16 (n = 16 = n_ctx); padding masks and token types."""
    folder = make_bert(tmp_path / "ckpt")
    jax_module, numpy_module = emit(eqcompile.compile(folder, pooling=pooling), tmp_path / "out")
    reference = reference_model(folder)
    rng = np.random.default_rng(3)
    for seq in (5, N_CTX):
        tokens, mask, types = random_inputs(rng, seq, VOCAB, TYPES)
        expected = reference_hidden(reference, tokens, mask, types)
        expected = masked_mean(expected, mask) if pooling else expected
        output = jax_module.forward(tokens, mask, types)
        assert_close(output, expected, numpy_module.forward(tokens, mask, types))
    batch = jax_module.forward_batch([tokens, tokens[::-1]], [mask, mask], [types, types])
    assert_close(batch[0], output)
    with pytest.raises(ValueError, match="attention_mask"):
        jax_module.forward(tokens, np.zeros_like(mask))


def test_mlp_matches_torch_and_numpy(tmp_path):
    torch = pytest.importorskip("torch")
    from test_mlp import save_mlp

    model, folder = save_mlp(tmp_path / "ckpt", (6, 9, 8, 5), activation="gelu")
    jax_module, numpy_module = emit(eqcompile.compile(folder), tmp_path / "out")
    xs = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32) * 3
    with torch.no_grad():
        expected = model(torch.from_numpy(xs)).numpy()
    for x, y in zip(xs, expected):
        assert_close(jax_module.forward(x), y, numpy_module.forward(x))
    assert_close(jax_module.forward_batch(xs), expected)
    with pytest.raises(ValueError, match="length 6"):
        jax_module.forward([1.0, 2.0])


def test_donated_decode_reuses_the_cache_and_keeps_the_tokens(tmp_path):
    """advance(donate=True) hands the given state's buffers to XLA (they are deleted, written in
    place); its logits equal the pure advance's, and generate (which donates) keeps model.py's tokens."""
    jax_module, numpy_module = emit(eqcompile.compile(SAMPLE), tmp_path / "out")
    state, _ = jax_module.advance(jax_module.init_state(), [5, 6, 7])
    _, pure = jax_module.advance(state, [8])
    keys = state.caches[0]["k"]
    assert not keys.is_deleted()
    _, donated = jax_module.advance(state, [8], donate=True)
    assert keys.is_deleted()
    np.testing.assert_array_equal(donated, pure)
    prompt = [5, 6, 7]
    for options in (dict(temperature=0), dict(temperature=0.9, top_k=20)):
        assert jax_module.generate(prompt, 12, seed=3, **options) == numpy_module.generate(prompt, 12, seed=3, **options)


def test_bfloat16_sums_accumulate_in_float32():
    """The stated accumulation: a bfloat16 sum of 1000 ones would stop at 256 (256 + 1 rounds to 256)."""
    import jax.numpy as jnp

    ones = jnp.ones(1000, jnp.bfloat16)
    assert float(ones.sum()) == 1000 and float(ones.mean()) == 1
    assert float((ones[None, :] @ ones[:, None])[0, 0]) == 1000
    assert float(jnp.exp(jnp.zeros(1000, jnp.bfloat16)).sum()) == 1000  # softmax's denominator


@pytest.mark.parametrize("family", ["gpt2", pytest.param("bert", marks=pytest.mark.slow),
                                    pytest.param("mlp", marks=pytest.mark.slow)])
def test_bfloat16_module_within_the_stated_tolerance(tmp_path, family):
    if family == "gpt2":
        compiled, inputs = eqcompile.compile(SAMPLE), ([[3, 1, 4, 1, 5, 9, 2, 6]],)
    elif family == "bert":
        compiled = eqcompile.compile(make_bert(tmp_path / "ckpt"), pooling="mean")
        inputs = random_inputs(np.random.default_rng(0), 9, VOCAB, TYPES)
    else:
        from test_mlp import save_mlp

        compiled = eqcompile.compile(save_mlp(tmp_path / "ckpt", (4, 16, 4), activation="tanh")[1])
        inputs = (np.linspace(-2, 2, 4),)
    full, _ = emit(compiled, tmp_path / "f32")
    half, _ = emit(compiled, tmp_path / "bf16", dtype="bfloat16")
    assert half.DTYPE == jax.numpy.bfloat16 and all(
        a.dtype == jax.numpy.bfloat16 for a in jax.tree.leaves(half.WEIGHTS))
    expected, output = full.forward(*inputs), half.forward(*inputs)
    assert output.dtype == np.float32
    error = np.abs(output - expected).max() / np.abs(expected).max()
    assert 0 < error <= BF16_REL, error  # > 0: the arithmetic is bfloat16, not float32 in disguise


def test_cli_dtype_per_backend(tmp_path):
    folder = make_gpt2(tmp_path / "ckpt")
    result = CliRunner().invoke(main, [str(folder), "--jax", str(tmp_path / "out"), "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert "DTYPE = jnp.bfloat16" in (tmp_path / "out" / "model_jax.py").read_text()
    for options in (["--python", str(tmp_path / "py"), "--dtype", "bfloat16"],
                    ["--jax", str(tmp_path / "jx"), "--dtype", "float64"]):
        result = CliRunner().invoke(main, [str(folder), *options])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert not (tmp_path / options[1].rsplit("/", 1)[-1]).exists()
