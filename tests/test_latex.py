"""The LaTeX of every level compiles with pdflatex and states the model in the field's notation."""

from __future__ import annotations

import subprocess

import pytest

import eqcompile
from eqcompile.emit.latex import LEVELS

from conftest import SAMPLE, compile_tex, make_gpt2, pdflatex_available

needs_tex = pytest.mark.skipif(not pdflatex_available(), reason="pdflatex is not installed (CI installs it)")

WRAPPER = "\\documentclass{article}\n\\usepackage{amsmath,amssymb}\n\\begin{document}\n\\input{%s}\n\\end{document}\n"


def test_layer_level_uses_the_notation():
    text = eqcompile.compile(SAMPLE).latex()
    for piece in [r"X^{(l+1)}", r"W_Q^{(l)}", r"\operatorname{softmax}", r"\operatorname{mask}", r"\subsection*{Tokenizer}",
                  r"\operatorname{LN}\left(X^{(l)};\, \gamma_1^{(l)}, \beta_1^{(l)}\right)",
                  r"\frac{1}{\sqrt{d_{\mathrm{head}}}}", r"for $l = 1, \dots, L$", r"{W_E}^{\top}",
                  r"X^{(l+\frac{1}{2})} &= X^{(l)} + Z^{(l)} W_O^{(l)} + \mathbf{1} b_O^{(l)}"]:
        assert piece in text, piece
    assert r"\texttt{transformer.h.$l{-}1$.attn.c\_attn.weight[..., 0:48]}" in text


def test_model_level_is_one_composition():
    text = eqcompile.compile(SAMPLE).latex(level="model")
    assert r"f_\theta &= U \circ B^{(L)} \circ \cdots \circ B^{(1)} \circ E, \qquad L = 2" in text
    assert r"\operatorname{softmax}" not in text


def test_index_level_defines_each_op():
    text = eqcompile.compile(SAMPLE).latex(level="index")
    assert r"\frac{e^{{S}_{i,j}}}{\sum_{k=1}^{n} e^{{S}_{i,k}}}" in text  # softmax_ij
    assert r"-\infty & \text{otherwise}" in text  # the causal mask
    # the body rendered by latexify from the Python definition, named as the block's equations name it
    assert r"\operatorname{GELU}\left(x\right) &= 0.5 x \cdot" in text
    assert r"{W}_{{t}_{i},j}" in text  # embedding row lookup


def test_unrolled_layers_are_numbered():
    text = eqcompile.compile(SAMPLE).latex(unroll=True)
    assert r"W_Q^{(2)}" in text and r"X^{(3)} &= X^{(2.5)}" in text and "W_Q^{(l)}" not in text.split("Symbols")[0]


def test_fragment_and_standalone_are_deterministic():
    model = eqcompile.compile(SAMPLE)
    assert model.latex() == eqcompile.compile(SAMPLE).latex()
    document = model.latex(standalone=True)
    assert document.startswith("\\documentclass") and document.rstrip().endswith("\\end{document}")


@needs_tex
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("unroll", [False, True])
def test_every_level_compiles_with_pdflatex(tmp_path, level, unroll):
    (tmp_path / "model.tex").write_text(eqcompile.compile(SAMPLE).latex(level=level, unroll=unroll))
    (tmp_path / "main.tex").write_text(WRAPPER % "model")
    result = compile_tex(tmp_path / "main.tex")
    assert result.returncode == 0, result.stdout[-2000:]
    assert (tmp_path / "main.pdf").stat().st_size > 1000


@needs_tex
@pytest.mark.parametrize("overrides", [dict(tie_word_embeddings=False, activation_function="gelu"),
                                       dict(scale_attn_by_inverse_layer_idx=True, activation_function="relu"),
                                       dict(activation_function="sigmoid"), dict(activation_function="tanh")])
def test_variants_compile_standalone(tmp_path, overrides):
    folder = make_gpt2(tmp_path / "ckpt", **overrides)
    for level in LEVELS:
        tex = tmp_path / f"{level}.tex"
        tex.write_text(eqcompile.compile(folder).latex(level=level, standalone=True))
        result = compile_tex(tex)
        assert result.returncode == 0, result.stdout[-2000:]


@needs_tex
def test_pdf_shows_the_equations(tmp_path):
    tex = tmp_path / "doc.tex"
    tex.write_text(eqcompile.compile(SAMPLE).latex(standalone=True))
    assert compile_tex(tex).returncode == 0
    text = subprocess.run(["pdftotext", str(tmp_path / "doc.pdf"), "-"], capture_output=True, text=True).stdout
    assert "softmax" in text and "transformer.wte.weight" in text


def test_the_composition_is_a_sympy_object_any_printer_states():
    """f_θ and the stages' signatures print through sympy's own printers, as LaTeX and as text."""
    import sympy as sp

    program = eqcompile.compile(SAMPLE).program
    assert sp.latex(program.composition()) == r"U \circ B^{(L)} \circ \cdots \circ B^{(1)} \circ E"
    assert sp.sstr(program.composition()) == "U ∘ B^(L) ∘ … ∘ B^(1) ∘ E"
    assert [sp.latex(m) + " : " + sp.latex(s) for m, s in program.signatures()] == [
        r"E : \mathcal{V}^{n} \to \mathbb{R}^{n \times d}", r"B^{(l)} : \mathbb{R}^{n \times d} \to \mathbb{R}^{n \times d}",
        r"U : \mathbb{R}^{n \times d} \to \mathbb{R}^{n \times n_{vocab}}"]
