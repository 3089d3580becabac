"""Every op has its three meanings, in both printers, and they agree with each other."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from eqcompile.emit.latex import EquationPrinter
from eqcompile.emit.numpy_printer import ModulePrinter
from eqcompile.ops import (ACTIVATIONS, GELU, OPS, CausalMask, Embed, FirstRows, GELUTanh, GroupedHeads, HeadRMSNorm,
                           LayerNorm, Linear, Llama3Frequencies, MeanPool, MergeHeads, PaddingMask, PartialRoPE, QuickGELU,
                           ReLU, RMSNorm, RoPE, RotaryFrequencies, Sigmoid, SiLU, SlidingWindowMask, Softmax,
                           SplitHeads, Standardise, RMSScale, Tanh, d_head, epsilon, n_head, n_kv_head, window)
from eqcompile.ops.activation import erf
from eqcompile.ops.moe import MixtureOfExperts, top_k
from eqcompile.ops.softcap import SoftCap, UnitOffset, attention_cap
from eqcompile.ops.generic import AtenOp
from eqcompile.ops.alibi import ALiBi, alibi
from eqcompile.ops.head_norm import HeadLayerNorm
from eqcompile.ops.interleaved_rope import InterleavedRoPE
from eqcompile.ops.yarn import YarnFrequencies, ramp_end, ramp_start
from eqcompile.ops.rope import high_freq_factor, low_freq_factor, original_context, rope_factor, rope_theta

n, d = sp.symbols("n d", integer=True, positive=True)
X, W, b = MatrixSymbol("X", n, d), MatrixSymbol("W", d, d), MatrixSymbol("b", 1, d)
g, beta = MatrixSymbol("gamma", 1, d), MatrixSymbol("beta", 1, d)
t = MatrixSymbol("t", n, 1)
S = MatrixSymbol("S", n, n)
theta = MatrixSymbol("theta", 1, d / 2)
mask = MatrixSymbol("m", 1, n)


def example(op):
    """One application of each op, as an arch module would build it."""
    return {
        Embed: Embed(W, t), FirstRows: FirstRows(W, n), Linear: Linear(X, W, b),
        LayerNorm: LayerNorm(X, g, beta, epsilon), RMSNorm: RMSNorm(X, g, epsilon),
        Softmax: Softmax(S), CausalMask: CausalMask(S), SplitHeads: SplitHeads(X, n_head),
        MergeHeads: MergeHeads(X, n_head), RoPE: RoPE(X, theta, t),
        RotaryFrequencies: RotaryFrequencies(rope_theta, d_head),
        Llama3Frequencies: Llama3Frequencies(theta, rope_factor, low_freq_factor, high_freq_factor, original_context),
        GroupedHeads: GroupedHeads(X, n_kv_head, n_head), SlidingWindowMask: SlidingWindowMask(S, window),
        PaddingMask: PaddingMask(S, mask), MeanPool: MeanPool(X, mask),
        PartialRoPE: PartialRoPE(X, theta, t, d_head), HeadRMSNorm: HeadRMSNorm(X, g, epsilon, d_head),
        Standardise: Standardise(X, epsilon), RMSScale: RMSScale(X, epsilon),
        SoftCap: SoftCap(S, attention_cap), UnitOffset: UnitOffset(g),
        MixtureOfExperts: MixtureOfExperts(X, W, top_k, sp.Tuple(sp.Tuple(W, W, W))),
        AtenOp: AtenOp("clamp_min", X, 0.5), InterleavedRoPE: InterleavedRoPE(X, theta, t, d_head),
        YarnFrequencies: YarnFrequencies(theta, rope_factor, ramp_start, ramp_end),
        ALiBi: ALiBi(S, n_head), HeadLayerNorm: HeadLayerNorm(X, g, beta, epsilon, d_head),
    }.get(op) or op(X)


GOLDEN = {
    Embed: (r"W\left[t\right]", "W[t]"),
    FirstRows: (r"W\left[1{:}n\right]", "W[:n]"),
    Linear: (r"X W + \mathbf{1} b", "X @ W + b"),
    LayerNorm: (r"\operatorname{LN}\left(X;\, \gamma, \beta\right)", "layer_norm(X, gamma, beta, eps)"),
    RMSNorm: (r"\operatorname{RMSNorm}\left(X;\, \gamma\right)", "rms_norm(X, gamma, eps)"),
    Softmax: (r"\operatorname{softmax}\left(S\right)", "softmax(S)"),
    CausalMask: (r"\operatorname{mask}\left(S\right)", "causal_mask(S)"),
    SplitHeads: ("X_{h}", "split_heads(X, n_head)"),
    MergeHeads: (r"\operatorname{concat}_{h=1}^{n_{head}}\left(X\right)", "merge_heads(X)"),
    PaddingMask: (r"\operatorname{mask}_{m}\left(S\right)", "padding_mask(S, m)"),
    MeanPool: (r"\frac{m X}{m \mathbf{1}}", "mean_pool(X, m)"),
    GELUTanh: (r"\operatorname{GELU}\left(X\right)", "gelu_tanh(X)"),
    GELU: (r"\operatorname{GELU}\left(X\right)", "gelu(X)"),
    ReLU: (r"\operatorname{ReLU}\left(X\right)", "relu(X)"),
    Sigmoid: (r"\operatorname{\sigma}\left(X\right)", "sigmoid(X)"),
    SiLU: (r"\operatorname{SiLU}\left(X\right)", "silu(X)"),
    QuickGELU: (r"\operatorname{QuickGELU}\left(X\right)", "quick_gelu(X)"),
    Tanh: (r"\operatorname{\tanh}\left(X\right)", "tanh(X)"),
    RoPE: (r"\operatorname{RoPE}_{\theta}\left(X;\, t\right)", "rope(X, theta, t)"),
    RotaryFrequencies: (r"\left(rope_{\theta}^{-2(k-1)/d_{head}}\right)_{k=1}^{d_{head}/2}",
                        "rope_frequencies(rope_theta, d_head)"),
    Llama3Frequencies: (r"\operatorname{llama3}_{rope_{factor}, low_{freq factor}, high_{freq factor}, "
                        r"original_{context}}\left(\theta\right)",
                        "llama3_frequencies(theta, rope_factor, low_freq_factor, high_freq_factor, original_context)"),
    GroupedHeads: (r"X_{g{\left(h \right)}}", "grouped_heads(X, n_kv_head, n_head)"),
    SlidingWindowMask: (r"\operatorname{mask}_{w}\left(S\right)", "sliding_window_mask(S, w)"),
    PartialRoPE: (r"\operatorname{RoPE}_{\theta}\left(X;\, t\right)", "partial_rope(X, theta, t, d_head)"),
    HeadRMSNorm: (r"\operatorname{RMSNorm}_{h}\left(X;\, \gamma\right)", "head_rms_norm(X, gamma, eps, d_head)"),
    Standardise: (r"\operatorname{norm}_{\mathrm{LN}}\left(X\right)", "standardise(X, eps)"),
    RMSScale: (r"\operatorname{norm}_{\mathrm{RMS}}\left(X\right)", "rms_scale(X, eps)"),
    SoftCap: (r"\operatorname{cap}_{c_{attn}}\left(S\right)", "soft_cap(S, c_attn)"),
    UnitOffset: (r"\left(1 + \gamma\right)", "unit_offset(gamma)"),
    MixtureOfExperts: (r"\operatorname{MoE}_{K}\left(X;\, W, E_{1}, \dots, E_{1}\right)",
                       "mixture_of_experts(X, W, K, ((W, W, W),))"),
    InterleavedRoPE: (r"\operatorname{RoPE}^{\mathrm{pairs}}_{\theta}\left(X;\, t\right)",
                      "interleaved_rope(X, theta, t, d_head)"),
    AtenOp: (r"\operatorname{clamp\_min}\left(X, 0.5\right)", "np.maximum(X, 0.5)"),
    YarnFrequencies: (r"\operatorname{YaRN}_{rope_{factor}, yarn_{low}, yarn_{high}}\left(\theta\right)",
                      "yarn_frequencies(theta, rope_factor, yarn_low, yarn_high)"),
    ALiBi: (r"\operatorname{ALiBi}\left(S\right)", "alibi(S, n_head)"),
    HeadLayerNorm: (r"\operatorname{LN}_{h}\left(X;\, \gamma, \beta\right)", "head_layer_norm(X, gamma, beta, eps, d_head)"),
}


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
def test_every_op_prints_in_both_printers(op):
    """The registry test: a missing handler would fall back silently to sympy's default."""
    assert callable(getattr(op, "_latex", None)) and callable(getattr(op, "_numpycode", None))
    expr = example(op)
    latex = EquationPrinter().doprint(expr)
    code = ModulePrinter({epsilon: "eps"}).doprint(expr)
    assert (latex, code) == GOLDEN[op]
    assert op.definition_latex(EquationPrinter())  # and it has an index-notation definition


@pytest.mark.parametrize("op", ACTIVATIONS, ids=lambda op: op.__name__)
def test_numpy_activation_matches_its_scalar_definition(op):
    x = np.linspace(-9, 9, 2001)
    expected = sp.lambdify(sp.Symbol("x"), op.scalar(sp.Symbol("x")), "math")
    expected = np.array([expected(float(v)) for v in x])
    for dtype, tolerance in [(np.float64, 3e-7), (np.float32, 2e-6)]:
        got = op.numpy_functions[-1](x.astype(dtype))
        assert got.dtype == dtype  # no promotion of float32 to float64
        np.testing.assert_allclose(got, expected, atol=tolerance, rtol=tolerance)


def test_erf_is_accurate_to_float32_rounding():
    x = np.linspace(-6, 6, 100001)
    assert np.max(np.abs(erf(x) - np.array([math.erf(v) for v in x]))) < 1.5e-7


def test_attention_ops_run_all_heads_at_once():
    from eqcompile.ops.attention import causal_mask, merge_heads, softmax, split_heads
    rng = np.random.default_rng(0)
    q = rng.standard_normal((5, 6)).astype(np.float32)
    heads = split_heads(q, 3)
    assert heads.shape == (3, 5, 2) and np.array_equal(heads[1], q[:, 2:4])
    assert np.array_equal(merge_heads(heads), q)
    scores = causal_mask(heads @ heads.mT)
    probs = softmax(scores)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-6)
    assert np.all(probs[:, 0, 1:] == 0) and np.all(np.triu(probs[2], 1) == 0)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2), (3, 1)])
@pytest.mark.parametrize("n, m", [(1, 1), (5, 5), (64, 64), (65, 65), (130, 130), (1, 140), (70, 140), (100, 103)])
def test_causal_attention_is_its_definition(heads, kv_heads, n, m):
    """causal_attention = softmax(causal_mask(Q Kᵀ)) V with key/value head h // group (transformers'
    repeat_kv) for query head h, as written up to 64 tokens and block by block beyond (also with
    blocks of 7 and 200 keys); n queries are the last n of m positions (a KV cache holds the rest)."""
    from eqcompile.ops.attention import causal_attention, causal_mask, softmax
    from eqcompile.ops.gqa import grouped_heads

    rng = np.random.default_rng(n + m)
    q = (3 * rng.standard_normal((heads, n, 8))).astype(np.float32)
    k, v = (rng.standard_normal((m, kv_heads * 8)).astype(np.float32) for _ in range(2))
    k_h, v_h = (x.reshape(m, kv_heads, 8).swapaxes(0, 1) for x in (k, v))  # what split_heads gives
    expected = softmax(causal_mask(q @ grouped_heads(k, kv_heads, heads).mT)) @ grouped_heads(v, kv_heads, heads)
    for block in (7, 64, 200):
        got = causal_attention(q, k_h, v_h, block)
        assert got.dtype == np.float32 and got.shape == (heads, n, 8)
        np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)


def test_fused_causal_attention_prints_one_call_and_leaves_other_masks():
    from eqcompile.arch.common import causal_self_attention, self_attention
    from eqcompile.ops import PaddingMask, n_kv_head
    from eqcompile.ops.attention import fuse_causal_attention

    q, k, v = (MatrixSymbol(name, n, 12) for name in "qkv")
    fused = fuse_causal_attention(causal_self_attention(q, k, v, 1 / sp.sqrt(4)))
    assert len(fused) == 1 and fused[0].lhs.name == "z"
    assert ModulePrinter({}).doprint(fused[0].rhs) == (
        "merge_heads(causal_attention(split_heads(q, n_head) / 2, split_heads(k, n_head), split_heads(v, n_head)))")
    grouped = fuse_causal_attention(self_attention(q, k, v, 1, CausalMask, kv_heads=n_kv_head))
    assert "split_heads(k, n_kv_head), split_heads(v, n_kv_head)" in ModulePrinter({}).doprint(grouped[0].rhs)
    padded = self_attention(q, k, v, 1, lambda s: PaddingMask(s, MatrixSymbol("mask", 1, n)))
    assert fuse_causal_attention(padded) == padded


def test_alibi_is_its_definition():
    """alibi adds m_h (j - i) with m_h = 2^(-8h/H) to head h's scores, the queries being the last n of m
    keys (a KV cache holds the rest), and keeps float32."""
    rng = np.random.default_rng(0)
    s = rng.standard_normal((4, 3, 7)).astype(np.float32)
    got = alibi(s, 4)
    assert got.dtype == np.float32
    for h in range(4):
        for r in range(3):
            for c in range(7):
                expected = s[h, r, c] + 2.0 ** (-8 * (h + 1) / 4) * (c - (r + 4))
                assert abs(got[h, r, c] - expected) < 1e-6


def test_head_layer_norm_normalises_each_head_alone():
    from eqcompile.ops.head_norm import head_layer_norm
    rng = np.random.default_rng(0)
    x, gamma, beta = (rng.standard_normal(shape).astype(np.float32) for shape in ((3, 12), (1, 4), (1, 4)))
    got = head_layer_norm(x, gamma, beta, 1e-5, 4)
    assert got.dtype == np.float32
    for h in range(3):
        part = x[:, 4 * h:4 * h + 4].astype(np.float64)
        expected = (part - part.mean(-1, keepdims=True)) / np.sqrt(part.var(-1, keepdims=True) + 1e-5) * gamma + beta
        np.testing.assert_allclose(got[:, 4 * h:4 * h + 4], expected, rtol=1e-5, atol=1e-5)
