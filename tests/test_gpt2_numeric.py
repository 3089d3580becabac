"""The emitted numpy module computes what transformers' GPT2LMHeadModel computes.

Tolerance (float32): max |error| <= 1e-4 and max |error| / max |reference| <= 1e-5.
"""

from __future__ import annotations

import ast
import sys

import numpy as np
import pytest

import eqcompile
from eqcompile.emit.python import import_module
from eqcompile.verify import compare

from conftest import SAMPLE, make_gpt2, make_sparse_gpt2, reference_logits

CONFIGS = {
    "default": {},
    "three-heads-odd-width": dict(n_embd=15, n_head=3, n_layer=3),
    "untied": dict(tie_word_embeddings=False),
    "eps-1e-3": dict(layer_norm_epsilon=1e-3),
    "gelu-erf": dict(activation_function="gelu"),
    "relu-n_inner": dict(activation_function="relu", n_inner=20),
    "quick-gelu": dict(activation_function="quick_gelu"),
    "silu": dict(activation_function="silu"),
    "no-scale": dict(scale_attn_weights=False),
    "inverse-layer-scale": dict(scale_attn_by_inverse_layer_idx=True, n_layer=3),
    "one-head": dict(n_head=1),
}


def emitted(folder, out):
    return import_module(eqcompile.compile(folder).to_python(out), name=f"m_{abs(hash(str(out)))}")


def assert_faithful(module, folder, n_ctx, vocab, seed=0):
    rng = np.random.default_rng(seed)
    for seq in sorted({1, 7, n_ctx}):
        tokens = rng.integers(0, vocab, size=seq)
        logits = module.forward(tokens)
        expected = reference_logits(folder, tokens)
        assert logits.dtype == np.float32
        assert logits.shape == (seq, vocab)
        max_abs, max_rel, ok = compare(logits, expected)
        assert max_abs <= 1e-4 and max_rel <= 1e-5, (seq, max_abs, max_rel)
        assert ok


@pytest.mark.parametrize("name", CONFIGS)
def test_random_configs_match_transformers(tmp_path, name):
    folder = make_gpt2(tmp_path / "ckpt", seed=len(name), **CONFIGS[name])
    module = emitted(folder, tmp_path / "out")
    assert_faithful(module, folder, n_ctx=16, vocab=50)


def test_long_inputs_attend_block_by_block_and_match_transformers(tmp_path):
    """Past 64 tokens attention runs key block by key block (online softmax): still transformers' logits,
    in one forward and with 64+ new tokens after a cached prompt (keys before the queries)."""
    folder = make_gpt2(tmp_path / "ckpt", n_positions=200)
    module = emitted(folder, tmp_path / "out")
    blocked_calls = []
    blocked = module.blocked_causal_attention
    module.blocked_causal_attention = lambda *args: blocked_calls.append(args[0].shape) or blocked(*args)
    assert_faithful(module, folder, n_ctx=200, vocab=50)
    tokens = np.random.default_rng(1).integers(0, 50, size=200)
    state, first = module.advance(module.init_state(), tokens[:70])
    _, rest = module.advance(state, tokens[70:])
    max_abs, max_rel, ok = compare(np.concatenate([first, rest]), reference_logits(folder, tokens))
    assert ok and max_abs <= 1e-4 and max_rel <= 1e-5, (max_abs, max_rel)
    assert len(blocked_calls) == 3 * 2  # forward of 200 tokens, then advances of 70 and 130: 2 layers each


def test_sample_matches_transformers(tmp_path):
    module = emitted(SAMPLE, tmp_path / "out")
    assert_faithful(module, SAMPLE, n_ctx=64, vocab=58)


def test_fp16_checkpoint_matches_transformers_in_float32(tmp_path):
    """Half-precision weights load exactly; the maths then runs in float32 on both sides."""
    import torch
    import transformers

    folder = make_gpt2(tmp_path / "ckpt")
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).to(torch.float16)
    model.save_pretrained(tmp_path / "half")
    module = emitted(tmp_path / "half", tmp_path / "out")
    reference = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "half", dtype=torch.float32).eval()
    tokens = np.arange(10) % 50
    with torch.no_grad():
        expected = reference(torch.as_tensor(tokens)[None]).logits[0].numpy()
    max_abs, max_rel, ok = compare(module.forward(tokens), expected)
    assert ok, (max_abs, max_rel)


def test_emitted_module_is_standalone_and_loop_free(tmp_path):
    """Imports only numpy and the standard library; no Python loop over heads or positions."""
    path = eqcompile.compile(SAMPLE).to_python(tmp_path / "out")
    tree = ast.parse(path.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "numpy" in imported and imported - {"numpy"} <= sys.stdlib_module_names
    stage_functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)
                       and n.name in ("embedding", "block", "unembedding")]
    assert len(stage_functions) == 3
    for function in stage_functions:
        assert not any(isinstance(n, (ast.For, ast.While, ast.comprehension)) for n in ast.walk(function))


def test_forward_rejects_bad_tokens(tmp_path):
    module = emitted(SAMPLE, tmp_path / "out")
    with pytest.raises(ValueError):
        module.forward([58])
    with pytest.raises(ValueError):
        module.forward(list(range(65)))


def test_verify_reports_within_tolerance(tiny_gpt2):
    from eqcompile.verify import verify

    results = verify(eqcompile.compile(tiny_gpt2), [1, 16])
    assert [r.seq for r in results] == [1, 16]
    assert all(r.ok and r.max_abs <= 1e-4 for r in results)


def test_verify_allows_deeper_models_proportionally_more_absolute_error(tmp_path):
    from eqcompile.verify import ABS_TOLERANCE, absolute_tolerance

    def tolerance(layers):
        return absolute_tolerance(eqcompile.compile(make_sparse_gpt2(tmp_path / str(layers), n_layer=layers,
                                                                     n_embd=64, vocab_size=10, n_positions=8)))

    assert tolerance(2) == tolerance(12) == ABS_TOLERANCE
    assert tolerance(30) == pytest.approx(2.5 * ABS_TOLERANCE)


def test_verify_catches_a_wrong_module(tiny_gpt2, monkeypatch):
    """The comparison can fail: perturb one weight the emitted module reads."""
    from eqcompile.program import Binding
    from eqcompile.verify import verify

    original = Binding.read

    def perturbed(binding, checkpoint, program, *dtype):
        value = original(binding, checkpoint, program, *dtype).copy()
        if binding.param.name == "W_O" and binding.layer == 1:  # one entry: a uniform shift LayerNorm would undo
            value[0, 0] += 1e-2
        return value

    monkeypatch.setattr(Binding, "read", perturbed)
    results = verify(eqcompile.compile(tiny_gpt2), [8])
    assert not results[0].ok
