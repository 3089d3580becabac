"""The Llama family (Llama, Mistral, Qwen2): the emitted module computes what transformers computes.

Tolerance (float32): max |error| <= 1e-4 and max |error| / max |reference| <= 1e-5, at sequence
lengths 1, 7 and the full context, on random configs covering GQA ratios 1, 2, 3 and 4, head widths
4, 6 and 10, biases, tied and untied embeddings, RoPE bases and scalings, and sliding windows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import eqcompile
from eqcompile import ConfigError
from eqcompile.emit.latex import LEVELS
from eqcompile.emit.python import import_module
from eqcompile.verify import compare

from conftest import compile_tex, pdflatex_available
from llama_models import assert_matches, make_llama, reference_logits

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # all three frequency regimes
CONFIGS = {  # name -> (model_type, overrides of make_llama's tiny config)
    "llama-mha-untied": ("llama", {}),
    "llama-gqa3-head6-biases-tied": ("llama", dict(num_key_value_heads=1, head_dim=6, attention_bias=True,
                                                   mlp_bias=True, tie_word_embeddings=True)),
    "llama-gqa4-head10-theta500": ("llama", dict(num_attention_heads=4, num_key_value_heads=1, head_dim=10,
                                                 rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                                                 rms_norm_eps=1e-5)),
    "llama-gqa2-linear-rope": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                                             rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                                              "factor": 2.5})),
    "llama-llama3-rope-head10": ("llama", dict(head_dim=10, num_key_value_heads=1, rope_parameters=LLAMA3_ROPE)),
    "mistral-window4-gqa3": ("mistral", dict(num_key_value_heads=1, sliding_window=4, tie_word_embeddings=True)),
    "mistral-window-beyond-context": ("mistral", {}),  # MistralConfig's default window 4096 > 16 positions
    "qwen2-qkv-bias-gqa3": ("qwen2", dict(num_key_value_heads=1)),
    "qwen2-window5": ("qwen2", dict(use_sliding_window=True, sliding_window=5, max_window_layers=0,
                                    tie_word_embeddings=True)),
}
SEQS = (1, 7, 16)


def emitted(folder, out):
    return import_module(eqcompile.compile(folder).to_python(out), name=f"llama_{abs(hash(str(out)))}")


def assert_faithful(module, folder, vocab=50, seed=0, **reference_options) -> tuple[float, float]:
    return assert_matches(module, lambda tokens: reference_logits(folder, tokens, **reference_options),
                          vocab, SEQS, seed)


@pytest.mark.parametrize("name", CONFIGS)
def test_random_configs_match_transformers(tmp_path, name):
    model_type, overrides = CONFIGS[name]
    folder = make_llama(tmp_path / "ckpt", model_type, seed=len(name), **overrides)
    compiled = eqcompile.compile(folder)
    assert compiled.program.family == model_type
    module = import_module(compiled.to_python(tmp_path / "out"), name=f"llama_{name}")
    max_abs, max_rel = assert_faithful(module, folder)
    print(f"{name}: max abs error {max_abs:.2e}, relative {max_rel:.2e}")  # shown with pytest -s


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_sliding_window_matches_both_attention_implementations(tmp_path, implementation):
    folder = make_llama(tmp_path / "ckpt", "mistral", num_key_value_heads=1, sliding_window=3)
    assert_faithful(emitted(folder, tmp_path / "out"), folder, attn_implementation=implementation)


FEATURES = {  # config -> what switching its feature off means; the logits must then change
    "mistral-window4-gqa3": {"sliding_window": None},
    "qwen2-window5": {"use_sliding_window": False, "layer_types": ["full_attention"] * 2},
    "llama-gqa2-linear-rope": {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
    "llama-llama3-rope-head10": {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
    "llama-gqa4-head10-theta500": {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
}


@pytest.mark.parametrize("name", FEATURES)
def test_the_configs_exercise_their_feature(tmp_path, name):
    """A feature that changed nothing at these sizes would make its numeric test vacuous."""
    model_type, overrides = CONFIGS[name]
    folder = make_llama(tmp_path / "ckpt", model_type, **overrides)
    tokens = np.arange(16) * 7 % 50
    with_feature = reference_logits(folder, tokens)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **FEATURES[name]}))
    without = reference_logits(folder, tokens)
    assert np.max(np.abs(with_feature - without)) > 1e-2


@pytest.mark.parametrize("model_type, overrides", [("qwen2", dict(num_key_value_heads=1)),
                                                   ("mistral", dict(sliding_window=4))])
def test_verify_uses_the_family_reference(tmp_path, model_type, overrides):
    from eqcompile.verify import verify

    results = verify(eqcompile.compile(make_llama(tmp_path / "ckpt", model_type, **overrides)), [1, 16])
    assert [r.seq for r in results] == [1, 16] and all(r.ok for r in results)


def _rope_adjacent_pairs(x, theta, positions):  # GPT-J's convention: features (2k, 2k + 1) rotate together
    angles = (positions.astype(np.float32)[:, None] * theta)[:, None, :]
    cos, sin = np.cos(angles), np.sin(angles)
    heads = x.reshape(x.shape[0], -1, 2 * theta.shape[-1])
    even, odd = heads[..., 0::2], heads[..., 1::2]
    return np.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1).reshape(x.shape)


def _kv_heads_tiled(q, k, v, block=64):  # query head h reads kv head h mod n_kv_head
    from eqcompile.ops.attention import causal_mask, softmax

    group = q.shape[0] // k.shape[0]
    k, v = np.tile(k, (group, 1, 1)), np.tile(v, (group, 1, 1))
    return softmax(causal_mask(q @ k.mT)) @ v


@pytest.mark.parametrize("name, replacement", [("rope", _rope_adjacent_pairs), ("causal_attention", _kv_heads_tiled)])
def test_a_wrong_convention_fails_the_comparison(tmp_path, name, replacement):
    """The numeric tests tell transformers' conventions apart from the other common ones."""
    folder = make_llama(tmp_path / "ckpt", num_attention_heads=4, num_key_value_heads=2, head_dim=6)
    module = emitted(folder, tmp_path / "out")
    setattr(module, name, replacement)
    tokens = np.arange(16) * 7 % 50
    assert not compare(module.forward(tokens), reference_logits(folder, tokens))[2]


def test_emitted_block_reads_like_the_equations(tmp_path):
    folder = make_llama(tmp_path / "ckpt", num_key_value_heads=1, mlp_bias=True)
    source = eqcompile.compile(folder).to_python(tmp_path / "out").read_text()
    for line in ["theta = rope_frequencies(rope_theta, d_head)",
                 "q = rope(h @ W_Q, theta, p)", "k = cache.extend('k', k)",
                 "z = merge_heads(causal_attention(split_heads(q, n_head) / math.sqrt(d_head), "
                 "split_heads(k, n_kv_head), split_heads(v, n_kv_head)))",
                 "m = silu(h_mid @ W_gate + b_gate) * (h_mid @ W_up + b_up)  # [n, d_ff]",
                 "x_next = x_mid + (m @ W_down + b_down)  # [n, d]"]:
        assert line in source, line


# ------------------------------------------------------------------------------------------ LaTeX

def test_layer_level_uses_the_notation(tmp_path):
    folder = make_llama(tmp_path / "ckpt", "mistral", num_key_value_heads=1, sliding_window=4,
                        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
    text = eqcompile.compile(folder).latex()
    for piece in [r"\operatorname{RMSNorm}\left(X^{(l)};\, \gamma_1^{(l)}\right)",
                  r"Q^{(l)} &= \operatorname{RoPE}_{\theta}\left(H^{(l)} W_{Q}^{(l)};\, p\right)",
                  r"K^{(l)} &= \operatorname{RoPE}_{\theta}\left(H^{(l)} W_{K}^{(l)};\, p\right)",
                  r"Q^{(l)}_{h} \left(K^{(l)}_{g{\left(h \right)}}\right)^{\top}",
                  r"\operatorname{mask}_{w}",
                  r"\theta &= \frac{1}{s} \left(\theta_{\mathrm{base}}^{-2(k-1)/d_{\mathrm{head}}}",
                  r"M^{(l)} &= \operatorname{SiLU}\left(\tilde{H}^{(l)} W_{\mathrm{gate}}^{(l)}\right) \odot "
                  r"\left(\tilde{H}^{(l)} W_{\mathrm{up}}^{(l)}\right)",
                  r"\texttt{model.layers.$l{-}1$.self\_attn.q\_proj.weight$^{\top}$}",
                  r"$n_{\mathrm{kv}} = 1$", r"$w = 4$", r"$s = 2$"]:
        assert piece in text, piece


def test_index_level_defines_the_new_ops(tmp_path):
    folder = make_llama(tmp_path / "ckpt", "mistral", num_key_value_heads=1, sliding_window=4,
                        rope_parameters=LLAMA3_ROPE)
    text = eqcompile.compile(folder).latex(level="index")
    for op in ["RoPE", "RotaryFrequencies", "Llama3Frequencies", "GroupedHeads", "SlidingWindowMask", "RMSNorm"]:
        assert rf"\paragraph{{{op}.}}" in text, op
    assert r"\left\lceil{\frac{h n_{\mathrm{kv}}}{n_{\mathrm{head}}}}\right\rceil" in text
    assert r"\cos{\left({p}_{i} {\theta}_{j} \right)}" in text


needs_tex = pytest.mark.skipif(not pdflatex_available(), reason="pdflatex is not installed (CI installs it)")


@needs_tex
@pytest.mark.parametrize("model_type, overrides", [
    ("llama", dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True, rope_parameters=LLAMA3_ROPE)),
    ("mistral", dict(sliding_window=4, tie_word_embeddings=True,
                     rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
    ("qwen2", dict(num_key_value_heads=1)),
], ids=["llama", "mistral", "qwen2"])
def test_every_level_compiles_with_pdflatex(tmp_path, model_type, overrides):
    compiled = eqcompile.compile(make_llama(tmp_path / "ckpt", model_type, **overrides))
    for level, unroll in [*((level, False) for level in LEVELS), ("layer", True)]:  # unroll: layer level only
        tex = tmp_path / f"{level}-{unroll}.tex"
        tex.write_text(compiled.latex(level=level, unroll=unroll, standalone=True))
        result = compile_tex(tex)
        assert result.returncode == 0, result.stdout[-2000:]


# ------------------------------------------------------------------------------------------ errors

def _with_config(tmp_path, **changes):
    folder = make_llama(tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.parametrize("rope_type", ["dynamic", "yarn", "longrope", "su"])
def test_unsupported_rope_type_is_a_one_line_config_error(tmp_path, rope_type):
    folder = _with_config(tmp_path, rope_parameters={"rope_type": rope_type, "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(ConfigError) as e:
        eqcompile.compile(folder)
    message = str(e.value)
    assert "\n" not in message and repr(rope_type) in message and "default, linear, llama3" in message


@pytest.mark.parametrize("changes, expected", [
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "unsupported rope_type 'dynamic'"),
    (dict(num_key_value_heads=2), "not a multiple of num_key_value_heads=2"),
    (dict(head_dim=5), "head_dim=5 is odd"),
    (dict(hidden_act="gelu"), "unsupported hidden_act 'gelu'"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0}), "factor must be a number"),
    (dict(rope_parameters={**LLAMA3_ROPE, "high_freq_factor": 0.5}), "0 < low_freq_factor < high_freq_factor"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    (dict(model_type="qwen2", use_sliding_window=True, max_window_layers=1, sliding_window=4),
     "sliding window on only some layers"),
])
def test_config_errors_are_one_line(tmp_path, changes, expected):
    with pytest.raises(ConfigError, match=expected) as e:
        eqcompile.compile(_with_config(tmp_path, **changes))
    assert "\n" not in str(e.value)


def test_bare_safetensors_is_recognised_but_needs_its_config(tmp_path):
    folder = make_llama(tmp_path / "ckpt")
    (folder / "config.json").unlink()
    with pytest.raises(ConfigError, match="needs its config.json") as e:
        eqcompile.compile(folder / "model.safetensors")
    assert "\n" not in str(e.value)


def test_cli_reports_an_unsupported_rope_type(tmp_path):
    from click.testing import CliRunner

    from eqcompile.cli import main

    folder = _with_config(tmp_path, rope_parameters={"rope_type": "dynamic", "factor": 2.0})
    result = CliRunner().invoke(main, [str(folder), "--latex"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "dynamic" in result.stderr


# ------------------------------------------------------------------------- the new ops' numpy meaning

@pytest.mark.parametrize("rope", [{"rope_type": "default", "rope_theta": 500.0},
                                  {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.5}, LLAMA3_ROPE],
                         ids=["default", "linear", "llama3"])
def test_rope_matches_transformers(rope):
    """Frequencies as transformers' float32 inv_freq to one unit in the last place; rotation as
    apply_rotary_pos_emb.

    One ulp, not bit for bit: transformers' own rounding of the scaled frequencies moves between
    releases (for the linear and llama3 scalings 5.24 gives 1.5924282e-03 where 5.23 and the plain
    float32 formula give 1.5924284e-03), so bit equality would test one release's accident, not the formula.
    """
    import torch
    import transformers
    from transformers.models.llama import modeling_llama

    from eqcompile.ops.rope import llama3_frequencies, rope_frequencies
    from eqcompile.ops.rope import rope as rotate

    config = transformers.LlamaConfig(hidden_size=30, num_attention_heads=3, head_dim=10,
                                      rope_parameters=dict(rope), max_position_embeddings=16)
    embedding = modeling_llama.LlamaRotaryEmbedding(config)
    theta = rope_frequencies(rope["rope_theta"], 10)
    if rope["rope_type"] == "linear":
        theta = theta / rope["factor"]
    elif rope["rope_type"] == "llama3":
        theta = llama3_frequencies(theta, 8.0, 1.0, 4.0, 64)
    assert theta.dtype == np.float32 and embedding.inv_freq.dtype == torch.float32
    np.testing.assert_array_max_ulp(theta[0], embedding.inv_freq.numpy(), maxulp=1)

    x = np.random.default_rng(0).standard_normal((3, 16, 10)).astype(np.float32)
    cos, sin = embedding(torch.from_numpy(x), torch.arange(16)[None])
    heads = torch.from_numpy(x)[None]
    expected, _ = modeling_llama.apply_rotary_pos_emb(heads, heads, cos, sin)
    side_by_side = x.swapaxes(0, 1).reshape(16, 30)  # [n, heads * d_head], as the block holds it
    got = rotate(side_by_side, theta, np.arange(16)).reshape(16, 3, 10).swapaxes(0, 1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected[0].numpy(), rtol=0, atol=1e-6)


def test_rope_definition_agrees_with_its_numpy_meaning():
    """The index-notation definition, evaluated by sympy entry by entry, is what ``rope`` computes."""
    import sympy as sp
    from sympy.matrices.expressions.matexpr import MatrixElement

    from eqcompile.ops import RoPE, d_head
    from eqcompile.ops.base import i, j
    from eqcompile.ops.rope import rope

    (_, definition), = RoPE.definition()
    x = np.random.default_rng(1).standard_normal((5, 6))
    theta = np.array([[0.9, 0.3, 0.05]])
    expected = rope(x, theta, np.arange(5))  # one head, positions 0..4
    entry, frequency = sp.Function("x"), sp.Function("theta")  # 1-based placeholders, so no bounds checks
    definition = definition.replace(lambda e: isinstance(e, MatrixElement), lambda e: entry(e.i, e.j))
    definition = definition.replace(lambda e: isinstance(e, sp.Indexed) and e.base.label.name == "p",
                                    lambda e: e.indices[0] - 1)
    definition = definition.replace(lambda e: isinstance(e, sp.Indexed), lambda e: frequency(e.indices[0]))
    for row in range(5):
        for col in range(6):
            value = definition.subs({i: row + 1, j: col + 1, d_head: 6})
            value = value.replace(entry, lambda a, b: sp.Float(x[int(a) - 1, int(b) - 1]))
            value = value.replace(frequency, lambda k: sp.Float(theta[0, int(k) - 1]))
            assert float(value) == pytest.approx(expected[row, col], abs=1e-12)


def test_grouped_heads_is_transformers_repeat_kv():
    import torch
    from transformers.models.llama.modeling_llama import repeat_kv

    from eqcompile.ops.attention import split_heads
    from eqcompile.ops.gqa import grouped_heads

    k = np.random.default_rng(2).standard_normal((7, 2 * 5)).astype(np.float32)  # 2 kv heads of width 5
    expected = repeat_kv(torch.from_numpy(split_heads(k, 2))[None], 3)[0].numpy()  # 6 query heads
    assert np.array_equal(grouped_heads(k, 2, 6), expected)


def test_long_grouped_query_inputs_match_transformers(tmp_path):
    """Past 64 tokens, grouped-query attention key block by key block (2 key/value heads, 3 query heads each),
    in one forward and with 80 new tokens after a cached prompt."""
    folder = make_llama(tmp_path / "ckpt", num_attention_heads=6, num_key_value_heads=2, head_dim=4,
                        max_position_embeddings=150)
    module = emitted(folder, tmp_path / "out")
    assert_matches(module, lambda tokens: reference_logits(folder, tokens), 50, (65, 150))
    tokens = np.random.default_rng(1).integers(0, 50, size=150)
    state, first = module.advance(module.init_state(), tokens[:70])
    _, rest = module.advance(state, tokens[70:])
    max_abs, max_rel, ok = compare(np.concatenate([first, rest]), reference_logits(folder, tokens))
    assert ok and max_abs <= 1e-4 and max_rel <= 1e-5, (max_abs, max_rel)


def test_sliding_window_mask_is_transformers_mask():
    from transformers.masking_utils import sliding_window_causal_mask_function

    from eqcompile.ops.window import sliding_window_mask

    import torch

    visible = sliding_window_causal_mask_function(3)
    masked = sliding_window_mask(np.zeros((6, 6), dtype=np.float32), 3)
    expected = np.array([[bool(visible(0, 0, torch.tensor(q), torch.tensor(kv))) for kv in range(6)]
                         for q in range(6)])
    assert np.array_equal(np.isfinite(masked), expected)


def test_cached_generation_matches_transformers(tmp_path):
    """RoPE at the state's positions and the KV cache: greedy generation token-identical, and cached
    logits equal to the full forward at every position (sliding window and GQA included)."""
    import torch
    import transformers

    folder = make_llama(tmp_path / "ckpt", num_attention_heads=4, num_key_value_heads=2, head_dim=6)
    module = emitted(folder, tmp_path / "out")
    tokens = np.arange(16) * 7 % 50
    state, full = module.init_state(), module.forward(tokens)
    for i, token in enumerate(tokens):
        state, logits = module.advance(state, [token])
        np.testing.assert_allclose(logits[0], full[i], atol=1e-5, rtol=0)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = [3, 17, 5]
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0,
                                  attention_mask=torch.ones(1, 3, dtype=torch.long))[0, 3:].tolist()
    assert module.generate(prompt, 12, seed=0, temperature=0) == expected
