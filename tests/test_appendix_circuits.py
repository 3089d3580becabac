"""The circuit form's appendix states each head's circuit figures: the PDF's text and the HTML hold exactly
what ``eqcompile circuits --json`` computes (itself tested against a dense numpy computation in
test_circuits.py), rounded as printed, with layers and heads counted from 1."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SAMPLE
from eqcompile import api
from eqcompile.cli import main
from eqcompile.emit.appendix import tex as appendix_tex
from llama_models import make_llama

needs_tex = pytest.mark.skipif(not (shutil.which("latexmk") and shutil.which("pdflatex") and shutil.which("pdftotext")),
                               reason="latexmk, pdflatex and pdftotext are not installed (CI installs them)")
SINGULAR_VALUES, STRONGEST = 3, 5


def measured(model: Path) -> dict:
    result = CliRunner().invoke(main, ["circuits", str(model), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def expected_rows(figures: dict) -> list[list[str]]:
    """Each head's cells as the appendix prints them: l, h, then per circuit ‖·‖_F, σs, rank, then copying."""
    def circuit(c):
        return [f"{c['frobenius']:.4g}", ", ".join(f"{s:.3g}" for s in c["singular_values"][:SINGULAR_VALUES]),
                str(c["rank"])]
    return [[str(l + 1), str(h + 1), *circuit(head["qk"]), *circuit(head["ov"]),
             "" if head["ov"]["copying"] is None else f"{head['ov']['copying']:.3f}"]
            for l, layer in enumerate(figures["layers"]) for h, head in enumerate(layer["heads"])]


def expected_pairs(figures: dict) -> list[list[str]]:
    """The strongest composition pairs of each kind, found again from the JSON's full 4-d arrays."""
    rows = []
    for mode in "qkv":
        scores = figures["composition"][mode]
        ranked = sorted(((s, l1, h1, l2, h2) for l1, a in enumerate(scores) for h1, b in enumerate(a)
                         for l2, c in enumerate(b) for h2, s in enumerate(c) if s is not None), reverse=True)
        rows += [[mode.upper(), f"({l1 + 1}, {h1 + 1})", f"({l2 + 1}, {h2 + 1})", f"{s:.3f}"]
                 for s, l1, h1, l2, h2 in ranked[:STRONGEST]]
    return rows


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """Grouped-query heads (4 query, 2 key/value) over 3 layers: composition across every pair of layers."""
    return make_llama(tmp_path_factory.mktemp("llama") / "llama", num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, hidden_size=16)


@pytest.fixture(params=["sample", "llama"])
def model(request, tiny_llama) -> Path:
    return SAMPLE if request.param == "sample" else tiny_llama


@needs_tex
def test_the_pdf_states_the_figures_of_circuits_json(model, tmp_path):
    figures = measured(model)
    result = CliRunner().invoke(main, [str(model), "--form", "circuits", "--pdf", str(tmp_path / "a.pdf")])
    assert result.exit_code == 0, result.output
    text = subprocess.run(["pdftotext", "-layout", str(tmp_path / "a.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    lines = [" ".join(line.split()) for line in text[text.index("circuits in numbers"):].splitlines()]
    rows, pairs = expected_rows(figures), expected_pairs(figures)
    for cells in rows + pairs:
        assert " ".join(cell for cell in cells if cell) in lines, cells
    assert len(pairs) <= 3 * STRONGEST and len(rows) == len(figures["layers"]) * figures["n_head"]


def test_the_html_states_the_figures_of_circuits_json(model, tmp_path):
    figures = measured(model)
    page = tmp_path / "a.html"
    result = CliRunner().invoke(main, [str(model), "--form", "circuits", "--html", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    for cells in expected_rows(figures) + expected_pairs(figures):
        assert "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>" in text, cells


def test_only_the_circuit_form_has_the_table():
    standard = api.compile(SAMPLE).appendix()
    assert standard.circuit_figures is None and "circuits in numbers" not in appendix_tex(standard)
    assert "circuits in numbers" in appendix_tex(api.compile(SAMPLE, form="circuits").appendix())
