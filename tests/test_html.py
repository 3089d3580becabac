"""The HTML viewer, opened as a reader opens it: in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import eqcompile
from eqcompile.emit.appendix import Table
from eqcompile.emit.html import json_for_script, katex_assets
from eqcompile.emit.templates import template_folder

from conftest import FAMILIES, ROOT, SAMPLE, make_gpt2

ARTIFACTS = ROOT / "test-artifacts"
needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="chromium is not installed (CI installs it)")
EVIL = ["<script>alert(1)</script>", "\"onmouseover=\"alert(2)", "</script><script>alert(3)//", "a&amp;b"]


def open_in_chromium(page: Path, query: str = "", screenshot: Path | None = None) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran, and every console message it logged."""
    with tempfile.TemporaryDirectory(prefix="eqcompile-chromium-") as profile:
        command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-quic",
                   f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--window-size=1280,2400",
                   "--virtual-time-budget=10000", "--dump-dom"]
        if screenshot is not None:
            command.append(f"--screenshot={screenshot}")
        result = subprocess.run([*command, page.as_uri() + query], capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def outside_scripts(page: str) -> str:
    """The page without the contents of its <script> and <style> elements."""
    return re.sub(r"<(script|style)\b[^>]*>.*?</\1>", "", page, flags=re.S)


def with_evil_strings(folder: Path) -> Path:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    save_file({**tensors, **{name: np.zeros(1, np.float32) for name in EVIL}}, path,
              metadata={"format": "pt", "note": EVIL[0]})
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The sample, a random 12-layer GPT-2, and one whose strings try to break out of the page."""
    base = tmp_path_factory.mktemp("html")
    return {"sample": SAMPLE,
            "gpt2-12-layers": make_gpt2(base / "twelve", n_layer=12, tie_word_embeddings=False),
            "evil": with_evil_strings(make_gpt2(base / "we<b>ird&\"folder'"))}


@needs_chromium
@pytest.mark.parametrize("name", ["sample", "gpt2-12-layers", "evil", *FAMILIES])
def test_page_renders_in_chromium(tmp_path, models, family, name):
    folder, options = family(name) if name in FAMILIES else (models[name], {})
    model = eqcompile.compile(folder, **options)
    extras = dict(numbers=True, cost=Table("Costs & <more>", ["stage", "FLOPs"], [["E", "1"]])) if name == "evil" else {}
    page = model.html(tmp_path / f"{name}.html", **extras)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"viewer-{name}.png"
    screenshot.unlink(missing_ok=True)
    query = "?q=C_PROJ.bias" if name == "sample" else ""  # opens with the symbol table filtered
    dom, console = open_in_chromium(page, query, screenshot)

    assert console == [], console  # no errors, no warnings, nothing
    assert 'data-rendered="true"' in dom  # the page's script ran to its end
    assert '<div id="errors" hidden=""></div>' in dom
    body = outside_scripts(dom)
    assert 'class="katex-error"' not in body
    math, typeset = body.count('class="math'), body.count('<span class="katex">')
    assert math > (10 if name == "mlp" else 50) and typeset == math, (math, typeset)
    details = re.findall(r'<details class="layer" id="(\w+-\d+)">(.*?)</details>', body, flags=re.S)
    assert [anchor for anchor, _ in details] == [f"{s.name}-{layer}" for s in model.program.stages
                                                 for layer in range(1, (s.layers or 0) + 1)]
    assert len(details) == {"gpt2-12-layers": 12, "mlp": 0}.get(name, 2)
    assert all('<span class="katex">' in inner for _, inner in details)
    # hovering a weight shows its shape and source tensor: every weight, somewhere in the equations
    titles = dict(re.findall(r'<span[^>]*data-sym="([^"]*)"[^>]*title="([^"]*)"', body))
    assert len(titles) == len(set(re.findall(r'data-sym="([^"]*)"', body)))  # no symbol without its title
    for row in model.appendix().symbols:
        shape = " × ".join(map(str, row.shape))
        assert titles.get(row.key) == f"{row.name} ({row.group}): {shape}, F32, from {row.source}", row.key
    for stage, param in model.program.params:  # and in the generic layer's equations, its tensor per layer
        if stage.layers:
            key = param.key.format(layer="l")
            assert titles.get(key, "").startswith(f"{param.name} ({stage.title}, layer l): "), key
            assert "{l-1}" in titles[key], titles[key]
    for tensor in model.checkpoint.tensors:  # in the symbol table, or in the list of tensors no equation uses
        assert re.search(f">{re.escape(html.escape(tensor, quote=False))}[<\\[ᵀ]", body), tensor
    if name not in FAMILIES:
        assert re.search(r'W_Q \(Transformer block 1\): \d+ × \d+, F32, from [\w.]*h\.0\.attn\.c_attn\.weight'
                         r'\[\.\.\., 0:\d+\]', titles["block.0.W_Q"]), titles["block.0.W_Q"]
    if name == "sample":  # the search box keeps the rows whose tensor name contains its text
        rows = re.findall(r'<tr id="symbol-[^"]*" data-tensor="([^"]*)"( hidden="")?>', body)
        shown = [tensor for tensor, hidden in rows if not hidden]
        assert len(rows) == 36 and shown == [f"transformer.h.{layer}.{part}.c_proj.bias"
                                             for layer in (0, 1) for part in ("attn", "mlp")]
    if name == "evil":
        assert "<script>alert" not in body and not re.search(r"<[^>]*\son\w+=", body)  # no event handlers
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "a&amp;amp;b" in body
        assert len(re.findall(r"<script\b", dom)) == 4  # the page's own: errors, data, KaTeX, typesetting
        weights = body[body.index('<section id="weights">'):]
        assert weights.count('<span class="katex">') == len(model.appendix(numbers=True).matrices) > 20
        assert "<p>Costs &amp; &lt;more&gt;</p>" in body and "<td>E</td>" in body
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000


def test_page_is_self_contained(tmp_path):
    page = eqcompile.compile(SAMPLE).html(tmp_path / "sample.html").read_text()
    markup = outside_scripts(page)
    assert not re.search(r"\b(src|href|action)\s*=", markup)  # nothing to fetch, no links out
    assert "default-src 'none'" in markup  # and the browser is told to fetch nothing
    css, _ = katex_assets()
    assert css.count("@font-face") == css.count("url(data:font/woff2;base64,") > 0
    assert not re.search(r"url\((?!data:)", css)


def test_checkpoint_strings_are_escaped(models):
    page = eqcompile.compile(models["evil"]).html(Path(tempfile.mkdtemp()) / "evil.html").read_text()
    markup = outside_scripts(page)
    for evil in EVIL:
        assert evil not in markup
    assert "&lt;/script&gt;&lt;script&gt;alert(3)//" in markup and "we&lt;b&gt;ird&amp;&#34;folder&#39;" in markup


def test_json_for_script_cannot_end_the_script():
    value = {"a": "</script><script>alert(1)</script>", "b": "&<>\u2028"}
    text = json_for_script(value)
    assert not re.search(r"[<>&\u2028]", text) and json.loads(text) == value


def test_katex_bundle_is_documented_and_licensed():
    folder = template_folder() / "katex"
    assert "MIT License" in (folder / "LICENSE").read_text()
    assert re.fullmatch(r"\d+\.\d+\.\d+\n", (folder / "VERSION").read_text())
    assert "</script" not in (folder / "katex.min.js").read_text().lower()
    assert "bundle_katex.sh" in (ROOT / "README.md").read_text()
