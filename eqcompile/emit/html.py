"""The HTML viewer: the appendix as one self-contained page, typeset in the browser by KaTeX.

KaTeX (MIT licence) is bundled into ``templates/katex/`` by ``scripts/bundle_katex.sh`` and inlined
into every page, fonts included, so the page opens offline; its Content-Security-Policy lets it
load nothing at all. Checkpoint strings are HTML-escaped by the template (``*.html.j2`` templates
autoescape), and the one JSON object the page embeds is escaped for a ``<script>`` element.
"""

from __future__ import annotations

import json
from functools import cache

from markupsafe import Markup

from ..program import Param, Program
from .appendix import MATRIX_COLUMNS, MATRIX_ROWS, Appendix
from .templates import render_template, template_folder

# the one KaTeX command the page trusts: it tags a weight's symbol with its key, for hovering
TRUSTED_COMMAND = r"\htmlData"


def hover_key(param: Param, layer: str) -> str:
    """The key a weight's symbol carries in the page: its weight-file key, "l" for a generic layer."""
    return param.key.format(layer=int(layer) - 1 if layer.isdigit() else "l")


def decorate(param: Param, layer: str, latex: str) -> str:
    """Tag a weight's symbol in an equation so the page can show its shape and tensor on hover."""
    return rf"{TRUSTED_COMMAND}{{sym={hover_key(param, layer)}}}{{{latex}}}"


def hover_texts(program: Program, appendix: Appendix) -> dict[str, str]:
    """What hovering a weight's symbol shows: its shape, dtype and source tensor."""
    texts = {}
    for stage, param in program.params:
        if "{layer}" in param.key:
            source = param.source.describe().replace("{layer}", "{l-1}")
            texts[hover_key(param, "l")] = f"{param.name} ({stage.title}, layer l): {_shape(program.numeric_shape(param.symbol))}, from {source}"
    for row in appendix.symbols:
        texts[row.key] = f"{row.name} ({row.group}): {_shape(row.shape)}, {row.dtype}, from {row.source}"
    return texts


def _shape(shape: tuple[int, ...]) -> str:
    return " × ".join(map(str, shape))


def json_for_script(value) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` can end it early."""
    text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@cache
def katex_assets() -> tuple[str, str]:
    """The bundled KaTeX stylesheet (fonts inlined) and script."""
    folder = template_folder() / "katex"
    return ((folder / "katex.min.css").read_text(encoding="utf-8"),
            (folder / "katex.min.js").read_text(encoding="utf-8"))


def page(program: Program, appendix: Appendix) -> str:
    """The viewer page for an appendix built with :func:`decorate`."""
    css, js = katex_assets()
    return render_template("viewer.html.j2", appendix=appendix, katex_css=Markup(css), katex_js=Markup(js),
                           hover=Markup(json_for_script(hover_texts(program, appendix))),
                           rows=MATRIX_ROWS, columns=MATRIX_COLUMNS, number=lambda value: f"{value:.3g}")
