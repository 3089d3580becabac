"""``--pdf/--tex/--html --train``: the appendix's training section (loss, backward stages, SGD and AdamW).

Its equations are the ones ``--latex --train`` prints (``eqcompile.train.latex.training_blocks``), set by the
appendix's templates; a model that cannot be differentiated is refused before anything is written.
"""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

import eqcompile
from conftest import SAMPLE, compile_tex, pdflatex_available
from eqcompile.cli import main
from eqcompile.train.latex import training_blocks
from test_html import needs_chromium, open_in_chromium, outside_scripts

MODELS = ["sample", "llama-gqa"]


def _folder(name, family):
    return SAMPLE if name == "sample" else family(name)[0]


@pytest.mark.parametrize("name", MODELS)
def test_tex_train_states_every_training_equation(tmp_path, family, name):
    folder = _folder(name, family)
    result = CliRunner().invoke(main, [str(folder), "--tex", str(tmp_path / "a.tex"), "--train"])
    assert result.exit_code == 0, result.output
    tex = (tmp_path / "a.tex").read_text()
    blocks = training_blocks(eqcompile.compile(folder).program)
    assert r"\section{Training}" in tex and r"\subsection{Transformer block, backward $B^{(l)}$, for $l = L, \dots, 1$}" in tex
    for line in [line for block in blocks.stages for line in block.lines] + blocks.updates:
        assert f"{line.lhs} = {line.rhs}" in tex, line  # the same equations as --latex --train, none dropped
    without = CliRunner().invoke(main, [str(folder), "--tex", str(tmp_path / "b.tex")])
    assert without.exit_code == 0 and "Training" not in (tmp_path / "b.tex").read_text()
    if not pdflatex_available():
        pytest.skip("pdflatex is not installed")
    assert compile_tex(tmp_path / "a.tex").returncode == 0


@pytest.mark.parametrize("name", MODELS)
def test_pdf_train_shows_the_section(tmp_path, family, name):
    if not pdflatex_available():
        pytest.skip("pdflatex is not installed")
    result = CliRunner().invoke(main, [str(_folder(name, family)), "--pdf", str(tmp_path / "a.pdf"), "--train"])
    assert result.exit_code == 0, result.output
    text = subprocess.run(["pdftotext", "-layout", str(tmp_path / "a.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    training = text[text.index("Training\n"):]
    for expected in ("Loss", "Transformer block, backward", "Embedding, backward", "SGD:", "AdamW:",
                     "torch.optim.AdamW", "Vector-Jacobian products"):
        assert expected in training, expected


@needs_chromium
@pytest.mark.parametrize("name", MODELS)
def test_html_train_renders(tmp_path, family, name):
    folder = _folder(name, family)
    result = CliRunner().invoke(main, [str(folder), "--html", str(tmp_path / "a.html"), "--train"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "a.html").read_text()
    section = page[page.index('<section id="training">'):]
    section = section[:section.index("</section>")]
    for expected in ("<h3>Loss</h3>", "<h3>Transformer block, backward", "<h3>Updates</h3>", r"\text{AdamW:}",
                     r"\hat m_t &= m_t / (1 - \beta_1^{t})"):
        assert expected in section, expected
    dom, console = open_in_chromium(tmp_path / "a.html")
    body = outside_scripts(dom)
    assert console == [] and 'data-rendered="true"' in dom and 'class="katex-error"' not in body
    assert body.count('class="math') == body.count('<span class="katex">')  # every formula typeset


@pytest.mark.parametrize("output", ["--pdf", "--tex", "--html"])
def test_bert_training_appendix_is_refused(tmp_path, family, output):
    folder, _ = family("bert")
    target = tmp_path / "out" / "appendix"
    result = CliRunner().invoke(main, [str(folder), output, str(target), "--train"])
    assert result.exit_code == 2 and "encoder" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not target.exists() and list(tmp_path.iterdir()) == []  # nothing written


def test_train_appendix_refuses_the_circuits_form(tmp_path):
    result = CliRunner().invoke(main, [str(SAMPLE), "--pdf", str(tmp_path / "a.pdf"), "--train", "--form", "circuits"])
    assert result.exit_code == 2 and "circuits" in result.output and not (tmp_path / "a.pdf").exists()
