"""``eqcompile circuits``: every figure equals a dense numpy computation from the raw checkpoint tensors.

The reference here reads the safetensors file itself (no TensorRef, no Program), forms each head's
d × d matrices W_QK^h = W_Q^h W_K^hᵀ and W_OV^h = W_V^h W_O^h and the n_vocab × n_vocab full OV circuit
W_E W_OV^h W_U outright, and takes numpy's SVD, matrix_rank and eigvals of them: the definitions,
computed the slow way. eqcompile computes the same from thin factors (QR, then d_head × d_head cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from conftest import make_gpt2
from eqcompile import api
from eqcompile.cli import main
from llama_models import make_llama

RTOL = 1e-9  # float64 both ways from the same float32 weights: QR + small SVD vs dense SVD
COPYING_TOL = 1e-7  # the dense eigenvalues of a 50 × 50 non-normal matrix with 46 (near-)zero ones


def raw_heads(folder: Path) -> tuple[dict, list[list[dict]], np.ndarray | None, np.ndarray | None]:
    """(config, [layer][head] -> {q, k, v, o}, W_E [n_vocab, d], W_U [d, n_vocab]) from the file as saved."""
    config = json.loads((folder / "config.json").read_text())
    tensors = {name: value.astype(np.float64) for name, value in load_file(folder / "model.safetensors").items()}
    if config["model_type"] == "gpt2":
        d, heads, kv_heads = config["n_embd"], config["n_head"], config["n_head"]
        layers = []
        for layer in range(config["n_layer"]):
            fused = tensors[f"transformer.h.{layer}.attn.c_attn.weight"]  # Conv1D: [d, 3d], x W
            layers.append((fused[:, :d], fused[:, d:2 * d], fused[:, 2 * d:],
                           tensors[f"transformer.h.{layer}.attn.c_proj.weight"]))
        embed = tensors["transformer.wte.weight"]
    else:  # llama, qwen2: nn.Linear stores [out, in]
        d, heads = config["hidden_size"], config["num_attention_heads"]
        kv_heads = config["num_key_value_heads"]
        layers = [tuple(tensors[f"model.layers.{layer}.self_attn.{name}_proj.weight"].T for name in "qkvo")
                  for layer in range(config["num_hidden_layers"])]
        embed = tensors["model.embed_tokens.weight"]
    unembed = tensors["lm_head.weight"].T if "lm_head.weight" in tensors else embed.T
    width = d // heads
    per_head = [[{"q": q[:, h * width:(h + 1) * width], "o": o[h * width:(h + 1) * width],
                  **{name: m[:, g * width:(g + 1) * width] for name, m in (("k", k), ("v", v))}}
                 for h in range(heads) for g in [h // (heads // kv_heads)]]
                for q, k, v, o in layers]
    return config, per_head, embed, unembed


def dense_figures(per_head, embed, unembed):
    """Per head (QK, OV, copying), and composition[mode][l1][h1][l2][h2], from d × d matrices."""
    qk = [[head["q"] @ head["k"].T for head in layer] for layer in per_head]
    ov = [[head["v"] @ head["o"] for head in layer] for layer in per_head]
    copying = [[None if embed is None else _eigen_share(embed @ m @ unembed) for m in layer] for layer in ov]
    norm = np.linalg.norm
    composition = {mode: {} for mode in "qkv"}
    for l1, writers in enumerate(ov):
        for l2 in range(l1 + 1, len(ov)):
            for h1, w in enumerate(writers):
                for h2 in range(len(ov[l2])):
                    q, o = qk[l2][h2], ov[l2][h2]
                    composition["q"][l1, h1, l2, h2] = norm(w @ q) / (norm(w) * norm(q))
                    composition["k"][l1, h1, l2, h2] = norm(w @ q.T) / (norm(w) * norm(q))
                    composition["v"][l1, h1, l2, h2] = norm(w @ o) / (norm(w) * norm(o))
    return qk, ov, copying, composition


def _eigen_share(matrix: np.ndarray) -> float:
    eigenvalues = np.linalg.eigvals(matrix)
    return float(np.sum(eigenvalues).real / np.sum(np.abs(eigenvalues)))


def assert_matches_dense(folder: Path, top: int = 4) -> dict:
    """``circuits --json`` against the dense computation, figure by figure; returns the JSON."""
    result = CliRunner().invoke(main, ["circuits", str(folder), "--json", "--top", str(top)])
    assert result.exit_code == 0, result.output
    ours = json.loads(result.output)
    _, per_head, embed, unembed = raw_heads(folder)
    qk, ov, copying, composition = dense_figures(per_head, embed, unembed)
    for l, layer in enumerate(ours["layers"]):
        for h, head in enumerate(layer["heads"]):
            for key, dense in (("qk", qk[l][h]), ("ov", ov[l][h])):
                values = np.linalg.svd(dense, compute_uv=False)
                assert head[key]["frobenius"] == pytest.approx(np.linalg.norm(dense), rel=RTOL)
                np.testing.assert_allclose(head[key]["singular_values"], values[:top], rtol=RTOL, atol=RTOL * values[0])
                assert head[key]["rank"] == np.linalg.matrix_rank(dense.astype(np.float32))  # numpy's float32 rule
            assert head["ov"]["copying"] == pytest.approx(copying[l][h], abs=COPYING_TOL)
    n_layers, n_head = len(per_head), len(per_head[0])
    for mode, scores in ours["composition"].items():
        assert np.shape(scores) == (n_layers, n_head, n_layers, n_head)
        for l1 in range(n_layers):
            for h1 in range(n_head):
                for l2 in range(n_layers):
                    for h2 in range(n_head):
                        expected = composition[mode].get((l1, h1, l2, h2))
                        got = scores[l1][h1][l2][h2]
                        assert (got is None) if expected is None else got == pytest.approx(expected, rel=RTOL)
    return ours


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_equals_the_dense_computation(tmp_path, tied):
    folder = make_gpt2(tmp_path / "gpt2", n_layer=3, tie_word_embeddings=tied)
    assert ("lm_head.weight" in load_file(folder / "model.safetensors")) is not tied
    ours = assert_matches_dense(folder)
    assert ours["n_head"] == ours["n_kv_head"] == 3 and ours["d_head"] == 4


def test_llama_grouped_query_heads_read_their_group(tmp_path):
    """4 query heads, 2 key/value heads: query head h reads K/V head h // 2 (transformers' repeat_kv)."""
    folder = make_llama(tmp_path / "llama", num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                        hidden_size=16)
    ours = assert_matches_dense(folder)
    assert (ours["n_head"], ours["n_kv_head"]) == (4, 2)
    ov = [head["ov"]["frobenius"] for head in ours["layers"][0]["heads"]]
    assert len(set(ov)) == 4  # sharing W_V, heads 0 and 1 still differ through W_O


def test_qwen2_tied_one_key_value_head(tmp_path):
    folder = make_llama(tmp_path / "qwen2", "qwen2", num_key_value_heads=1, tie_word_embeddings=True)
    assert_matches_dense(folder, top=2)


def test_a_rank_deficient_head_is_counted(tmp_path):
    """Zero one column of W_Q^0 and two of W_V's head 1: ranks 3 and 2, the rest full (d_head = 4)."""
    folder = make_gpt2(tmp_path / "gpt2")
    tensors = load_file(folder / "model.safetensors")
    fused = tensors["transformer.h.0.attn.c_attn.weight"]  # [d, 3d]: Q | K | V
    fused[:, 0] = 0  # head 0 of W_Q
    fused[:, 2 * 12 + 4:2 * 12 + 6] = 0  # head 1 of W_V
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    ours = assert_matches_dense(folder)
    heads = ours["layers"][0]["heads"]
    assert [h["qk"]["rank"] for h in heads] == [3, 4, 4]
    assert [h["ov"]["rank"] for h in heads] == [4, 2, 4]


def test_bert_has_circuits_but_no_copying_score(family):
    folder, _ = family("bert")
    result = api.compile(folder).circuits(top=2)
    assert result.family == "bert" and len(result.layers) == 2
    assert all(head.ov.copying is None and head.qk.rank == 4 for layer in result.layers for head in layer)
    assert result.composition["k"][0][0][1][0] > 0 and result.composition["k"][1][0][0][0] is None


def test_the_table(tmp_path):
    folder = make_gpt2(tmp_path / "gpt2", n_layer=3)
    result = CliRunner().invoke(main, ["circuits", str(folder), "--top", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("circuits of the gpt2 model: 3 layers × 3 heads")
    rows = [line.split() for line in lines[2:11]]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(l, h) for l in range(3) for h in range(3)]
    assert all(len(r) == 1 + 1 + (1 + 2 + 1) * 2 + 1 for r in rows)  # layer head (‖·‖ σ σ rank) × 2 copying
    assert [line.split(",")[0] for line in lines[11:]] == [f"{m}-composition" for m in "QKV"]


def test_no_attention_heads_is_one_line_exit_2(family):
    folder, _ = family("mlp")
    result = CliRunner().invoke(main, ["circuits", str(folder)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "circuits needs attention heads" in result.output


def test_a_missing_tensor_is_one_line_exit_2(tmp_path):
    folder = make_gpt2(tmp_path / "gpt2")
    tensors = load_file(folder / "model.safetensors")
    del tensors["transformer.h.1.attn.c_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    result = CliRunner().invoke(main, ["circuits", str(folder)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "transformer.h.1.attn.c_proj.weight" in result.output
