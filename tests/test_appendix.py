"""The PDF appendix, read as a reader reads it: compiled by TeX, its text extracted by pdftotext."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

import eqcompile
from eqcompile.cli import main
from eqcompile.emit import appendix as appendix_emitter
from eqcompile.emit.appendix import NUMBERS_LIMIT, PACKAGES, Statistics, Table
from eqcompile.emit.numbers import latex_number
from eqcompile.emit.latex import EquationLine
from eqcompile.emit.pdf import build_pdf, error_summary
from eqcompile.errors import ConfigError, TeXError

from conftest import FAMILIES, SAMPLE, make_gpt2, make_sparse_gpt2

needs_tex = pytest.mark.skipif(not (shutil.which("latexmk") and shutil.which("pdflatex") and shutil.which("pdftotext")),
                               reason="latexmk, pdflatex and pdftotext are not installed (CI installs them)")
pytestmark = needs_tex


def pdf_text(pdf: bytes) -> str:
    return subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()


def page_count(pdf: bytes) -> int:
    info = subprocess.run(["pdfinfo", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    return int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))


def overfull_boxes(log: str) -> list[str]:
    """Overfull boxes of more than 1pt in a TeX log."""
    return [line for line in log.splitlines()
            if (m := re.match(r"Overfull \\[hv]box \((\d+(?:\.\d+)?)pt too", line)) and float(m.group(1)) > 1]


def squeeze(text: str) -> str:
    """Text without whitespace: a name broken across lines reads whole again."""
    return "".join(text.split())


GPT2_SYMBOLS = ("softmax", "mask", "LN", "concat", "fθ=U◦B(L)◦···◦B(1)◦E")
SYMBOLS = {  # what each model's appendix must show besides its tensors (pdftotext's text, squeezed)
    "sample": (*GPT2_SYMBOLS, "62,496", "64tokens", "WordLevel", "Greedydecoding", "argmax", "Tokenizerandsampling",
               "GELU"),
    "llama-gqa": ("fθ=U◦B(L)◦···◦B(1)◦E", "RMSNorm", "RoPEθ", "SiLU", "softmax", "mask", "concat",
                  "Kg(h)", "nkv=2", "Z=H(L)WU", "lm_head.weight"),  # g(h): the key/value head of head h, under (l)
    "qwen2-bias-window": ("RMSNorm", "RoPEθ", "WQ+1bQ", "WK+1bK", "WV+1bV", "maskw", "w=4", "nkv=1",
                          "Z=H(L)WE⊤"),  # tied: the unembedding is the embedding's transpose
    "bert": ("fθ=B(L)◦···◦B(1)◦E", "LN(WE[t]+WS[s]+WP[1:n];γE,βE)", "maskm", "GELU", "ntypes=3",
             "Tensorsofthefilethatnoequationuses:pooler.dense.bias,pooler.dense.weight."),
    "bert-mean-pooling": ("fθ=P◦B(L)◦···◦B(1)◦E", "P:Rn×d→R1×d", "maskm", "LN"),
    "mlp": ("fθ=f2◦f1", "h1=GELU(W1x+b1)", "y=W2h1+b2", "Dimensions:d0=4,d1=16,d2=4.", "148"),
}
assert list(SYMBOLS) == ["sample", *FAMILIES]


def assert_states_the_model(model: eqcompile.CompiledModel, pdf: bytes, log: str,
                            symbols: tuple[str, ...] = GPT2_SYMBOLS) -> str:
    """What every appendix must show a reader; returns the squeezed text for further checks."""
    assert page_count(pdf) > 0
    text = squeeze(pdf_text(pdf))
    for piece in ["Modelcard", "Themodelasacomposition", "Equations", *symbols, "Symbols", "Operationsinindexnotation",
                  model.checkpoint.sha256()]:
        assert piece in text, piece
    for stage in model.program.stages:  # every stage, and every block layer by layer
        assert squeeze(stage.title) in text, stage.title
        for layer in range(1, (stage.layers or 0) + 1):
            assert f"{stage.letter}({layer})" in text, f"{stage.title} {layer} is missing"
    for name in model.checkpoint.tensors:
        assert squeeze(name) in text, f"tensor {name} is not in the symbol table"
    assert not overfull_boxes(log), overfull_boxes(log)
    return text


@pytest.fixture(scope="module")
def sample():
    return eqcompile.compile(SAMPLE)


@pytest.fixture(scope="module")
def sample_build(sample):
    return build_pdf(appendix_emitter.tex(sample.appendix()))


@pytest.fixture(scope="module")
def built(sample, sample_build, family):
    """``built(name)``: the sample or a FAMILIES model, compiled, and its appendix's PDF; made once."""
    made = {"sample": (sample, sample_build)}

    def get(name: str):
        if name not in made:
            folder, options = family(name)
            model = eqcompile.compile(folder, **options)
            made[name] = model, build_pdf(appendix_emitter.tex(model.appendix()))
        return made[name]
    return get


def model_source(name: str, family) -> tuple[Path, dict]:
    return (SAMPLE, {}) if name == "sample" else family(name)


@pytest.mark.parametrize("name", SYMBOLS)
def test_appendix_states_the_model(built, name):
    model, build = built(name)
    text = assert_states_the_model(model, build.pdf, build.log, SYMBOLS[name])
    # a model of token ids has a context and a vocabulary; a model of a vector (an MLP) has neither
    assert ("Context" in text, "Vocabulary" in text) == (model.program.takes_tokens,) * 2


@pytest.mark.parametrize("name", SYMBOLS)
def test_each_weights_statistics_are_those_of_its_source_tensor(built, name):
    """Every row of the symbol table against the tensor (or slice) it names, read with safetensors."""
    model, build = built(name)
    tensors = load_file(model.checkpoint.files[0])
    text = squeeze(pdf_text(build.pdf))
    rows = model.appendix().symbols
    assert [row.key for row in rows] == [binding.key for binding in model.program.bindings()]
    for row, binding in zip(rows, model.program.bindings()):
        values = tensors[binding.source.name].astype(np.float64)
        if binding.source.columns:
            values = values[..., slice(*binding.source.columns)]
        reference = (np.linalg.norm(values), values.mean(), values.std(), values.min(), values.max())
        np.testing.assert_allclose(row.statistics.values(), reference, rtol=1e-9, atol=1e-12, err_msg=row.key)
        assert row.dtype == "F32" and math.prod(row.shape) == values.size, row
        for value in row.statistics.values():
            printed = latex_number(value)
            if "times" not in printed:  # the plain decimals, as pdftotext reads them
                assert printed.replace("-", "−") in text, (row.key, printed)


def test_statistics_are_those_of_the_weights(sample, sample_build):
    """Each row's numbers, checked against the tensors read independently (safetensors, float64)."""
    tensors = load_file(SAMPLE / "model.safetensors")
    rows = {row.key: row for row in sample.appendix().symbols}
    fused = tensors["transformer.h.1.attn.c_attn.weight"].astype(np.float64)
    for key, expected in [("block.1.W_K", fused[:, 48:96]), ("embedding.W_E", tensors["transformer.wte.weight"]),
                          ("unembedding.gamma_f", tensors["transformer.ln_f.weight"])]:
        values = np.asarray(expected, dtype=np.float64)
        reference = (np.linalg.norm(values), values.mean(), values.std(), values.min(), values.max())
        np.testing.assert_allclose(rows[key].statistics.values(), reference, rtol=1e-9, atol=1e-12)
        assert rows[key].dtype == "F32"
    text = squeeze(pdf_text(sample_build.pdf))
    assert latex_number(rows["block.1.W_K"].statistics.frobenius) in text


def test_statistics_in_chunks_match_numpy():
    values = (np.random.default_rng(0).standard_normal((3, 700_001)) * 0.02 + 1.0).astype(np.float32)
    reference = values.astype(np.float64)
    np.testing.assert_allclose(Statistics.of(values).values(),
                               (np.linalg.norm(reference), reference.mean(), reference.std(),
                                reference.min(), reference.max()), rtol=1e-9)
    assert Statistics.of(np.zeros((0, 4), np.float32)) is None


@pytest.mark.parametrize("name", SYMBOLS)
def test_same_input_same_pdf_bytes(tmp_path, built, family, name, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    folder, options = model_source(name, family)
    path = eqcompile.compile(folder, **options).pdf(tmp_path / "again.pdf")  # compiled afresh
    assert path.read_bytes() == built(name)[1].pdf
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary file left


@pytest.mark.slow
def test_gpt2_124m_shaped_12_layers(tmp_path):
    """The full GPT-2 small shape (zeros for data): 12 unrolled blocks, 196 weights, no overfull box."""
    model = eqcompile.compile(make_sparse_gpt2(tmp_path / "gpt2"))
    build = build_pdf(appendix_emitter.tex(model.appendix()))
    text = assert_states_the_model(model, build.pdf, build.log)
    assert "124,439,808" in text


@pytest.mark.parametrize("options", [
    dict(tie_word_embeddings=False, activation_function="gelu",
         generation=dict(do_sample=True, temperature=0.7, top_k=40, top_p=0.9)),
    dict(scale_attn_by_inverse_layer_idx=True, activation_function="relu", n_head=1, n_layer=12),
    dict(lm_head_model=False, without_config=True),
], ids=["untied-gelu", "12-layers-inverse-layer-scale", "bare-GPT2Model-no-config"])
def test_random_gpt2_appendices(tmp_path, options):
    options = dict(options)
    without_config = options.pop("without_config", False)
    generation = options.pop("generation", None)
    folder = make_gpt2(tmp_path / "ckpt", **options)
    if without_config:
        (folder / "config.json").unlink()
    if generation:
        (folder / "generation_config.json").write_text(json.dumps(generation))
    model = eqcompile.compile(folder)
    build = build_pdf(appendix_emitter.tex(model.appendix()))
    text = assert_states_the_model(model, build.pdf, build.log)
    if without_config:
        assert "Note:noconfig.json" in text
    if options.get("tie_word_embeddings") is False:
        assert "W⊤" not in text and "lm_head.weight" in text
    if generation:  # the sampling map: temperature, then top-k, then top-p
        for piece in ["temperatureT=0.7", "the40mostprobable", "reaches0.9(top-p)", "p(v|t1,...,tn)="]:
            assert piece in text, piece


def add_tensors(folder: Path, extra: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    save_file({**tensors, **extra}, path, metadata={"format": "pt", **metadata})


EVIL = [r"x\immediate\write18{touch pwned-shell}", r"x\immediate\openout9=pwned-openout.tex\closeout9",
        r"$&#%^_~{}<>|\"end", "long" + "x" * 150]


def test_checkpoint_strings_are_typeset_literally(tmp_path):
    """Tensor names, metadata, paths and title with TeX specials print as they are, and run nothing."""
    folder = make_gpt2(tmp_path / "we$ird&{folder}#%_~^")
    add_tensors(folder, {name: np.zeros(2, np.float32) for name in EVIL}, {"note": r"\input{/etc/hostname}%"})
    model = eqcompile.compile(folder)
    build_folder = tmp_path / "build"
    title, author = r"A \textbf{title} $x$ & {more}", r"\input{/etc/hostname} \def\a{b}"
    build = build_pdf(appendix_emitter.tex(model.appendix(title=title, author=author)), folder=build_folder)
    text = assert_states_the_model(model, build.pdf, build.log)
    for literal in [*EVIL, title, author, r"\input{/etc/hostname}%", folder.name]:
        assert squeeze(literal) in text, literal
    assert not list(tmp_path.rglob("pwned*")) and not list(Path.cwd().glob("pwned*"))
    unused = model.appendix().unused
    assert sorted(unused) == sorted(EVIL)


def test_long_equations_break_and_a_cost_table_shows(sample):
    cost = Table("Cost of one forward pass at n = 64 (illustrative numbers).", ["stage", "FLOPs", "bytes & co"],
                 [["Embedding", "1", "2"], ["Transformer block", "3", "4.5"]])
    appendix = sample.appendix(cost=cost)
    long_sum = " + ".join(rf"H^{{({i})}} W_Q^{{({i})}} \mathbf{{1}} b_Q^{{({i})}}" for i in range(1, 80))
    appendix.stages[1].lines.append(EquationLine("Y", rf"\operatorname{{softmax}}\left({long_sum}\right)"))
    build = build_pdf(appendix_emitter.tex(appendix))
    assert not overfull_boxes(build.log), overfull_boxes(build.log)
    text = squeeze(pdf_text(build.pdf))
    for piece in ["Costofoneforwardpassatn=64", "stageFLOPsbytes&co", "Transformerblock", "4.5"]:
        assert piece in text, piece


def test_literal_matrices_for_a_tiny_model(tmp_path):
    folder = make_gpt2(tmp_path / "tiny", n_embd=12, vocab_size=20, n_positions=8)
    model = eqcompile.compile(folder)
    appendix = model.appendix(numbers=True)
    build = build_pdf(appendix_emitter.tex(appendix))
    assert not overfull_boxes(build.log), overfull_boxes(build.log)
    text = squeeze(pdf_text(build.pdf))
    table = load_file(folder / "model.safetensors")["transformer.wte.weight"].astype(np.float64)
    piece = table[:24, :8]  # the first piece: 10^e times entries to three decimals
    exponent = int(np.floor(np.log10(np.abs(piece).max())))
    assert f"10{exponent}·".replace("-", "−") in text
    for value in (piece[0, 0], piece[-1, -1], piece.max()):
        assert f"{value / 10.0**exponent:.3f}".replace("-", "−") in text
    assert len(appendix.matrices) >= len(model.program.bindings())


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_literal_matrices_for_each_family(family, name):
    """--numbers: each stage's first matrix, read from the file and laid out as the appendix says, is printed."""
    folder, options = family(name)
    model = eqcompile.compile(folder, **options)
    appendix = model.appendix(numbers=True)
    build = build_pdf(appendix_emitter.tex(appendix))
    assert not overfull_boxes(build.log), overfull_boxes(build.log)
    text = squeeze(pdf_text(build.pdf))
    tensors = load_file(folder / "model.safetensors")
    bindings = model.program.bindings()
    assert len(appendix.matrices) >= len(bindings)
    for stage in model.program.stages:
        matrices = [b.source for b in bindings if b.stage is stage and tensors[b.source.name].ndim == 2]
        if not matrices:  # mean pooling has no weights
            continue
        source = matrices[0]
        value = tensors[source.name].astype(np.float64)
        value = value[..., slice(*source.columns)] if source.columns else value
        value = value.T if source.transpose else value
        piece = value[:24, :8]
        exponent = int(np.floor(np.log10(np.abs(piece).max())))
        for entry in (piece[0, 0], piece[-1, -1]):
            assert f"{entry / 10.0**exponent:.3f}".replace("-", "−") in text, (stage.name, source.name)


def test_numbers_refused_for_a_large_model(sample):
    with pytest.raises(ConfigError, match=f"62,496 numbers.*limit is {NUMBERS_LIMIT:,}"):
        sample.appendix(numbers=True)


def test_fragment_inputs_into_a_paper(tmp_path, sample):
    fragment = sample.tex(tmp_path / "build" / "fragment.tex", fragment=True, title="Appendix: our model",
                          author="A. Author")
    source = fragment.read_text()
    assert r"\documentclass" not in source and r"\begin{document}" not in source
    assert f"\\usepackage{{{','.join(PACKAGES)}}}" in source
    paper = (r"\documentclass{article}" + f"\\usepackage{{{','.join(PACKAGES)}}}" +
             r"\begin{document}\section{Results}Text.\appendix\input{fragment}\end{document}")
    build = build_pdf(paper, folder=tmp_path / "build")
    text = squeeze(pdf_text(build.pdf))
    assert "AAppendix:ourmodel" in text and "A.Author" in text and "A.1Modelcard" in text
    assert not overfull_boxes(build.log)


def test_tex_failure_shows_the_log_lines():
    with pytest.raises(TeXError, match=r"pdflatex failed: .*Undefined control sequence\. \| l\.3 \\nosuchmacro"):
        build_pdf("\\documentclass{article}\n\\begin{document}\n\\nosuchmacro\n\\end{document}\n")


def test_time_limit_ends_the_tex_run(tmp_path):
    with pytest.raises(TeXError, match="pdflatex did not finish within 3 s"):
        build_pdf(r"\documentclass{article}\begin{document}\def\x{\x}\x\end{document}", timeout=3, folder=tmp_path)
    working_there = []  # latexmk and pdflatex ran in tmp_path: none of them may be left running
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if (process / "cwd").resolve() == tmp_path.resolve():
                working_there.append(process.name)
        except OSError:  # gone, or not ours to inspect
            pass
    assert working_there == []


def test_out_of_memory_retries_with_lualatex():
    if not shutil.which("lualatex"):
        pytest.skip("lualatex is not installed")
    with pytest.raises(TeXError, match="pdflatex ran out of memory, and lualatex failed: .*capacity exceeded"):
        build_pdf(r"\documentclass{article}\begin{document}\def\x{\x\x}\x\end{document}")


@pytest.mark.slow
def test_lualatex_builds_the_appendix(sample):
    if not shutil.which("lualatex"):
        pytest.skip("lualatex is not installed")
    build = build_pdf(appendix_emitter.tex(sample.appendix()), engine="lualatex")
    assert build.engine == "lualatex"
    assert_states_the_model(sample, build.pdf, build.log)


def test_error_summary_is_the_error_and_what_follows():
    log = "This is pdfTeX\n(./a.tex\n./a.tex:7: Missing $ inserted.\n<inserted text>\n$\nl.7 x_1\n\n\nmore\n"
    assert error_summary(log) == "./a.tex:7: Missing $ inserted. | <inserted text> | $ | l.7 x_1"


# --- the command line ------------------------------------------------------------------------------


def test_cli_writes_pdf_tex_and_html(tmp_path):
    out = {kind: tmp_path / f"appendix.{kind}" for kind in ("pdf", "tex", "html")}
    result = CliRunner().invoke(main, [str(SAMPLE), "--pdf", str(out["pdf"]), "--tex", str(out["tex"]),
                                       "--html", str(out["html"]), "--title", "Sonnets & Co", "--author", "Me"])
    assert result.exit_code == 0, result.output
    text = squeeze(pdf_text(out["pdf"].read_bytes()))
    assert "Sonnets&Co" in text and "Me" in text
    assert out["tex"].read_text().startswith("\\documentclass") and r"Sonnets \& Co" in out["tex"].read_text()
    assert "<title>Sonnets &amp; Co</title>" in out["html"].read_text()


def test_cli_fragment_lists_its_packages(tmp_path):
    result = CliRunner().invoke(main, [str(SAMPLE), "--tex", str(tmp_path / "a.tex"), "--fragment"])
    assert result.exit_code == 0, result.output
    assert f"\\usepackage{{{','.join(PACKAGES)}}}" in result.output


@pytest.mark.parametrize("args, message", [
    (["--fragment"], "--fragment applies to --tex FILE"),
    (["--latex", "--title", "T"], "--title, --author and --numbers apply to --pdf, --tex and --html"),
    (["--pdf", "{out}", "--numbers"], "--numbers prints every weight, and this model has 62,496 numbers"),
])
def test_cli_refuses_bad_options(tmp_path, args, message):
    args = [a.replace("{out}", str(tmp_path / "a.pdf")) for a in args]
    result = CliRunner().invoke(main, [str(SAMPLE), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "a.pdf").exists()


def test_cli_tex_failure_exits_1_with_the_log_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(appendix_emitter, "tex", lambda appendix, fragment=False:
                        "\\documentclass{article}\n\\begin{document}\n\\nosuchmacro\n\\end{document}\n")
    result = CliRunner().invoke(main, [str(SAMPLE), "--pdf", str(tmp_path / "a.pdf")])
    assert result.exit_code == 1, result.output
    assert "error: pdflatex failed:" in result.output and "Undefined control sequence" in result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


def test_cli_without_tex_exits_1_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setattr("eqcompile.emit.pdf.shutil.which", lambda name: None)
    result = CliRunner().invoke(main, [str(SAMPLE), "--pdf", str(tmp_path / "a.pdf")])
    assert result.exit_code == 1 and "needs latexmk and pdflatex" in result.output, result.output
