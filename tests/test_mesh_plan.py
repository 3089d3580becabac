"""``eqcompile stats MODEL --mesh DATAxMODEL``: the JAX module's placement per device, from shapes alone.

Every figure is checked against a hand computation from the model's published shapes (written
out below, not derived from eqcompile's code). tests/test_jax.py checks that the all-reduces
counted here are the ones XLA compiles for the sharded module.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

import eqcompile
from eqcompile.cli import main

from conftest import SAMPLE, make_sparse_llama


def llama_2_70b(folder):
    """Llama-2-70B's shapes, header only: d = 8192, 80 layers, 64 heads, 8 KV heads, d_ff = 28672."""
    return make_sparse_llama(folder, n_layer=80, width=8192, heads=64, kv_heads=8, ffn=28672, vocab=32000)


def test_llama_2_70b_on_an_8x8_mesh_by_hand(tmp_path):
    d, layers, kv_width, d_ff, vocab, bf16, model = 8192, 80, 8 * 128, 28672, 32000, 2, 8
    per_layer = d * d * 2 + d * kv_width * 2 + 3 * d * d_ff  # W_Q, W_O, W_K, W_V, gate, up, down: all split
    norms = layers * 2 * d + d  # replicated
    total = layers * per_layer + 2 * vocab * d + norms  # untied W_E and W_U: split over the vocabulary
    assert total == 68_976_648_192  # Llama-2-70B's parameter count
    result = CliRunner().invoke(main, ["stats", str(llama_2_70b(tmp_path / "70b")), "--mesh", "8x8",
                                       "--dtype", "bfloat16", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)["mesh"]
    assert plan["weight_bytes"] == total * bf16
    assert plan["weight_bytes_per_device"] == ((total - norms) // model + norms) * bf16 == 17_246_470_144
    assert plan["replicated"] == []
    assert plan["kv_cache_bytes_per_token"] == layers * 2 * kv_width * bf16 // model == 40_960  # one KV head each
    assert plan["all_reduces_per_layer"] == 2  # after W_O and after W_down
    assert plan["all_reduce_bytes_per_layer_per_token"] == 2 * d * bf16 == 32_768
    assert plan["ring_bytes_per_layer_per_token"] == 2 * 7 * 32_768 // 8 == 57_344
    assert (plan["all_reduces_outside_layers"], plan["all_reduce_bytes_outside_layers_per_token"]) == (1, d * bf16)


def test_the_sample_on_an_8x8_mesh_by_hand():
    """d = 48, 2 layers, 3 heads (do not divide 8: attention replicated), d_ff = 192, vocabulary 58
    (does not divide 8: W_E replicated), n_ctx = 64, float32."""
    d, layers, d_ff, vocab, ctx, f32, model = 48, 2, 192, 58, 64, 4, 8
    mlp = d * d_ff + d_ff + d_ff * d  # W_in, b_in, W_out: split
    rest = 4 * d + 3 * (d * d + d) + d * d + d + d  # norms, W_Q/K/V with biases, W_O, b_O, b_out
    total = layers * (mlp + rest) + vocab * d + ctx * d + 2 * d
    plan = eqcompile.compile(SAMPLE).mesh_plan(8, 8, dtype_bytes=f32)
    assert plan.weight_bytes == total * f32 == 249_984
    assert plan.weight_bytes_per_device == (total - layers * mlp + layers * mlp // model) * f32
    assert "embedding.W_E" in plan.replicated and "block.W_O" in plan.replicated
    assert plan.kv_cache_bytes_per_token == layers * 2 * d * f32  # heads replicated: every device caches all
    assert (plan.all_reduces_per_layer, plan.all_reduce_bytes_per_layer_per_token) == (1, d * f32)  # W_out only
    assert plan.all_reduces_outside_layers == 0
    one_device = eqcompile.compile(SAMPLE).mesh_plan(8, 1)
    assert one_device.weight_bytes_per_device == one_device.weight_bytes and one_device.all_reduces_per_layer == 0


def test_cli_mesh_text_and_a_bad_mesh():
    result = CliRunner().invoke(main, ["stats", str(SAMPLE), "--mesh", "2x4"])
    assert result.exit_code == 0, result.output
    assert "2 x 4 (data x model), 8 devices, float32" in result.output
    assert "all-reduces per layer       1 per token: 192 bytes" in result.output
    for bad in ("8", "0x8", "8x", "ax8"):
        result = CliRunner().invoke(main, ["stats", str(SAMPLE), "--mesh", bad])
        assert result.exit_code == 2 and "DATAxMODEL" in result.output, bad
