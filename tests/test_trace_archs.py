"""The tracer on the architectures README's table once refused: LayerNorm without gain and shift
(OLMo), with a 1 + w gain (Nemotron, relu² lowered generically) or without shift (MPT),
multi-query keys unsqueezed (GPT-BigCode), ALiBi (BLOOM, MPT: written-out attention with a new op),
q, v, k fused per group of heads (CodeGen), a LayerNorm of each head (Persimmon: a new op).

Each is a tiny random checkpoint saved by transformers (random norm gains and biases); it compiles
to LaTeX at every level and to the numpy module, which must give transformers' logits within
``ATOL``/``RTOL`` at 1, 5 and 16 tokens, and greedy generation (the KV cache) must give
transformers' 16 tokens. ``tests/trace_sweep.py`` runs every other causal LM type."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import eqcompile  # noqa: E402
from eqcompile.emit.latex import LEVELS  # noqa: E402
from eqcompile.emit.python import import_module  # noqa: E402
from test_trace import (SMALL, assert_greedy_generation_matches, assert_traced_module_matches,  # noqa: E402
                        save_random)

ARCHITECTURES = {  # model_type -> settings over SMALL
    "bloom": {},  # ALiBi in baddbmm; q, k, v fused per head
    "olmo": {},  # LayerNorm without gain and shift: Standardise
    "nemotron": dict(num_key_value_heads=2, head_dim=8),  # LayerNorm with 1 + w; partial rotary; relu²
    "gpt_bigcode": dict(n_inner=40, n_positions=32),  # multi-query: one key/value head
    "mpt": dict(d_model=32, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=32),  # ALiBi; LN without shift
    # q, v, k per group of heads (mp_num = 4 groups of 2 heads), interleaved rotary on 4 of 4 features
    "codegen": dict(num_attention_heads=8, n_positions=32, rotary_dim=4),
    "persimmon": {},  # q, k, v fused per head, LayerNorm of each query and key head, partial rotary, relu²
}
DEFAULT_RUN = ("bloom",)  # the others run with -m slow (each costs an export)


def make_checkpoint(folder: Path, model_type: str, seed: int = 0) -> Path:
    settings = {**SMALL, **ARCHITECTURES[model_type]}
    return save_random(lambda: transformers.AutoConfig.for_model(model_type, **settings), folder, seed)


@pytest.mark.parametrize("model_type", [pytest.param(t, marks=() if t in DEFAULT_RUN else pytest.mark.slow)
                                        for t in ARCHITECTURES])
def test_once_refused_architecture_matches_transformers(tmp_path, model_type):
    folder = make_checkpoint(tmp_path / "ckpt", model_type)
    compiled = eqcompile.compile(folder)
    for level in LEVELS:
        assert compiled.latex(level=level)
    assert_traced_module_matches(folder, compiled, tmp_path / "out", f"archs_{model_type}")
    assert_greedy_generation_matches(folder, compiled, tmp_path / "gen", f"archs_{model_type}_gen")


def test_bloom_states_alibi_and_its_jax_module_generates_alike(tmp_path):
    """BLOOM's scores are ALiBi(c Q Kᵀ) under the causal mask (its bias m_h j differs from m_h (j - i) by
    a constant per row); model_jax.py (padded buckets, a fixed-size cache) generates model.py's tokens."""
    pytest.importorskip("jax")
    compiled = eqcompile.compile(make_checkpoint(tmp_path / "ckpt", "bloom", seed=1))
    latex = compiled.latex()
    assert r"\operatorname{mask}\left(\operatorname{ALiBi}\left(\frac{1}{\sqrt{d_{\mathrm{head}}}} Q^{(l)}_{h}" in latex
    definitions = compiled.latex(level="index")
    assert r"{\operatorname{ALiBi}\left(S\right)}_{i,j} &= \left(j - i\right) {m}_{h} + {S}_{i,j}" in definitions
    assert r"{m}_{h} &= 2^{- \frac{8 h}{n_{\mathrm{head}}}}" in definitions
    path = compiled.to_jax(tmp_path / "out")
    jax_module, numpy_module = (import_module(p, f"archs_bloom_{p.stem}") for p in (path, path.with_name("model.py")))
    prompt = [3, 14, 15, 9]
    assert jax_module.generate(prompt, 12, seed=0, temperature=0) == numpy_module.generate(prompt, 12, seed=0,
                                                                                          temperature=0)
